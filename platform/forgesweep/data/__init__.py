"""Data: the manifest contract, the synthetic benchmark, task sequences and torch datasets."""
