"""Score modifications (FlexAttention ``score_mod`` factories): biases added to the scores before the softmax."""

from .continuous_position import continuous_position_bias_table
from .natten_bias import generate_natten_bias
from .relative_position import generate_relative_position_bias
from .relative_position_with_cls import generate_relative_position_bias_with_cls

__all__ = [
    "continuous_position_bias_table",
    "generate_natten_bias",
    "generate_relative_position_bias",
    "generate_relative_position_bias_with_cls",
]
