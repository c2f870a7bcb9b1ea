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
        self._sdpa: dict[tuple, tuple[Tensor | None, Tensor | None]] = {}

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

    def sdpa_mask(self, dtype: torch.dtype, read_values: bool) -> tuple[Tensor | None, Tensor | None]:
        """The mask in the form fused SDPA runs fastest on, built once and shared by every layer that uses it:
        ``(attn_mask, has_key)``. ``attn_mask`` is additive (0 / −inf, in ``dtype``), as small as the pattern
        allows: None when every key is seen, (B, 1, 1, N) for key padding alone, else (B, 1, N, N). Rows that see
        no key are let to see every key (SDPA would give NaN) and zeroed by ``has_key`` (B, 1, N or 1, 1); with
        ``read_values`` (CPU: reading a tensor costs no sync) ``has_key`` is None when every row has a key."""
        if dtype not in self._sdpa:
            if self.mask.sees_everything and self.key_is_real is None:
                self._sdpa[dtype] = (None, None)
                return self._sdpa[dtype]
            if self.mask.sees_everything:
                allowed = self._with_padding(self.kv_len).dense(self.batch, 1, 1, self.kv_len, self.device)
            else:
                allowed = self.dense()
            has_key = allowed.any(-1, keepdim=True)
            if read_values and bool(has_key.all()):
                has_key = None
            else:
                allowed = allowed | ~has_key
                has_key = has_key.to(dtype)
            additive = torch.zeros(allowed.shape, dtype=dtype, device=self.device).masked_fill_(~allowed, float("-inf"))
            self._sdpa[dtype] = (additive, has_key)
        return self._sdpa[dtype]

    def __repr__(self) -> str:
        padding = ", padded" if self.key_is_real is not None else ""
        return f"BatchMask({self.mask.name}, {self.q_len}x{self.kv_len}, batch={self.batch}{padding})"
