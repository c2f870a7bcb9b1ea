"""Token geometry: what a family's tokens look like, read from the base model's forward arguments.

A family *has* a geometry (composition): a text family a :class:`TextTokens`, a ViT-like family a
:class:`PatchGridTokens` (prefix tokens, then the patch grid row-major). The geometry turns a forward's arguments
into the :class:`~hf_flexattn.variants.ForwardInputs` masks depend on, and says how long an input the model allows.
Only shapes are read, never tensor values (no host sync, traceable by ``torch.export``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from .. import checks
from ..variants import ForwardInputs


def position_offset(embeddings: nn.Module) -> int:
    """RoBERTa-style tables start counting positions at ``padding_idx + 1``; BERT's at 0."""
    padding_idx = getattr(embeddings, "padding_idx", None)
    return 0 if padding_idx is None else padding_idx + 1


def usable_positions(model: nn.Module) -> int | None:
    """How many tokens the model's absolute position table can place, or None if it has no such table."""
    base = getattr(model, "base_model", model)
    embeddings = getattr(base, "embeddings", None)
    table = getattr(embeddings, "position_embeddings", None)
    if not isinstance(table, nn.Embedding):
        return None
    return table.num_embeddings - position_offset(embeddings)


def key_padding_from_attention_mask(attention_mask: Tensor | None, batch: int, seq_len: int) -> Tensor | None:
    """HF's 2D 0/1 ``attention_mask`` → (B, N) bool of real keys (its values are not read: no host sync)."""
    if attention_mask is None:
        return None
    if tuple(attention_mask.shape) != (batch, seq_len):
        raise ValueError(
            f"attention_mask has shape {tuple(attention_mask.shape)}; hf_flexattn expects the 2D padding mask of shape "
            f"(batch, seq_len) = {(batch, seq_len)} with 1 for real tokens and 0 for padding"
        )
    return attention_mask.bool()


@dataclass(frozen=True)
class TextTokens:
    """A 1D token sequence (``input_ids`` or ``inputs_embeds``, optional 2D ``attention_mask``).

    ``position_offset``: RoBERTa-style position tables start counting at ``pad_token_id + 1`` (BERT's and
    ALBERT's at 0), which the longest allowed input subtracts.
    """

    position_offset: bool = True

    def forward_inputs(self, base: nn.Module, arguments: dict[str, Any]) -> ForwardInputs:
        ids, embeds = arguments.get("input_ids"), arguments.get("inputs_embeds")
        ref = ids if ids is not None else embeds
        if ref is None:
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        batch, seq_len = ref.shape[:2]
        if arguments.get("position_ids") is None:
            usable = usable_positions(base)
            if usable is not None and seq_len > usable:
                raise ValueError(
                    f"input length {seq_len} exceeds the model's {usable} position embeddings; "
                    f"call hf_flexattn.extend_position_embeddings(model, max_len) first"
                )
        return ForwardInputs(
            batch=batch,
            seq_len=seq_len,
            device=ref.device,
            key_is_real=key_padding_from_attention_mask(arguments.get("attention_mask"), batch, seq_len),
        )

    def native_inputs(self, config, batch: int, seq_len: int, key_is_real: Tensor | None, device) -> ForwardInputs:
        return ForwardInputs(batch, seq_len, device, key_is_real=key_is_real)

    def max_tokens(self, config) -> int:
        """The longest input the position table allows."""
        pad = getattr(config, "pad_token_id", None) if self.position_offset and config.model_type != "bert" else None
        return config.max_position_embeddings - (0 if pad is None else pad + 1)

    def config_grid(self, config) -> tuple[int, int]:
        raise NotImplementedError("a text model has no patch grid")


@dataclass(frozen=True)
class PatchGridTokens:
    """``prefix_tokens(config)`` tokens (CLS, DeiT's distillation token, DINOv2's registers), then the patch grid
    row-major. The grid is read from ``pixel_values`` at forward time (so ``interpolate_pos_encoding=True`` works);
    ``pad_to_patch``: the model pads images to a whole number of patches (Swin), so the grid rounds up."""

    prefix_tokens: Callable[[Any], int] = lambda config: 1
    pad_to_patch: bool = False

    def grid_shape(self, config, height: int, width: int) -> tuple[int, int]:
        patch = checks.int_or_pair("patch_size", config.patch_size)
        if self.pad_to_patch:
            return -(-height // patch[0]), -(-width // patch[1])
        return height // patch[0], width // patch[1]

    def config_grid(self, config) -> tuple[int, int]:
        return self.grid_shape(config, *checks.int_or_pair("image_size", config.image_size))

    def max_tokens(self, config) -> int:
        rows, cols = self.config_grid(config)
        return self.prefix_tokens(config) + rows * cols

    def forward_inputs(self, base: nn.Module, arguments: dict[str, Any]) -> ForwardInputs:
        pixels = arguments.get("pixel_values")
        if pixels is None:
            raise ValueError("You have to specify pixel_values")
        batch, _, height, width = pixels.shape
        grid = self.grid_shape(base.config, height, width)
        prefix = self.prefix_tokens(base.config)
        seq_len = prefix + grid[0] * grid[1]
        return ForwardInputs(
            batch=batch,
            seq_len=seq_len,
            device=pixels.device,
            key_is_real=key_padding_from_attention_mask(arguments.get("attention_mask"), batch, seq_len),
            grid=grid,
            num_prefix_tokens=prefix,
        )

    def native_inputs(self, config, batch: int, seq_len: int, key_is_real: Tensor | None, device) -> ForwardInputs:
        """transformers passes lengths only: the grid is the config's, and any other token count is refused
        (an interpolated image of another size would need ``hf_flexattn.patch``, which reads the pixels)."""
        grid, prefix = self.config_grid(config), self.prefix_tokens(config)
        if seq_len != prefix + grid[0] * grid[1]:
            raise ValueError(
                f"attn_implementation='hf_flexattn_*' on {config.model_type}: the input has {seq_len} tokens, but the "
                f"config's {grid[0]}x{grid[1]} patch grid has {prefix + grid[0] * grid[1]}; transformers hands "
                "attention implementations lengths only, so other image sizes need hf_flexattn.patch(model, ...), "
                "which reads the grid from pixel_values"
            )
        return ForwardInputs(batch, seq_len, device, key_is_real=key_is_real, grid=grid, num_prefix_tokens=prefix)
