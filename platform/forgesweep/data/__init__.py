"""Data: the manifest contract, the synthetic benchmark, task sequences and torch datasets,
dataset importers (``importers``) and face cropping (``face_crop``)."""
