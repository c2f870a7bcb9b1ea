"""A :class:`Mask` bound to one batch, built lazily in the form the kernel asks for.

Every distinct layer pattern of a forward becomes one :class:`BatchMask`: the pattern, the batch's lengths, its key
padding and the device. The kernels then ask for what they run on: a BlockMask (flex, the block-sparse training
path) at the exact length or at the length rounded up to the block size (a bucket of static shapes), or the dense
boolean mask (fused SDPA on short inputs). Each form is built once and shared by every layer that uses it.

Per-token tables that a ``mask_mod`` reads (global flags, ranks) must cover the bucketed length
(:func:`~hf_flexattn.masks.core.padded_length`), so that one mask serves both forms.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.attention.flex_attention import BlockMask

from .common import generate_key_padding
from .core import BLOCK_SIZE, Mask, build_block_mask, padded_length


class BatchMask:
    """``mask`` & key padding over ``q_len`` × ``kv_len`` tokens of ``batch`` samples (1: shared by all)."""

    def __init__(
        self,
        mask: Mask,
        q_len: int,
        kv_len: int | None = None,
        *,
        batch: int = 1,
        key_is_real: Tensor | None = None,
        device: torch.device | str = "cpu",
    ):
        self.mask = mask
        self.q_len = q_len
        self.kv_len = q_len if kv_len is None else kv_len
        self.key_is_real = None if key_is_real is None else key_is_real.bool()
        self.batch = batch if self.key_is_real is None else max(batch, self.key_is_real.shape[0])
        self.device = torch.device(device)
        self._block_masks: dict[bool, BlockMask] = {}
        self._dense: Tensor | None = None

    @property
    def dynamic_cpu_compile(self) -> bool:
        """Whether inductor's dynamic-shape CPU template compiles this mask (key padding is a per-token table)."""
        return self.mask.dynamic_cpu_compile and self.key_is_real is None

    def _with_padding(self, kv_len: int) -> Mask:
        """The mask with padded keys, and keys past the real length (a bucket's extra tokens), hidden."""
        if self.key_is_real is None and kv_len == self.kv_len:
            return self.mask
        real = torch.zeros(
            self.key_is_real.shape[0] if self.key_is_real is not None else 1,
            kv_len,
            dtype=torch.bool,
            device=self.device,
        )
        if self.key_is_real is None:
            real[:, : self.kv_len] = True
        else:
            real[:, : self.kv_len] = self.key_is_real
        return self.mask & generate_key_padding(real)

    def block_mask(self, bucketed: bool = False) -> BlockMask:
        """The BlockMask at the exact lengths, or at lengths rounded up to the block size (``bucketed``)."""
        if bucketed not in self._block_masks:
            q_len, kv_len = (
                (padded_length(self.q_len), padded_length(self.kv_len)) if bucketed else (self.q_len, self.kv_len)
            )
            self._block_masks[bucketed] = build_block_mask(
                self._with_padding(kv_len), q_len, kv_len, batch=self.batch, device=self.device, block_size=BLOCK_SIZE
            )
        return self._block_masks[bucketed]

    def dense(self) -> Tensor:
        """The (batch, 1, q_len, kv_len) boolean mask, padding included."""
        if self._dense is None:
            self._dense = self._with_padding(self.kv_len).dense(self.batch, 1, self.q_len, self.kv_len, self.device)
        return self._dense

    def __repr__(self) -> str:
        padding = ", padded" if self.key_is_real is not None else ""
        return f"BatchMask({self.mask.name}, {self.q_len}x{self.kv_len}, batch={self.batch}{padding})"
