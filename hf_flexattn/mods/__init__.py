"""Score modifications (FlexAttention ``score_mod`` factories): biases added to the scores before the softmax."""

from .relative_position import generate_relative_position_bias
from .relative_position_with_cls import generate_relative_position_bias_with_cls

__all__ = [
    "generate_relative_position_bias",
    "generate_relative_position_bias_with_cls",
]
