"""Frozen-feature cache: a frozen backbone's features computed once per sweep, not once per trial.

* :mod:`~forgesweep.features.packed` -- what a model declares (:class:`FrozenFeatureSpec`) and the
  heads-only input format (pixels and cached features packed into one tensor per sample);
* :mod:`~forgesweep.features.key` -- the content-addressed cache key (tower weights, preprocessing,
  manifest rows and frames, views, variant, precision);
* :mod:`~forgesweep.features.store` -- shards and their index on a local disk or ``s3://``, each
  shard checked against its SHA-256 before it is read;
* :mod:`~forgesweep.features.extract` -- computing shards (plain PyTorch) and loading a verified
  :class:`~forgesweep.features.table.FeatureTable`, recomputing what is missing or corrupted;
* :mod:`~forgesweep.features.ray_job` -- the parallel extraction job (Ray tasks over shards) a
  sweep runs once before its trials start.

This package imports nothing heavy at import time: models import :mod:`.packed` from here.
"""
