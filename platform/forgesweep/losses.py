"""Contrastive losses shared by architectures and strategies (plain PyTorch, no Ray).

* :func:`supervised_contrastive` -- SupCon (Khosla et al., NeurIPS 2020, "Supervised Contrastive
  Learning"): for each anchor, the log-probability of its same-label samples among all other
  samples of the batch, averaged over the positives (the "L_out" form of the paper).
* :func:`hscl_loss` -- CFFD's hierarchical spatial-frequency contrastive learning (seed note 004,
  REFERENCE.md section 5): at every level, SupCon within the spatial domain and within the
  frequency domain (positives: same label, ``i != j``), plus the two cross-domain terms where a
  spatial anchor is contrasted against the batch's frequency embeddings and vice versa. In the
  cross terms the same sample's other domain is a positive (there is no ``i != j`` condition),
  so they also pull each sample's two views together. Temperature 0.01 as in the seed's reading
  of the paper. Design choices the seed leaves open: the embeddings are the pooled per-level
  features themselves (no projection head, so the loss shapes the features the detector uses),
  and the four terms and the levels are averaged, so the weight in front of the loss does not
  depend on how many levels are used.
"""

from __future__ import annotations

from typing import Sequence

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


def hscl_loss(spatial: Sequence[torch.Tensor], frequency: Sequence[torch.Tensor], labels: torch.Tensor,
              temperature: float = 0.01) -> dict[str, torch.Tensor]:
    """Hierarchical spatial-frequency contrastive loss over levels of ``[B, D]`` embeddings.

    Args:
        spatial: one ``[B, D_l]`` spatial embedding per level.
        frequency: the frequency embedding of the same levels (``[B, D_l]`` each, widths matching).
        labels: ``[B]`` class labels (0 real, 1 fake).
        temperature: softmax temperature of every term.

    Returns:
        ``{"intra_spatial", "intra_frequency", "cross_s2f", "cross_f2s"}`` (each averaged over
        levels) and ``"total"``, the mean of the four.

    Raises:
        ValueError: no level, mismatched level counts or widths.
    """
    if not spatial or len(spatial) != len(frequency):
        raise ValueError(f"hscl_loss needs the same number (>= 1) of spatial and frequency levels, "
                         f"got {len(spatial)} and {len(frequency)}")
    names = ("intra_spatial", "intra_frequency", "cross_s2f", "cross_f2s")
    terms: dict[str, list[torch.Tensor]] = {k: [] for k in names}
    for level, (s, f) in enumerate(zip(spatial, frequency)):
        if s.shape != f.shape:
            raise ValueError(f"hscl_loss level {level}: spatial {tuple(s.shape)} and frequency {tuple(f.shape)} "
                             "embeddings must have the same shape")
        terms["intra_spatial"].append(supervised_contrastive(s, labels, temperature))
        terms["intra_frequency"].append(supervised_contrastive(f, labels, temperature))
        terms["cross_s2f"].append(supervised_contrastive(s, labels, temperature, contrast=f, contrast_labels=labels))
        terms["cross_f2s"].append(supervised_contrastive(f, labels, temperature, contrast=s, contrast_labels=labels))
    out = {k: torch.stack(v).mean() for k, v in terms.items()}
    out["total"] = torch.stack(list(out.values())).mean()
    return out
