"""Continual-learning strategies, replay memories and their selection policies, distillation losses.

Plain PyTorch/NumPy, testable without Ray. Importing this package registers every strategy:
``finetune`` (lower bound), ``joint`` (upper bound), ``lwf``, ``ewc``, ``er``, ``icarl``, ``der``,
``derpp``, ``cored`` and ``cffd``.
"""

from forgesweep.continual.base import (
    STRATEGIES,
    Strategy,
    build_strategy,
    frozen_teacher,
    register_strategy,
    resolve_strategy_params,
)
from forgesweep.continual.samples import SampleAccess, TensorSamples
# Strategy modules register themselves on import.
from forgesweep.continual import cffd, cored, der, er, ewc, finetune, icarl, joint, lwf  # noqa: E402,F401

__all__ = ["STRATEGIES", "SampleAccess", "Strategy", "TensorSamples", "build_strategy", "frozen_teacher",
           "register_strategy", "resolve_strategy_params"]
