"""Detectors: the registry, the output contract, shared blocks, one file per architecture.

Importing this package registers every architecture.
"""

from forgesweep.models.output import DetectorOutput
from forgesweep.models.registry import (
    MODELS,
    Detector,
    build_model,
    model_params_class,
    register_model,
    unwrap_model,
)

# Architecture modules register themselves on import.
from forgesweep.models import dcr, locate_verify, rine_ssca, rsia_lite, rsia_net, styleflow  # noqa: E402,F401

__all__ = [
    "MODELS",
    "Detector",
    "DetectorOutput",
    "build_model",
    "model_params_class",
    "register_model",
    "unwrap_model",
]
