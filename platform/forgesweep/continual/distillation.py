"""Distillation losses between a student and its frozen teacher (binary single-logit models).

* Soft-label KD (Hinton et al. 2015): KL divergence between the teacher's and the student's
  class distributions softened at temperature T, scaled by T^2 so its gradient size does not
  shrink as T grows. A single fake logit z is the two-class distribution softmax([0, z]).
* Multi-level feature KD (CFFD's MFKD): per sample, the squared L2 distance between teacher and
  student feature maps, averaged over the elements of each map and over the chosen layers.
* Relational KD (in the spirit of Park et al., CVPR 2019, "Relational Knowledge Distillation"):
  the student keeps the teacher's sample-to-sample structure -- the mean squared difference of
  the two cosine-similarity matrices of a batch's embeddings. It constrains how samples relate
  (two reals closer than a real and a fake), not where each embedding lies.
* Domain-level KD for two-domain models (CFFD's seed note): the relation matrices within the
  spatial domain, within the frequency domain and across them (spatial i vs frequency j), each
  distilled as above, so the student keeps how its two views of a face correspond.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F


def binary_log_probs(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``[B]`` fake logits -> ``[B, 2]`` log-probabilities of (real, fake) at ``temperature``."""
    z = logits / temperature
    return torch.stack([F.logsigmoid(-z), F.logsigmoid(z)], dim=-1)


def soft_label_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) of the softened binary distributions, times T^2, batch mean."""
    log_p_student = binary_log_probs(student_logits, temperature)
    log_p_teacher = binary_log_probs(teacher_logits.detach(), temperature)
    kl = F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="none").sum(dim=-1)
    return kl.mean() * temperature**2


def pool_feature(feature: torch.Tensor) -> torch.Tensor:
    """A named feature as one vector per sample: ``[B, D]`` kept, ``[B, N, D]`` tokens averaged
    over ``N``, ``[B, C, H, W]`` maps averaged over space.

    Raises:
        ValueError: for other ranks (ambiguous: the model should expose a pooled embedding).
    """
    if feature.ndim == 2:
        return feature
    if feature.ndim == 3:
        return feature.mean(dim=1)
    if feature.ndim == 4:
        return feature.mean(dim=(2, 3))
    raise ValueError(f"cannot pool a feature of shape {tuple(feature.shape)} to [B, D]; expose a pooled "
                     "[B, D] feature (or [B, N, D] tokens / [B, C, H, W] maps) instead")


def similarity_matrix(a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """Cosine similarities ``[B, B]`` between the rows of ``a`` and of ``b`` (default ``a``)."""
    a = F.normalize(a.float(), dim=1)
    b = a if b is None else F.normalize(b.float(), dim=1)
    return a @ b.T


def relation_kd(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between the student's and the teacher's similarity matrices.

    ``student``/``teacher``: ``[B, D]`` (any width each: only relations are compared).
    """
    return (similarity_matrix(student) - similarity_matrix(teacher.detach())).pow(2).mean()


def domain_relation_kd(student_pairs: Sequence[tuple[torch.Tensor, torch.Tensor]],
                       teacher_pairs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Domain-level KD over ``(spatial [B, D], frequency [B, D])`` pairs (one pair per level).

    Per level: relation KD within each domain plus the squared difference of the cross-domain
    similarity matrices; mean over the three terms and over levels.
    """
    if not student_pairs or len(student_pairs) != len(teacher_pairs):
        raise ValueError("domain_relation_kd needs one (spatial, frequency) pair per level for both models")
    losses = []
    for (s_sp, s_fr), (t_sp, t_fr) in zip(student_pairs, teacher_pairs):
        cross = (similarity_matrix(s_sp, s_fr) - similarity_matrix(t_sp.detach(), t_fr.detach())).pow(2).mean()
        losses.append((relation_kd(s_sp, t_sp) + relation_kd(s_fr, t_fr) + cross) / 3)
    return torch.stack(losses).mean()


def feature_kd(
    student_features: Mapping[str, torch.Tensor],
    teacher_features: Mapping[str, torch.Tensor],
    layers: Sequence[str],
) -> torch.Tensor:
    """Mean over ``layers`` and samples of the per-element squared L2 distance.

    Raises:
        KeyError: naming a layer that the model does not produce (and the ones it does).
    """
    if not layers:
        raise ValueError("feature_kd needs at least one layer")
    losses = []
    for name in layers:
        if name not in student_features or name not in teacher_features:
            raise KeyError(f"feature layer {name!r} not produced by the model; available: {list(student_features)}")
        s, t = student_features[name], teacher_features[name].detach()
        losses.append((s - t).pow(2).flatten(1).mean(dim=1).mean())
    return torch.stack(losses).mean()
