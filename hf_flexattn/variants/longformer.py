"""``longformer``: sliding window + global tokens, with HF Longformer's semantics.

* ``window`` (int or one per layer, positive and even): each token sees ``window // 2`` tokens on each side.
* Global tokens see every (real) key and are seen by every query. They are fixed positions
  (``global_tokens=[0]``) and/or per batch: ``model(..., global_attention_mask=...)`` (0/1 per token).
* ``global_projections=True`` adds ``query_global`` / ``key_global`` / ``value_global`` to each self-attention
  module (initialised as copies of query/key/value, the Longformer conversion recipe). As in HF's
  ``LongformerSelfAttention``, global rows are then computed from those projections over all keys, and
  every other row attends its window plus the global keys through the local projections.

The per-batch BlockMasks come from block summaries (no N×N tensor), so they stay cheap at 16k tokens.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from .. import kernels
from ..masks import generate_global, generate_global_keys, generate_global_queries, generate_sliding_window
from .base import LayerMasks, Option, Variant

GLOBAL_PROJECTIONS = ("query_global", "key_global", "value_global")


class LongformerVariant(Variant):
    name = "longformer"
    families = ("bert",)
    options = {
        "window": Option(512, "attention window (int or one per layer): each token sees window/2 on each side"),
        "global_tokens": Option((), "positions with global attention in every sample, e.g. [0] for CLS"),
        "global_projections": Option(False, "separate query/key/value_global projections for global rows"),
    }
    accepts_global_attention_mask = True

    def validate(self) -> None:
        window = self.settings["window"]
        windows = list(window) if isinstance(window, (list, tuple)) else [window] * self.num_layers
        if len(windows) != self.num_layers:
            raise ValueError(
                f"patch(variant='longformer'): window has {len(windows)} entries; give one int, or one per layer "
                f"({self.num_layers})"
            )
        for w in windows:
            if isinstance(w, bool) or not isinstance(w, int) or w <= 0 or w % 2:
                raise ValueError(
                    f"patch(variant='longformer'): window={window!r}; each window must be a positive even int "
                    "(HF Longformer's meaning: each token sees window/2 tokens on each side)"
                )
        self.windows = windows
        tokens = self.settings["global_tokens"]
        if tokens is None:
            tokens = ()
        if not isinstance(tokens, (list, tuple)) or any(isinstance(t, bool) or not isinstance(t, int) or t < 0 for t in tokens):
            raise ValueError(
                f"patch(variant='longformer'): global_tokens={tokens!r}; expected a list of non-negative token "
                "positions, e.g. [0]"
            )
        self.settings["global_tokens"] = list(tokens)
        if not isinstance(self.settings["global_projections"], bool):
            raise ValueError(
                f"patch(variant='longformer'): global_projections={self.settings['global_projections']!r}; "
                "expected True or False"
            )
        if isinstance(window, tuple):
            self.settings["window"] = list(window)

    def validate_model(self, model: nn.Module) -> None:
        max_pos = model.config.max_position_embeddings
        for t in self.settings["global_tokens"]:
            if t >= max_pos:
                raise ValueError(
                    f"patch(variant='longformer'): global_tokens contains {t}, outside the model's "
                    f"{max_pos} positions"
                )

    def input_dependent(self, inputs) -> bool:
        return inputs.has_padding or inputs.global_attention_mask is not None

    def layer_key(self, layer_idx: int) -> Any:
        return self.windows[layer_idx]

    def prepare(self, masks: LayerMasks) -> None:
        inputs = masks.inputs
        batch = inputs.batch if self.input_dependent(inputs) else 1
        is_global = torch.zeros(batch, inputs.seq_len, dtype=torch.bool, device=inputs.device)
        for t in self.settings["global_tokens"]:
            if t >= inputs.seq_len:
                raise ValueError(
                    f"global_tokens position {t} is outside the input of length {inputs.seq_len}; "
                    f"allowed positions are 0..{inputs.seq_len - 1}"
                )
            is_global[:, t] = True
        gam = inputs.global_attention_mask
        if gam is not None:
            if gam.dim() != 2 or tuple(gam.shape) != (inputs.batch, inputs.seq_len):
                raise ValueError(
                    f"global_attention_mask has shape {tuple(gam.shape)}; expected (batch, seq_len) = "
                    f"{(inputs.batch, inputs.seq_len)} with 1 for global tokens and 0 for local ones"
                )
            is_global = is_global | gam.to(is_global.device).bool()
        if inputs.key_is_real is not None:
            is_global = is_global & inputs.key_is_real  # a padded token is never global (as in HF)
        masks.extras["is_global"] = inputs.pad_tokens(is_global)
        masks.extras["any_global"] = bool(is_global.any())

    def layer_block_masks(self, masks: LayerMasks, layer_idx: int):
        window = generate_sliding_window(self.windows[layer_idx] // 2)
        is_global = masks.extras["is_global"]
        if not masks.extras["any_global"]:
            return self.block_mask(masks, window), None
        if not self.settings["global_projections"]:
            return self.block_mask(masks, window | generate_global(is_global)), None
        local = self.block_mask(masks, window | generate_global_keys(is_global))
        return local, self.block_mask(masks, generate_global_queries(is_global))

    def attach(self, module: nn.Module, layer_idx: int) -> None:
        if self.settings["global_projections"]:
            for name, local in zip(GLOBAL_PROJECTIONS, (module.query, module.key, module.value)):
                module.add_module(name, copy.deepcopy(local))

    def detach(self, module: nn.Module) -> None:
        for name in GLOBAL_PROJECTIONS:
            module._modules.pop(name, None)

    def attend(self, module, hidden_states: Tensor, q: Tensor, k: Tensor, v: Tensor, masks: LayerMasks) -> Tensor:
        local_mask, global_mask = masks.block_masks[module.hfx_layer_idx]
        dropout_p = self.family.dropout_p(module)
        out = kernels.attend(q, k, v, local_mask, scale=module.scaling, dropout_p=dropout_p)
        if global_mask is None:
            return out
        batch, heads, n, dim = q.shape

        def heads_of(linear):
            return linear(hidden_states).view(batch, n, heads, dim).transpose(1, 2)

        global_out = kernels.attend(
            heads_of(module.query_global),
            heads_of(module.key_global),
            heads_of(module.value_global),
            global_mask,
            scale=module.scaling,
            dropout_p=dropout_p,
        )
        is_global = masks.extras["is_global"][:, None, :n, None]
        return torch.where(is_global, global_out, out)
