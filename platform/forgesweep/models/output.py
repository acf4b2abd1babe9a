"""The detector output contract shared by every architecture, strategy and the serving layer."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import torch


@dataclass
class DetectorOutput:
    """What every detector's ``forward`` returns.

    Attributes:
        logits: shape ``[B]``, one binary logit per sample (positive = fake). The whole project
            uses this single-logit convention; ``torch.sigmoid(logits)`` is the fake probability.
        features: named intermediate tensors in network order (``stage1`` ... for the fused
            stages; two-domain models add ``spatial1``/``frequency1`` ...). Feature distillation
            and layer-subset sweeps select from these names.
        embedding: shape ``[B, D]``, the representation contrastive losses work on.
    """

    logits: torch.Tensor
    features: "OrderedDict[str, torch.Tensor]" = field(default_factory=OrderedDict)
    embedding: torch.Tensor | None = None

    def probs(self) -> torch.Tensor:
        """Fake probability per sample, shape ``[B]``."""
        return torch.sigmoid(self.logits)
