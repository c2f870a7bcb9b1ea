"""What the randomized tests share: the dense rules written as whole-tensor expressions (fast enough for grids of
hundreds of cells; each is checked against the entry-by-entry rules of ``helpers`` in test_rules.py), the device
policies a test can put the library under, and a dense reference model built from HF's own unpatched model."""

from __future__ import annotations

import contextlib
import copy
from unittest import mock

import torch
from hypothesis import settings
from hypothesis import strategies as st
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface

from hf_flexattn import kernels
from hf_flexattn.kernels import flex

from helpers import reference_attention


def examples(ci: int) -> int:
    """``ci`` examples under the ``ci`` profile (8 by default), scaled up under the longer ones."""
    return max(1, ci * settings.default.max_examples // 8)


# ------------------------------------------------------------------------------------------------ the dense rules


def real_ranks(real: torch.Tensor) -> torch.Tensor:
    """(B, N) rank of each real token among its sample's real tokens (−1 for padding)."""
    return torch.where(real, real.long().cumsum(-1) - 1, torch.full_like(real, -1, dtype=torch.long))


def sliding_rule(n: int, half: int) -> torch.Tensor:
    i = torch.arange(n)
    return (i[:, None] - i[None, :]).abs() <= half


def longformer_rule(real: torch.Tensor, half: int, is_global: torch.Tensor) -> torch.Tensor:
    """(B, 1, N, N): HF Longformer's pattern (``|i − j| ≤ half``, global rows and columns) over real keys.
    ``is_global`` (B, N) must already exclude padded tokens."""
    n = real.shape[1]
    rule = sliding_rule(n, half)[None] | is_global[:, :, None] | is_global[:, None, :]
    return (rule & real[:, None, :])[:, None]


def fixed_globals(real: torch.Tensor, positions) -> torch.Tensor:
    """(B, N) global flags of ``global_tokens=positions``: counted from each sample's first real token."""
    rank = real_ranks(real)
    flags = torch.zeros_like(real)
    for p in positions:
        flags |= rank == p
    return flags & real


def natten_axis_rule(length: int, kernel: int, dilation: int) -> torch.Tensor:
    """(L, L) NATTEN's clamped rule on one axis: within each dilation group the k-window around the query, shifted
    inward at the ends; a group shorter than k is seen whole."""
    p = torch.arange(length)
    group, index = p % dilation, p // dilation
    group_len = (length - group + dilation - 1) // dilation
    k_eff = group_len.clamp(max=kernel)
    start = torch.minimum((index - kernel // 2).clamp(min=0), group_len - k_eff)
    same_group = group[:, None] == group[None, :]
    inside = (index[None, :] >= start[:, None]) & (index[None, :] < (start + k_eff)[:, None])
    return same_group & inside


def natten_1d_rule(real: torch.Tensor, kernel: int, dilation: int) -> torch.Tensor:
    """(B, 1, N, N): NATTEN 1D over each sample's real tokens (ranks), padding anywhere taking no part."""
    batch, n = real.shape
    rule = torch.zeros(batch, 1, n, n, dtype=torch.bool)
    for b in range(batch):
        where = real[b].nonzero().flatten()
        if len(where):
            block = natten_axis_rule(len(where), kernel, dilation)
            rule[b, 0, where[:, None], where[None, :]] = block
    return rule


def natten_2d_rule(grid, kernel, dilation, prefix: int = 0) -> torch.Tensor:
    """(N, N): NATTEN 2D on a row-major grid (the product of the axis rules) after ``prefix`` global tokens."""
    rows, cols = grid
    r = natten_axis_rule(rows, kernel[0], dilation[0])
    c = natten_axis_rule(cols, kernel[1], dilation[1])
    grid_rule = (r[:, None, :, None] & c[None, :, None, :]).reshape(rows * cols, rows * cols)
    return with_prefix(grid_rule, prefix)


def with_prefix(grid_rule: torch.Tensor, prefix: int) -> torch.Tensor:
    """A grid rule with ``prefix`` leading tokens that see every token and are seen by every token."""
    n = prefix + grid_rule.shape[0]
    rule = torch.ones(n, n, dtype=torch.bool)
    rule[prefix:, prefix:] = grid_rule
    return rule


def shifted_window_rule(grid, window: int, shift: int) -> torch.Tensor:
    """(N, N): HF Swin's rule on a row-major grid: roll by −shift, attend within the same window and the same shift
    region (the entries HF masks with −100 here are simply not allowed)."""
    rows, cols = grid

    def axis(length):
        i = (torch.arange(length) - shift) % length  # position on the rolled map
        region = (i >= length - window).long() + (i >= length - shift).long() if shift else torch.zeros_like(i)
        return i // window, region

    win_r, reg_r = axis(rows)
    win_c, reg_c = axis(cols)
    win = (win_r[:, None] * cols + win_c[None, :]).flatten()
    reg = (reg_r[:, None] * 3 + reg_c[None, :]).flatten()
    return (win[:, None] == win[None, :]) & (reg[:, None] == reg[None, :])


def grid_offsets_bias(table: torch.Tensor, grid, table_window: int) -> torch.Tensor:
    """(H, N, N) Swin relative position bias for every pair of a row-major grid whose offset the table covers
    (|dr|, |dc| < table_window), 0 elsewhere."""
    rows, cols = grid
    cell = torch.arange(rows * cols)
    dr = cell[:, None] // cols - cell[None, :] // cols
    dc = cell[:, None] % cols - cell[None, :] % cols
    reach, span = table_window - 1, 2 * table_window - 1
    covered = (dr.abs() <= reach) & (dc.abs() <= reach)
    index = ((dr + reach) * span + dc + reach).clamp(0, span * span - 1)
    return (table[index] * covered[..., None]).permute(2, 0, 1)


# ------------------------------------------------------------------------------------------------ device policies


def uncompiled(dynamic: bool):
    """Stands in for the compiled flex (same function, unfused). Its eager path traces small graphs of its own,
    which the library's compile guard would count: they may recompile freely here."""

    def run(*args, **kwargs):
        with torch._dynamo.config.patch(fail_on_recompile_limit_hit=False):
            return flex.flex_attention(*args, **kwargs)

    return run


POLICIES = ("cpu", "structured", "generic", "block_sparse", "flex", "cuda")


@contextlib.contextmanager
def policy(name: str):
    """Run the library under one of its paths on this CPU machine:

    * ``cpu``: CPU's own policy (structured plans past the crossovers, the dense kernel below them);
    * ``structured``: the structured plans (band, halo, tiles) at every size (their crossovers set to 0);
    * ``generic``: no structured plan: the generic kernels as CPU's policy picks them (dense, block-sparse);
    * ``block_sparse`` / ``flex``: every generic call on that kernel (flex uncompiled: forward only);
    * ``cuda``: CUDA's policy (decisions from Python facts) run on CPU tensors, flex uncompiled.
    """
    patches = []
    if name == "structured":
        for target in (
            "hf_flexattn.ops.band_pays",
            "hf_flexattn.ops.sliding_window_pays",
            "hf_flexattn.ops.halo_pays",  # the one place the variants and the ops ask
        ):
            patches.append(mock.patch(target, lambda *args: True))
    elif name in ("generic", "block_sparse", "flex"):
        patches.append(mock.patch.object(kernels, "uses_structured_paths", lambda t: False))
        if name != "generic":
            choose = kernels.choose_path
            forced = lambda query, mask, *args: choose(query, mask, *args) if mask is None else name
            patches.append(mock.patch.object(kernels, "choose_path", forced))
            patches.append(mock.patch.object(flex, "compiled_flex_attention", uncompiled))
    elif name == "cuda":
        patches.append(mock.patch.object(kernels, "device_kind", lambda t: "cuda"))
        patches.append(mock.patch.object(flex, "compiled_flex_attention", uncompiled))
    elif name != "cpu":
        raise ValueError(f"policy={name!r}; expected one of {POLICIES}")
    compiles = len(flex.compile_events)
    with contextlib.ExitStack() as stack:
        for p in patches:
            stack.enter_context(p)
        try:
            yield
        finally:  # uncompiled flex counts as compiles (its eager path traces too): they are not the process's
            if name in ("flex", "cuda", "block_sparse"):
                del flex.compile_events[compiles:]


def can_train(policy_name: str, dtype: torch.dtype) -> bool:
    """Whether a training step can run under ``policy_name`` here: flex has no backward on CPU (CUDA's policy
    picks flex for training in the flex dtypes; float64 goes to the dense kernel on every device)."""
    if policy_name == "flex":
        return False
    return not (policy_name == "cuda" and dtype != torch.float64)


@contextlib.contextmanager
def sdpa_mask_dtypes(mismatches: list):
    """Within: every SDPA call whose float mask is not in the query's dtype is appended to ``mismatches``. SDPA's
    contract (CUDA refuses such a mask; CPU converts it silently), so a mask cached for another dtype shows here."""
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def checked(query, key, value, attn_mask=None, *args, **kwargs):
        if attn_mask is not None and attn_mask.dtype not in (torch.bool, query.dtype):
            mismatches.append((query.dtype, attn_mask.dtype, tuple(attn_mask.shape)))
        return sdpa(query, key, value, attn_mask, *args, **kwargs)

    with mock.patch.object(torch.nn.functional, "scaled_dot_product_attention", checked):
        yield


# ------------------------------------------------------------------------------------------------ grad modes

GRAD_MODES = ("train", "no_grad", "inference_mode")


def grad_context(mode: str):
    return {"train": contextlib.nullcontext, "no_grad": torch.no_grad, "inference_mode": torch.inference_mode}[mode]()


# ------------------------------------------------------------------------------------------------ strategies


@st.composite
def key_padding(draw, batch: int, n: int, allow_empty: bool = False) -> torch.Tensor:
    """(B, N) bool: per sample none, right, left, both sides, or holes in between (the real tokens kept in order)."""
    rows = []
    for _ in range(batch):
        kind = draw(st.sampled_from(["none", "right", "left", "both", "between"]))
        real = torch.ones(n, dtype=torch.bool)
        low = 0 if allow_empty else 1
        if kind == "right":
            real[draw(st.integers(low, n)) :] = False
        elif kind == "left":
            real[: n - draw(st.integers(low, n))] = False
        elif kind == "both":
            left = draw(st.integers(0, n - low))
            right = draw(st.integers(left + low, n))
            real[:left] = False
            real[right:] = False
        elif kind == "between":
            holes = draw(st.lists(st.integers(0, n - 1), max_size=max(1, n // 2)))
            real[holes] = False
            if not allow_empty and not real.any():
                real[draw(st.integers(0, n - 1))] = True
        rows.append(real)
    return torch.stack(rows)


# ------------------------------------------------------------------------------------------------ reference model

REFERENCE = "hf_flexattn_test_dense_rule"
_current: dict = {}


def _reference_mask(batch_size, q_length, kv_length, *args, attention_mask=None, **kwargs):
    return attention_mask  # (B, N) 0/1 or None: the rule below adds the key padding itself


def _reference_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Plain softmax attention with the rule of the module's layer (``reference_model``), key padding included."""
    layer = _current["layers"][id(module)]
    rule = _current["rule"](layer)  # (N, N) or (B, 1, N, N) bool
    if rule.dim() == 2:
        rule = rule[None, None]
    if attention_mask is not None:
        rule = rule & attention_mask.bool()[:, None, None, :]
    out = reference_attention(query, key, value, rule, scale=scaling)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(REFERENCE, _reference_attention)
AttentionMaskInterface.register(REFERENCE, _reference_mask)


@contextlib.contextmanager
def dense_rule(model, attention_modules, rule):
    """Within: ``model`` (an unpatched copy set to the REFERENCE attention) computes layer i's attention as
    ``reference_attention`` with the boolean mask ``rule(i)``."""
    _current["layers"] = {id(m): i for i, m in enumerate(attention_modules)}
    _current["rule"] = rule
    try:
        yield
    finally:
        _current.clear()


def reference_copy(model):
    reference = copy.deepcopy(model)
    reference.set_attn_implementation(REFERENCE)
    return reference
