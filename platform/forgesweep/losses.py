"""Contrastive losses shared by architectures and strategies (plain PyTorch, no Ray).

* :func:`supervised_contrastive` -- SupCon (Khosla et al., NeurIPS 2020, "Supervised Contrastive
  Learning"): for each anchor, the log-probability of its same-label samples among all other
  samples of the batch, averaged over the positives (the "L_out" form of the paper).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def supervised_contrastive(embeddings: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1,
                           contrast: torch.Tensor | None = None,
                           contrast_labels: torch.Tensor | None = None) -> torch.Tensor:
    """Supervised contrastive loss of ``embeddings`` ``[B, D]`` with ``labels`` ``[B]``.

    Embeddings are L2-normalised here. With ``contrast``/``contrast_labels`` given, anchors are
    contrasted against that second set (e.g. the other domain's embeddings: a cross-domain
    term) instead of against the batch itself; a sample is never its own negative or positive
    within one set.

    Anchors without any positive are left out; a batch where no anchor has a positive gives
    0 (attached to the graph, so callers can always add the term).
    """
    if embeddings.ndim != 2 or labels.shape != embeddings.shape[:1]:
        raise ValueError(f"expected embeddings [B, D] and labels [B], got {tuple(embeddings.shape)} "
                         f"and {tuple(labels.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    anchors = F.normalize(embeddings.float(), dim=1)
    same_set = contrast is None
    others = anchors if same_set else F.normalize(contrast.float(), dim=1)
    other_labels = labels if same_set else contrast_labels
    if other_labels is None or other_labels.shape != others.shape[:1]:
        raise ValueError("contrast_labels must be given with contrast, one per contrast row")

    logits = anchors @ others.T / temperature
    positives = (labels[:, None] == other_labels[None, :]).float()
    valid = torch.ones_like(logits, dtype=torch.bool)
    if same_set:
        eye = torch.eye(len(anchors), dtype=torch.bool, device=anchors.device)
        valid = ~eye
        positives = positives.masked_fill(eye, 0.0)
    # Numerically stable log-softmax over the valid (non-self) entries of each row.
    logits = logits.masked_fill(~valid, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    log_prob = log_prob.masked_fill(~valid, 0.0)
    counts = positives.sum(dim=1)
    has_positive = counts > 0
    if not has_positive.any():
        return embeddings.sum() * 0.0
    per_anchor = -(positives * log_prob).sum(dim=1)[has_positive] / counts[has_positive]
    return per_anchor.mean()
