"""What every attention variant shares: option validation, per-forward mask building, the attend call."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.nn.attention.flex_attention import BlockMask

from .. import kernels
from ..masks import Mask, build_padded_block_mask, padded_length


@dataclass
class ForwardInputs:
    """What a patched base model's forward is called with, reduced to what masks depend on."""

    batch: int
    seq_len: int
    device: torch.device
    key_is_real: Tensor | None = None  # (B, N) bool; None when the batch has no padding
    global_attention_mask: Tensor | None = None  # (B, N) bool, HF Longformer's per-batch globals
    grid: tuple[int, int] | None = None  # (rows, cols) of the patch grid, vision families
    num_prefix_tokens: int = 0  # CLS (and distillation) tokens before the grid

    @property
    def has_padding(self) -> bool:
        return self.key_is_real is not None

    @property
    def padded_len(self) -> int:
        """Masks and kernels work on lengths rounded up to the block size: one compiled kernel per bucket."""
        return padded_length(self.seq_len)

    def pad_tokens(self, flags: Tensor, value: bool = False) -> Tensor:
        """Per-token flags (B, N) → (B, padded_len), the extra positions set to ``value``."""
        out = torch.full((flags.shape[0], self.padded_len), value, dtype=flags.dtype, device=flags.device)
        out[:, : self.seq_len] = flags
        return out



@dataclass
class LayerMasks:
    """The masks one forward hands to every layer: ``block_masks[i]`` is layer i's (shared when equal)."""

    inputs: ForwardInputs
    block_masks: list[BlockMask | None] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Option:
    default: Any
    help: str


class Variant:
    """An attention pattern. Subclasses define ``name``, ``families``, ``options`` and ``layer_mask``."""

    name: ClassVar[str]
    families: ClassVar[tuple[str, ...]]
    options: ClassVar[dict[str, Option]] = {}

    def __init__(self, family, num_layers: int, **options):
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            allowed = ", ".join(self.options) or "none"
            raise ValueError(
                f"patch(variant={self.name!r}): unknown option {unknown[0]!r}; options of {self.name!r}: {allowed}"
            )
        self.family = family
        self.num_layers = num_layers
        self.settings = {k: options.get(k, spec.default) for k, spec in self.options.items()}
        self.validate()
        self.mask_builds = 0  # how many BlockMasks this variant built: tests count them
        self._shape_cache: dict[tuple, BlockMask] = {}

    # --- hooks for subclasses --------------------------------------------------------------------------

    def validate(self) -> None:
        """Check ``self.settings`` (raise ``ValueError`` naming the option, the value and what is allowed)."""

    def validate_model(self, model: nn.Module) -> None:
        """Checks that need the model (sizes, positions)."""

    def prepare(self, masks: LayerMasks) -> None:
        """Per-forward work shared by all layers (e.g. per-sample global flags), stored in ``masks.extras``."""

    def layer_mask(self, masks: LayerMasks, layer_idx: int) -> Mask | None:
        """The mask of layer ``layer_idx``, at ``inputs.padded_len``, without padding (added by the base)."""
        raise NotImplementedError

    def layer_block_masks(self, masks: LayerMasks, layer_idx: int) -> Any:
        """What layer ``layer_idx``'s ``attend`` receives as ``masks.block_masks[i]`` (one BlockMask by default)."""
        mask = self.layer_mask(masks, layer_idx)
        return None if mask is None else self.block_mask(masks, mask)

    def layer_key(self, layer_idx: int) -> Any:
        """Layers with the same key share one mask (e.g. all layers of a fixed window)."""
        return None

    def input_dependent(self, inputs: ForwardInputs) -> bool:
        """Whether masks depend on more than the shape (padding, per-batch globals): then they are not cached."""
        return inputs.has_padding

    def attach(self, module: nn.Module, layer_idx: int) -> None:
        """Add the variant's own parameters to an attention module (none by default)."""

    def detach(self, module: nn.Module) -> None:
        """Remove what ``attach`` added."""

    def attend(self, module: nn.Module, hidden_states: Tensor, q: Tensor, k: Tensor, v: Tensor, masks: LayerMasks) -> Tensor:
        """(B, H, N, D) attention output of one layer."""
        return kernels.attend(
            q,
            k,
            v,
            masks.block_masks[module.hfx_layer_idx],
            scale=module.scaling,
            dropout_p=self.family.dropout_p(module),
        )

    # --- shared machinery --------------------------------------------------------------------------------

    def build_masks(self, inputs: ForwardInputs) -> LayerMasks:
        """Build each distinct layer mask once for this forward; shape-only masks are cached across forwards."""
        masks = LayerMasks(inputs)
        if not self.family.masks_per_layer:
            return masks  # hierarchical models: masks are per stage geometry, built (once) by the blocks
        self.prepare(masks)
        built: dict[Any, Any] = {}
        cacheable = not self.input_dependent(inputs)
        for i in range(self.num_layers):
            key = self.layer_key(i)
            if key not in built:
                cache_key = (key, inputs.seq_len, inputs.grid, str(inputs.device))
                if cacheable and cache_key in self._shape_cache:
                    built[key] = self._shape_cache[cache_key]
                else:
                    built[key] = self.layer_block_masks(masks, i)
                    if cacheable:
                        self._shape_cache[cache_key] = built[key]
            masks.block_masks.append(built[key])
        return masks

    def block_mask(self, masks: LayerMasks, mask: Mask) -> BlockMask:
        """BlockMask of ``mask`` & padding, at the bucketed length; counted in ``mask_builds``."""
        inputs = masks.inputs
        batch = inputs.batch if self.input_dependent(inputs) else 1
        return self.build_padded(mask, inputs.seq_len, inputs.device, inputs.key_is_real, batch)

    def build_padded(self, mask: Mask, seq_len: int, device, key_is_real: Tensor | None = None, batch: int = 1) -> BlockMask:
        """BlockMask of ``mask`` over ``seq_len`` tokens bucketed to the block size; counted in ``mask_builds``."""
        self.mask_builds += 1
        return build_padded_block_mask(mask, seq_len, device, key_is_real, batch)

    def cached_block_mask(self, key: Any, build) -> BlockMask:
        """A shape-only BlockMask, built once per process and key (e.g. one per Swin stage geometry)."""
        if key not in self._shape_cache:
            self._shape_cache[key] = build()
        return self._shape_cache[key]

    def config_dict(self) -> dict:
        return {"variant": self.name, "options": dict(self.settings)}

    def extra_repr(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.settings.items())
        return f"variant={self.name}" + (f", {opts}" if opts else "")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"
