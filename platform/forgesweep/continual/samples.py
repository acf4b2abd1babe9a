"""How a strategy reaches samples outside the training batches: :class:`SampleAccess`.

Some strategies must look at data around a task: EWC's Fisher information needs gradient passes,
iCaRL's herding and CFFD's hybrid replay need the model's probabilities and embeddings on the
task's samples, DER stores logits, CoReD summarises the teacher's representations of the new
task. The training loop hands every strategy hook one :class:`SampleAccess`, which turns sample
ids into batches in the training format (the same datasets, no augmentation) and, on top of
that, runs a model over them (:meth:`SampleAccess.score`).

Implementations only provide :meth:`SampleAccess.batches`: the loop's reads manifest rows through
its frame cache (``forgesweep.train.loop.LoopSamples``); :class:`TensorSamples` serves in-memory
tensors (tests, notebooks). Every rank of a distributed run scores the same ids, so strategies
make identical choices everywhere without communication.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from typing import Any, Iterator, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn

from forgesweep.continual.distillation import pool_feature
from forgesweep.continual.selection import Scores
from forgesweep.models.registry import unwrap_model


class SampleAccess(ABC):
    """Batches of samples by id, and model scores over them.

    Attributes:
        device: where batches are put (the model's device).
        batch_size: default batch size of :meth:`batches` and :meth:`score`.
    """

    device: torch.device = torch.device("cpu")
    batch_size: int = 64

    @abstractmethod
    def batches(self, keys: Sequence[str], batch_size: Optional[int] = None, shuffle: bool = False,
                seed: int = 0) -> Iterator[dict[str, Any]]:
        """Batches ``{"images", "labels", "keys", ...}`` of ``keys`` on :attr:`device`, un-augmented.

        Args:
            keys: sample ids (any task's).
            batch_size: default :attr:`batch_size`.
            shuffle: visit the ids in a random order seeded by ``seed``.
        """

    @torch.no_grad()
    def score(self, model: nn.Module, keys: Sequence[str], features: Sequence[str] = ()) -> Scores:
        """Run ``model`` (in eval mode, no grad) over ``keys``.

        Returns:
            :class:`Scores` with ``logits``, binary ``probs``, ``embeddings`` (when the model
            produces one) and the named ``features`` pooled to ``[N, C]``, rows in ``keys`` order.
        """
        detector = unwrap_model(model)
        was_training = detector.training
        detector.eval()
        logits, embeddings, pooled = [], [], {name: [] for name in features}
        seen: list[str] = []
        try:
            for batch in self.batches(keys):
                out = detector(batch["images"])
                seen += list(batch["keys"])
                logits.append(out.logits.float().cpu())
                if out.embedding is not None:
                    embeddings.append(out.embedding.float().cpu())
                for name in features:
                    if name not in out.features:
                        raise KeyError(f"feature {name!r} not produced by the model; available: {list(out.features)}")
                    pooled[name].append(pool_feature(out.features[name]).float().cpu())
        finally:
            detector.train(was_training)
        if seen != list(keys):
            raise RuntimeError("SampleAccess.batches must yield the requested keys in order")
        z = torch.cat(logits).numpy().astype(np.float64) if logits else np.zeros(0)
        p = 1.0 / (1.0 + np.exp(-z))
        return Scores(
            keys=list(keys), logits=z, probs=np.stack([1 - p, p], axis=1),
            # float32: embeddings of a large task's candidates are the biggest arrays here.
            embeddings=torch.cat(embeddings).numpy() if embeddings else None,
            features={n: torch.cat(v).numpy() for n, v in pooled.items() if v},
        )


class TensorSamples(SampleAccess):
    """:class:`SampleAccess` over in-memory tensors.

    Args:
        images: sample id -> input tensor (one sample, without the batch axis).
        labels: sample id -> 0 (real) / 1 (fake).
        batch_size: default batch size.
        device: where batches go.
    """

    def __init__(self, images: Mapping[str, torch.Tensor], labels: Mapping[str, int], batch_size: int = 64,
                 device: torch.device | str = "cpu") -> None:
        missing = set(images) ^ set(labels)
        if missing:
            raise ValueError(f"images and labels must name the same samples; mismatched: {sorted(missing)[:5]}")
        self.images, self.labels = dict(images), dict(labels)
        self.batch_size = batch_size
        self.device = torch.device(device)

    def batches(self, keys, batch_size=None, shuffle=False, seed=0):
        keys = list(keys)
        unknown = [k for k in keys if k not in self.images]
        if unknown:
            raise KeyError(f"unknown sample id {unknown[0]!r}")
        if shuffle:
            random.Random(seed).shuffle(keys)
        size = batch_size or self.batch_size
        for start in range(0, len(keys), size):
            chunk = keys[start:start + size]
            yield {"images": torch.stack([self.images[k] for k in chunk]).to(self.device),
                   "labels": torch.tensor([self.labels[k] for k in chunk], dtype=torch.long, device=self.device),
                   "keys": chunk}
