"""Distillation losses between a student and its frozen teacher (binary single-logit models).

* Soft-label KD (Hinton et al. 2015): KL divergence between the teacher's and the student's
  class distributions softened at temperature T, scaled by T^2 so its gradient size does not
  shrink as T grows. A single fake logit z is the two-class distribution softmax([0, z]).
* Multi-level feature KD (CFFD's MFKD): per sample, the squared L2 distance between teacher and
  student feature maps, averaged over the elements of each map and over the chosen layers.
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
