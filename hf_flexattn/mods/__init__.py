"""Score modifications (FlexAttention ``score_mod`` factories): biases added to the scores before the softmax."""

from .relative_position import generate_relative_position_bias

__all__ = ["generate_relative_position_bias"]
