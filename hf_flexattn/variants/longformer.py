"""``longformer``: sliding window + global tokens, with HF Longformer's semantics.

* ``window`` (int or one per layer, positive and even): each token sees ``window // 2`` tokens on each side.
* Global tokens see every (real) key and are seen by every query. They are fixed positions (``global_tokens=[0]``,
  counted from each sample's first real token, so left padding keeps them on the same words; a position beyond
  the input is absent) and/or per batch: ``model(..., global_attention_mask=...)`` (0/1 per token, as in HF).
* ``global_projections=True`` adds ``query_global`` / ``key_global`` / ``value_global`` to each self-attention
  module (initialised as copies of query/key/value, the Longformer conversion recipe). As in HF's
  ``LongformerSelfAttention``, global rows are then computed from those projections over all keys, and every
  other row attends its window plus the global keys through the local projections.

The per-batch BlockMasks come from block summaries (no N×N tensor), so they stay cheap at 16k tokens. Where
``ops.sliding_window_band_plan`` says the band plan pays (CPU, past the measured crossover), a layer runs it instead
(kernels/band.py: query chunks with their window's keys and the global keys, one fused SDPA call; global rows one
small dense call), built once per forward and window; otherwise the generic kernels with the exact mask.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from .. import checks, compat, kernels, ops
from ..kernels.tiles import GlobalRows, global_row_positions
from ..masks import (
    BatchMask,
    generate_global,
    generate_global_keys,
    generate_global_queries,
    generate_sliding_window,
    global_token_flags,
)
from .base import (
    AddsParameters,
    ChecksInputs,
    ForwardInputs,
    ForwardMasks,
    ForwardState,
    HasForwardState,
    LayerCall,
    NativeAttention,
    OwnLayerMasks,
    PerLayerMasks,
    ProbabilitiesApart,
    Requirements,
    TakesGlobalAttentionMask,
    Variant,
    VariantOptions,
    option,
    remove_submodule,
)

GLOBAL_PROJECTIONS = ("query_global", "key_global", "value_global")
WINDOW_MEANING = "HF Longformer's meaning: each token sees window/2 tokens on each side"


@dataclass(frozen=True, kw_only=True)
class LongformerOptions(VariantOptions):
    variant: ClassVar[str] = "longformer"

    window: int | tuple[int, ...] = option(
        512, "attention window (int or one per layer): each token sees window/2 on each side"
    )
    global_tokens: tuple[int, ...] = option(
        (), "positions with global attention in every sample, counted from its first real token, e.g. [0] for CLS"
    )
    global_projections: bool = option(
        False, "separate query/key/value_global projections for global rows (HF Longformer)"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.window, (list, tuple)):
            self._set(
                "window", tuple(checks.positive_even_int("window", w, self.where, WINDOW_MEANING) for w in self.window)
            )
        else:
            checks.positive_even_int("window", self.window, self.where, WINDOW_MEANING)
        self._set("global_tokens", checks.positions("global_tokens", self.global_tokens, self.where))
        checks.boolean("global_projections", self.global_projections, self.where)


@dataclass
class GlobalTokens(ForwardState):
    """``longformer``'s per-forward state: which tokens are global, (B or 1, padded length) bool on the device asked
    for; None where the forward has none (no fixed positions, no ``global_attention_mask``)."""

    is_global: Tensor | None


class LongformerMasks(NamedTuple):
    """One layer's masks: local rows (window + global keys), and, with global projections, the global rows."""

    local: BatchMask
    global_rows: BatchMask | None


class LongformerVariant(
    ChecksInputs,
    HasForwardState[GlobalTokens],
    PerLayerMasks,
    OwnLayerMasks[LongformerMasks],
    AddsParameters,
    TakesGlobalAttentionMask,
    ProbabilitiesApart,
    NativeAttention,
    Variant,
):
    name = "longformer"
    requires = Requirements(tokens=("sequence",))
    Options = LongformerOptions

    @property
    def adds_parameters(self) -> bool:
        return self.options.global_projections

    @property
    def probabilities_apart(self) -> bool:
        return self.options.global_projections  # global rows weigh values of their own projections

    def configure(self, config) -> None:
        self.windows = checks.int_per_layer(
            "window", self.options.window, self.num_layers, self.options.where, checks.positive_even_int
        )

    def check_inputs(self, inputs: ForwardInputs) -> None:
        gam = inputs.global_attention_mask
        if gam is not None:
            checks.sized_like(
                "global_attention_mask",
                gam.shape,
                (inputs.batch, inputs.seq_len),
                "(batch, seq_len) with 1 for global tokens and 0 for local ones",
            )

    def has_globals(self, inputs: ForwardInputs) -> bool:
        """Decided from Python facts (no tensor is read): fixed positions, or a per-batch mask."""
        return bool(self.options.global_tokens) or inputs.global_attention_mask is not None

    def prepare(self, inputs: ForwardInputs) -> GlobalTokens:
        if not self.has_globals(inputs):
            return GlobalTokens(None)
        is_global = global_token_flags(
            inputs.batch if self.input_dependent(inputs) else 1,
            inputs.seq_len,
            positions=self.options.global_tokens,
            global_attention_mask=inputs.global_attention_mask,
            key_is_real=inputs.key_is_real,
            device=inputs.device,
        )
        return GlobalTokens(inputs.pad_tokens(is_global))

    @staticmethod
    def global_flags(masks: ForwardMasks, device: torch.device) -> Tensor | None:
        """The forward's global flags on ``device`` (its :class:`GlobalTokens`)."""
        state: GlobalTokens = masks.prepared(device)
        return state.is_global

    def layer_key(self, layer_idx: int) -> int:
        return self.windows[layer_idx]

    def masks_for_layer(self, masks: ForwardMasks, layer_idx: int, device: torch.device) -> LongformerMasks:
        window = generate_sliding_window(self.windows[layer_idx] // 2)
        is_global = self.global_flags(masks, device)
        if is_global is None:
            return LongformerMasks(self.batch_mask(masks, window, device), None)
        if not self.options.global_projections:
            return LongformerMasks(self.batch_mask(masks, window | generate_global(is_global), device), None)
        local = self.batch_mask(masks, window | generate_global_keys(is_global), device)
        return LongformerMasks(local, self.batch_mask(masks, generate_global_queries(is_global), device))

    def attach(self, module: nn.Module, layer_idx: int) -> None:
        if self.options.global_projections:
            for name, local in zip(GLOBAL_PROJECTIONS, self.family.qkv_projections(module)):
                module.add_module(name, copy.deepcopy(local))

    def detach(self, module: nn.Module) -> None:
        for name in GLOBAL_PROJECTIONS:
            remove_submodule(module, name)

    def _global_qkv(self, module: nn.Module, hidden_states: Tensor, like: Tensor) -> list[Tensor]:
        batch, heads, n, dim = like.shape
        return [
            getattr(module, name)(hidden_states).view(batch, n, heads, dim).transpose(1, 2)
            for name in GLOBAL_PROJECTIONS
        ]

    @staticmethod
    def _global_rows_output(
        module: nn.Module, hidden_states: Tensor, rows: GlobalRows, like: Tensor, dropout_p: float
    ) -> Tensor:
        """The band plan's global rows (``rows``: the plan's GlobalRows, G of them) through the global projections
        over every real key: (B, H, G, D), as HF Longformer computes them.

        ``query_global`` runs on the G global tokens only. ``key_global``/``value_global`` over every token would cost
        two N·C·C projections for G rows; with fewer global rows than ``head_dim`` they are folded into the rows
        instead, per head: q·(W_k h + b_k) = (q W_k)·h + q·b_k, and P·(W_v h + b_v) = (P h) W_vᵀ + (ΣP) b_v."""
        batch, heads, n, dim = like.shape
        channels = hidden_states.shape[-1]
        at = global_row_positions(rows, n)
        tokens = hidden_states.reshape(batch * n, channels).index_select(0, at).view(batch, rows.count, channels)
        q = module.query_global(tokens).view(batch, rows.count, heads, dim).transpose(1, 2)  # (B, H, G, D)
        projections = (module.key_global, module.value_global)
        # many global rows: projecting the keys and values is cheaper than folding; a projection that is more than
        # its weight (a PEFT adapter, a hook) is called as HF calls it
        if rows.count >= dim or not all(compat.is_plain_linear(projection) for projection in projections):
            k, v = (projection(hidden_states).view(batch, n, heads, dim).transpose(1, 2) for projection in projections)
            return torch.nn.functional.scaled_dot_product_attention(
                q, k, v, attn_mask=rows.key_mask, dropout_p=dropout_p, scale=module.scaling
            )
        key_weight = module.key_global.weight.view(heads, dim, channels)
        value_weight = module.value_global.weight.view(heads, dim, channels)
        q = q * module.scaling
        scores = torch.einsum("bhgc,bnc->bhgn", torch.einsum("bhgd,hdc->bhgc", q, key_weight), hidden_states)
        if module.key_global.bias is not None:  # softmax drops it; kept so the bias gets its (zero) gradient, as in HF
            scores = scores + (q * module.key_global.bias.view(heads, 1, dim)).sum(-1, keepdim=True)
        if rows.key_mask is not None:
            scores = scores + rows.key_mask
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(hidden_states.dtype)
        probs = torch.nn.functional.dropout(probs, dropout_p) if dropout_p > 0 else probs
        out = torch.einsum("bhgc,hdc->bhgd", torch.einsum("bhgn,bnc->bhgc", probs, hidden_states), value_weight)
        if module.value_global.bias is not None:
            out = out + probs.sum(-1, keepdim=True) * module.value_global.bias.view(heads, 1, dim)
        return out

    def band_plan(self, masks: ForwardMasks, layer_idx: int, q: Tensor) -> kernels.TilePlan | None:
        """The layer's band plan where it pays (``ops.sliding_window_band_plan`` decides); None: the generic
        kernels."""
        inputs = masks.inputs_on(q.device)
        return ops.sliding_window_band_plan(
            q,
            inputs.seq_len,
            self.windows[layer_idx] // 2,
            masks,
            key_is_real=inputs.key_is_real,
            is_global=self.global_flags(masks, q.device),
            backend=self.options.backend,
        )

    def attend(self, call: LayerCall) -> Tensor:
        q, k, v, masks, scale, dropout_p = call.q, call.k, call.v, call.masks, call.scale, call.dropout_p
        # with global projections, global rows use them (HF Longformer): only a patched module has them
        global_rows = self.options.global_projections and self.global_flags(masks, q.device) is not None
        plan = self.band_plan(masks, call.layer_idx, q)
        if plan is not None:  # local rows see their window and the global keys; global rows use their projections
            rows = plan.global_rows if global_rows else None  # None too where no sample has a global token
            global_out = (
                None if rows is None else self._global_rows_output(call.module, call.hidden_states, rows, q, dropout_p)
            )
            return kernels.tiled_attention(q, k, v, plan, scale, dropout_p, global_out=global_out)
        layer: LongformerMasks = masks.for_layer(call.layer_idx, q.device)
        backend = self.options.backend
        if layer.global_rows is None:
            return kernels.attend(q, k, v, layer.local, scale=scale, dropout_p=dropout_p, backend=backend)
        global_qkv = self._global_qkv(call.module, call.hidden_states, q)
        out = kernels.attend(q, k, v, layer.local, scale=scale, dropout_p=dropout_p, backend=backend)
        global_out = kernels.attend(*global_qkv, layer.global_rows, scale=scale, dropout_p=dropout_p, backend=backend)
        return torch.where(self._global_rows(masks, q), global_out, out)

    def attention_probabilities(self, call: LayerCall) -> Tensor:
        q, masks = call.q, call.masks
        layer: LongformerMasks = masks.for_layer(call.layer_idx, q.device)
        probs = kernels.attention_probabilities(q, call.k, layer.local, scale=call.scale)
        if layer.global_rows is None:
            return probs
        q_g, k_g, _ = self._global_qkv(call.module, call.hidden_states, q)
        global_probs = kernels.attention_probabilities(q_g, k_g, layer.global_rows, scale=call.scale)
        return torch.where(self._global_rows(masks, q), global_probs, probs)

    def _global_rows(self, masks: ForwardMasks, q: Tensor) -> Tensor:
        return self.global_flags(masks, q.device)[:, None, : q.shape[2], None]

    def extra_repr(self, layer_idx: int | None = None) -> str:
        values = self.options.to_dict()
        if layer_idx is not None:
            values["window"] = self.windows[layer_idx]  # this layer's, not the whole per-layer list
        return "variant=longformer, " + ", ".join(f"{k}={v!r}" for k, v in values.items())


@dataclass(frozen=True, kw_only=True)
class CheckpointLongformerOptions(LongformerOptions):
    """``longformer`` on an HF Longformer checkpoint: the checkpoint's windows and global projections by default."""

    window: int | tuple[int, ...] | None = option(
        None,
        "attention window (int or one per layer): each token sees window/2 on each side; None: the checkpoint's "
        "config.attention_window",
    )
    global_projections: bool = option(
        True, "the checkpoint's query/key/value_global projections for global rows (always, as HF Longformer)"
    )

    def __post_init__(self) -> None:
        checkpoint_window = self.window is None
        if checkpoint_window:
            self._set("window", 2)  # any valid window, so that the shared checks run; None is restored below
        super().__post_init__()
        if checkpoint_window:
            self._set("window", None)
        if not self.global_projections:
            raise ValueError(
                f"{self.where}: global_projections=False; an HF Longformer checkpoint computes its global rows with "
                "its own query_global/key_global/value_global, which hf_flexattn always uses"
            )


class CheckpointLongformerVariant(LongformerVariant):
    """The ``longformer`` variant on HF Longformer's modules (the family's strategy for ``longformer``): the
    checkpoint's windows unless ``window`` is given, and the global projections the modules already have (nothing
    added, nothing removed on unpatch)."""

    requires = Requirements(tokens=("sequence",), global_projections=True)
    Options = CheckpointLongformerOptions

    @property
    def adds_parameters(self) -> bool:
        return False

    def configure(self, config) -> None:
        window = config.attention_window if self.options.window is None else self.options.window
        self.windows = checks.int_per_layer("window", window, self.num_layers, self.options.where, _even_window)

    def attach(self, module: nn.Module, layer_idx: int) -> None:
        pass  # the checkpoint's query_global/key_global/value_global are used as they are

    def detach(self, module: nn.Module) -> None:
        pass


def _even_window(name: str, value: Any, where: str) -> int:
    return checks.positive_even_int(name, value, where, WINDOW_MEANING)
