"""Swin v2 family: ``Swinv2Model``, ``Swinv2ForImageClassification``, ``Swinv2ForMaskedImageModeling``,
``Swinv2Backbone``.

As for Swin, HF's attention only sees pre-partitioned windows, so the patched module is the block,
``Swinv2Layer`` (``base.encoder.layers[stage].blocks[i]``), which hands its (padded) feature map to the variant; the
variants are Swin's (``full``, ``swin``, ``neighborhood``). Every parameter stays where it was
(``attention.self.query`` … ``attention.self.continuous_position_bias_mlp``, ``logit_scale``). HF's Swin v2 layers
take no keyword arguments, and nothing a block attends depends on more than its map, so blocks build (and cache) their
masks themselves.

Swin v2's attention differs from Swin's in its scores, not its windows, and that is all this family overrides:
cosine similarity of queries and keys times a learnable per-head logit scale (clamped at log 100), plus a
*continuous* position bias, ``16·sigmoid`` of a small MLP of log-spaced relative coordinates. Here the scale is
folded into the normalised queries (so the kernel runs with scale 1) and the MLP's table is computed once per block
forward for the offsets the block attends and read by a ``score_mod``, so gradients reach the logit scale and the MLP.
The coordinates are divided by the block's pretrained window size where the checkpoint has one
(``config.pretrained_window_sizes``), else by its window. The bias being continuous, a window larger than the
checkpoint's is allowed (offsets beyond it are new inputs to the same MLP, as in Swin v2's window transfer), and
``neighborhood`` gets the bias for every offset it attends. HF's window rule applies per block: the window is capped
at the stage's configured map, which is then unshifted.

Blocks see the map padded like HF (zeros, bottom/right, to a multiple of the window) and attend the padded tokens as
HF does; its shift mask adds −100 twice where these variants mask exactly.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..mods import continuous_position_bias_table
from ..variants.swin import BlockScores
from ..warnings import warn_once
from .base import PatchedModule, head_merge, head_split
from .swin import SwinFamily

# HF's clamp on the logit scale: at most 1 / 0.01
MAX_LOGIT_SCALE = math.log(1.0 / 0.01)


def cosine_queries_and_keys(attention: nn.Module, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
    """Unit queries times each head's clamped logit scale, and unit keys: their dot products are HF's scores."""
    logit_scale = torch.clamp(attention.logit_scale, max=MAX_LOGIT_SCALE).exp()  # (heads, 1, 1)
    return nn.functional.normalize(q, dim=-1) * logit_scale, nn.functional.normalize(k, dim=-1)


def bias_normaliser(attention: nn.Module) -> tuple[int, int] | None:
    """What HF divides the relative coordinates by (minus one): the pretrained window, else the block's window."""
    pretrained, window = attention.pretrained_window_size, attention.window_size
    if pretrained[0] > 0:
        return tuple(pretrained)
    return tuple(window) if window[0] > 1 else None


class FlexSwinv2LayerMixin(PatchedModule):
    """HF's Swin v2 block with its attention computed by an hf_flexattn variant over the whole feature map.

    Same parameters, same forward signature, same return value (``(hidden_states,)``, plus ``None`` for the
    attention weights when ``output_attentions``).
    """

    def forward(self, hidden_states, input_dimensions, output_attentions=False):
        if output_attentions:
            warn_once(
                "swinv2-attentions",
                "hf_flexattn: patched Swin v2 blocks do not return attention weights (their attentions are None); "
                "hf_flexattn.unpatch(model) gives HF's own, with the same weights",
            )
        height, width = input_dimensions
        batch, _, channels = hidden_states.shape
        shortcut = hidden_states
        grid = self.hfx_variant.map_shape(self, height, width)
        # like HF, pad the map with zeros to the grid the variant works on (Swin v2 normalises after attention)
        x = hidden_states.view(batch, height, width, channels)
        x = nn.functional.pad(x, (0, 0, 0, grid[1] - width, 0, grid[0] - height)).view(batch, -1, channels)
        attention = self.attention.self
        q = head_split(attention.query(x), attention.attention_head_size)
        k = head_split(attention.key(x), attention.attention_head_size)
        v = head_split(attention.value(x), attention.attention_head_size)
        out = self.hfx_variant.attend_map(self, q, k, v, (height, width), grid, None)
        out = self.attention.output(head_merge(out), x).view(batch, grid[0], grid[1], channels)
        out = out[:, :height, :width].reshape(batch, height * width, channels)
        # Swin v2's residual post-norm: LayerNorm after attention and after the MLP
        hidden_states = shortcut + self.drop_path(self.layernorm_before(out))
        layer_output = self.output(self.intermediate(hidden_states))
        layer_output = hidden_states + self.drop_path(self.layernorm_after(layer_output))
        return (layer_output, None) if output_attentions else (layer_output,)


class Swinv2Family(SwinFamily):
    name = "swinv2"
    required_attributes = (
        "query", "key", "value", "logit_scale", "continuous_position_bias_mlp", "window_size",
        "pretrained_window_size", "attention_head_size", "num_attention_heads",
    )  # fmt: skip
    expected_design = (
        "Swinv2Layer with Swinv2SelfAttention (query/key/value, logit_scale, continuous_position_bias_mlp)"
    )
    attention_mixin = FlexSwinv2LayerMixin

    def checked_part(self, module: nn.Module):
        attention = getattr(module, "attention", None)
        return getattr(attention, "self", None), f"{type(module).__name__}.attention.self"

    def dropout_p(self, module: nn.Module) -> float:
        return module.attention.self.dropout.p

    # --- how a Swin v2 block's attention differs from Swin's -------------------------------------------------------

    def check_window_size(self, window: int, config, where: str) -> None:
        """Any window: the continuous bias covers every offset."""

    def window_and_shift(self, layer: nn.Module, dims: tuple[int, int], window: int, shift: int) -> tuple[int, int]:
        """HF's rule (``Swinv2Layer._compute_window_shift``), on the map size the block was built for: the window
        is capped at the map, and a map no larger than the window is not shifted; odd blocks shift."""
        resolution = layer.input_resolution[0]
        window = min(resolution, window)
        shift = shift if layer.hfx_block_idx % 2 else 0
        return window, 0 if resolution <= window else shift

    def bias_table(self, layer: nn.Module) -> None:
        """None: the continuous bias is computed per forward (:meth:`block_scores`)."""
        return None

    def block_scores(self, layer: nn.Module, q: Tensor, k: Tensor, reach: int) -> BlockScores:
        """Cosine scores (the logit scale folded into the queries, scale 1) and the continuous bias for every offset
        up to ``reach``."""
        attention = layer.attention.self
        q, k = cosine_queries_and_keys(attention, q, k)
        table = continuous_position_bias_table(
            attention.continuous_position_bias_mlp, attention.num_attention_heads, reach, bias_normaliser(attention)
        )
        return BlockScores(q, k, 1.0, table, reach + 1)
