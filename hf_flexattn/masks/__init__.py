"""Attention masks as small named factories (``generate_*``) and the BlockMask builders.

* :mod:`.core`: the :class:`Mask` type (a ``mask_mod`` with a block summary) and :func:`build_block_mask`
* :mod:`.common`: full, key padding, sliding window, global tokens
* :mod:`.natten`: NATTEN's neighborhood rule, 1D and 2D
* :mod:`.windows`: Swin's shifted windows, and the token order that makes them block-sparse
* :mod:`.batch`: :class:`BatchMask`, a mask bound to one batch and built lazily in the form a kernel runs on
"""

from .batch import BatchMask
from .common import (
    generate_full,
    generate_global,
    generate_global_keys,
    generate_global_queries,
    generate_key_padding,
    generate_sliding_window,
    global_token_flags,
)
from .core import BLOCK_SIZE, BlockGrid, Mask, block_mask_to_dense_blocks, build_block_mask, padded_length
from .natten import generate_natten_1d, generate_natten_1d_over_real_tokens, generate_natten_2d, natten_axis
from .windows import (
    generate_permuted,
    generate_shifted_windows,
    generate_window_contiguous_windows,
    shifted_window_index,
    window_contiguous_order,
)

__all__ = [
    "BLOCK_SIZE",
    "BatchMask",
    "BlockGrid",
    "Mask",
    "block_mask_to_dense_blocks",
    "build_block_mask",
    "generate_full",
    "generate_global",
    "generate_global_keys",
    "generate_global_queries",
    "generate_key_padding",
    "generate_natten_1d",
    "generate_natten_1d_over_real_tokens",
    "generate_natten_2d",
    "generate_permuted",
    "generate_shifted_windows",
    "generate_sliding_window",
    "generate_window_contiguous_windows",
    "global_token_flags",
    "natten_axis",
    "padded_length",
    "shifted_window_index",
    "window_contiguous_order",
]
