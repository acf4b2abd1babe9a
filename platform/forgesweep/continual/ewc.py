"""EWC -- Elastic Weight Consolidation (Kirkpatrick et al., PNAS 2017), with the online variant
of Schwarz et al. (ICML 2018, "Progress & Compress").

After each task the diagonal Fisher information F of the trainable parameters is estimated on
(up to ``fisher_samples`` of) the task's training samples and the parameters are stored as the
anchor theta*. Later tasks add ``ewc_lambda / 2 * sum_i F_i (theta_i - theta*_i)^2``:

* separate (``online: false``): one (F, theta*) pair per finished task, penalties summed;
* online (``online: true``): a single running pair, F <- gamma * F + F_new, theta* <- theta.

Fisher of a single-logit binary model, per sample with p = sigmoid(z): the "true" Fisher
E_{y~p}[(d log p(y|x))^2] = p (1 - p) (dz)^2 (exact, no label sampling); the "empirical" one
uses the dataset label, (p - y)^2 (dz)^2. Gradients are taken on micro-batches of
``fisher_batch_size`` (1: exact per-sample squares; larger: the square of the micro-batch sum,
cheaper and approximate) in eval mode, and averaged over samples. Fisher and anchors are tensor
state, saved beside the checkpoint as safetensors.
"""

from __future__ import annotations

import random
from typing import Any, Literal, Mapping

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from forgesweep.continual.base import Strategy, register_strategy, require_samples
from forgesweep.models.registry import unwrap_model


class EWCParams(BaseModel):
    """Hyperparameters of :class:`EWC`."""

    model_config = ConfigDict(extra="forbid")

    ewc_lambda: float = Field(100.0, ge=0, le=1e9, description="weight of the quadratic penalty")
    online: bool = Field(False, description="one running Fisher (online EWC) instead of one per task")
    gamma: float = Field(1.0, ge=0, le=1, description="online EWC: decay of the old Fisher")
    fisher: Literal["true", "empirical"] = Field("true", description="Fisher under the model's or the data's labels")
    fisher_samples: int = Field(256, ge=1, le=10_000_000, description="training samples used per Fisher estimate")
    fisher_batch_size: int = Field(1, ge=1, le=4096, description="micro-batch of the Fisher gradients (1: exact)")


@register_strategy("ewc")
class EWC(Strategy):
    """Task loss plus the Fisher-weighted distance to earlier tasks' parameters."""

    Params = EWCParams

    def __init__(self, params: EWCParams, seed: int = 0) -> None:
        super().__init__(params, seed)
        # One {"fisher": {name: F}, "anchor": {name: theta*}} per task (a single one when online).
        self.penalties: list[dict[str, dict[str, torch.Tensor]]] = []

    def reads_samples(self) -> bool:
        return True

    def compute_loss(self, model, batch):
        out, terms = super().compute_loss(model, batch)
        if self.penalties:
            terms["ewc"] = self.params.ewc_lambda / 2 * self.penalty(model)
            terms["loss"] = terms["loss"] + terms["ewc"]
        return out, terms

    def penalty(self, model: nn.Module) -> torch.Tensor:
        """``sum_t sum_i F_t,i (theta_i - theta*_t,i)^2`` over the stored tasks."""
        named = dict(unwrap_model(model).named_parameters())
        total = next(iter(named.values())).new_zeros(())
        for pair in self.penalties:
            for name, fisher in pair["fisher"].items():
                theta = named[name]
                if fisher.device != theta.device:  # restored from a checkpoint on the CPU: move once
                    pair["fisher"][name] = fisher = fisher.to(theta.device)
                    pair["anchor"][name] = pair["anchor"][name].to(theta.device)
                total = total + (fisher * (theta - pair["anchor"][name]).pow(2)).sum()
        return total

    def after_task(self, task_index, model, candidates, samples=None) -> None:
        samples = require_samples(samples, "ewc", "to estimate the Fisher information")
        keys = [c.key for c in candidates]
        random.Random(f"ewc:{self.seed}:{task_index}").shuffle(keys)
        fisher = estimate_fisher(model, samples.batches(keys[: self.params.fisher_samples],
                                                        batch_size=self.params.fisher_batch_size),
                                 self.params.fisher)
        detector = unwrap_model(model)
        anchor = {n: p.detach().clone() for n, p in detector.named_parameters() if n in fisher}
        if self.params.online and self.penalties:
            old = self.penalties[0]["fisher"]
            fisher = {n: self.params.gamma * old[n].to(f.device) + f for n, f in fisher.items()}
            self.penalties = []
        self.penalties.append({"fisher": fisher, "anchor": anchor})

    def state_dict(self) -> dict[str, Any]:
        return {"tasks": len(self.penalties), "online": self.params.online}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        # The Fisher estimates themselves come back through load_tensor_state.
        self._expected_tasks = int(state["tasks"])
        self.penalties = []

    def tensor_state(self) -> dict[str, torch.Tensor]:
        return {f"{t}.{kind}.{name}": tensor.detach().cpu().contiguous()
                for t, pair in enumerate(self.penalties) for kind, tensors in pair.items()
                for name, tensor in tensors.items()}

    def load_tensor_state(self, tensors: Mapping[str, torch.Tensor]) -> None:
        pairs: dict[int, dict[str, dict[str, torch.Tensor]]] = {}
        for key, tensor in tensors.items():
            t, kind, name = key.split(".", 2)
            pairs.setdefault(int(t), {"fisher": {}, "anchor": {}})[kind][name] = tensor
        self.penalties = [pairs[t] for t in sorted(pairs)]
        expected = getattr(self, "_expected_tasks", len(self.penalties))
        if len(self.penalties) != expected:
            raise ValueError(f"EWC checkpoint holds {len(self.penalties)} Fisher estimates, its state says {expected}")


def estimate_fisher(model: nn.Module, batches, kind: str = "true") -> dict[str, torch.Tensor]:
    """Diagonal Fisher information of the trainable parameters, averaged over samples.

    Args:
        model: the detector (its gradients are cleared afterwards; its mode is restored).
        batches: ``{"images", "labels"}`` micro-batches.
        kind: ``"true"`` (model's label distribution) or ``"empirical"`` (dataset labels).
    """
    detector = unwrap_model(model)
    params = {n: p for n, p in detector.named_parameters() if p.requires_grad}
    fisher = {n: torch.zeros_like(p) for n, p in params.items()}
    was_training = detector.training
    detector.eval()
    count = 0
    try:
        for batch in batches:
            detector.zero_grad(set_to_none=True)
            z = detector(batch["images"]).logits.float()
            p = torch.sigmoid(z).detach()
            # d log p(y|x) / dz = y - p; squared and averaged over y ~ p it is p (1 - p).
            weight = (p * (1 - p)).sqrt() if kind == "true" else p - batch["labels"].float()
            (weight * z).sum().backward()
            for n, param in params.items():
                if param.grad is not None:
                    fisher[n] += param.grad.detach().pow(2)
            count += len(z)
    finally:
        detector.zero_grad(set_to_none=True)
        detector.train(was_training)
    if count == 0:
        raise ValueError("cannot estimate the Fisher information from no samples")
    return {n: f / count for n, f in fisher.items()}
