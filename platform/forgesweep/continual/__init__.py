"""Continual-learning strategies, the replay buffer and distillation losses (plain PyTorch).

Importing this package registers every strategy.
"""

from forgesweep.continual.base import (
    STRATEGIES,
    Strategy,
    build_strategy,
    register_strategy,
    resolve_strategy_params,
)
from forgesweep.continual import cffd, finetune  # noqa: E402,F401  (registration)

__all__ = ["STRATEGIES", "Strategy", "build_strategy", "register_strategy", "resolve_strategy_params"]
