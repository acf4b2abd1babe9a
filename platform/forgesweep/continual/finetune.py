"""Fine-tuning (FT): train on each task in turn with no protection against forgetting.

The lower bound of every continual-learning comparison (e.g. Lopez-Paz & Ranzato 2017).
"""

from forgesweep.continual.base import Strategy, register_strategy


@register_strategy("finetune")
class Finetune(Strategy):
    """Plain supervised training on the current task only."""
