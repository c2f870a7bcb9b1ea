"""What a model family tells the patcher: where its attention modules are and what its tokens look like."""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

from torch import Tensor, nn

from ..variants.base import ForwardInputs


class Family:
    """A group of HF model types whose attention modules share one design."""

    name: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]
    # mixin that turns an HF attention class into its hf_flexattn subclass
    attention_mixin: ClassVar[type]
    # one token sequence for all layers (BERT, ViT), or per-stage grids that blocks ask for (Swin)
    masks_per_layer: ClassVar[bool] = True
    # family-specific meaning of a variant name (Swin's `full` is its own window attention)
    variant_overrides: ClassVar[dict[str, type]] = {}

    def __init__(self):
        self._subclasses: dict[type, type] = {}

    def base_model(self, model: nn.Module) -> nn.Module:
        return getattr(model, "base_model", model)

    def attention_modules(self, base: nn.Module) -> list[nn.Module]:
        raise NotImplementedError

    def block_index(self, base: nn.Module, layer_idx: int) -> int:
        """Index of layer ``layer_idx`` within its stage (stages only exist in hierarchical models)."""
        return layer_idx

    # what check_attention_module requires of the patched module (or of ``checked_part`` of it)
    required_attributes: ClassVar[tuple[str, ...]] = ()
    expected_design: ClassVar[str] = ""

    def checked_part(self, module: nn.Module) -> tuple[Any, str]:
        """The object that must carry ``required_attributes``, and its name for messages."""
        return module, type(module).__name__

    def check_attention_module(self, module: nn.Module, layer_idx: int) -> None:
        """Raise ``ValueError`` if ``module`` is not the HF design this family patches."""
        part, name = self.checked_part(module)
        missing = [n for n in self.required_attributes if not hasattr(part, n)]
        if missing:
            raise ValueError(
                f"layer {layer_idx}: {name} lacks {missing}; the {self.name} family expects {self.expected_design}"
            )

    def check_model(self, model: nn.Module) -> None:
        """Raise ``ValueError`` for configurations the family cannot patch."""

    def forward_inputs(self, base: nn.Module, arguments: dict[str, Any]) -> ForwardInputs:
        raise NotImplementedError

    def dropout_p(self, module: nn.Module) -> float:
        raise NotImplementedError

    def patched_class(self, hf_class: type) -> type:
        """The hf_flexattn subclass of ``hf_class`` (made once per class and cached)."""
        if hf_class not in self._subclasses:
            self._subclasses[hf_class] = type(
                "Flex" + hf_class.__name__,
                (self.attention_mixin, hf_class),
                {"__module__": self.attention_mixin.__module__, "__doc__": self.attention_mixin.__doc__},
            )
        return self._subclasses[hf_class]

    @staticmethod
    def bind_arguments(base: nn.Module, args: tuple, kwargs: dict) -> dict[str, Any]:
        """The base model's forward arguments by name, positional ones included."""
        signature = inspect.signature(type(base).forward)
        bound = signature.bind_partial(base, *args, **kwargs)
        arguments = dict(bound.arguments)
        arguments.update(arguments.pop("kwargs", {}))
        return arguments


def key_padding_from_attention_mask(attention_mask: Tensor | None, batch: int, seq_len: int) -> Tensor | None:
    """HF's 2D 0/1 ``attention_mask`` → (B, N) bool of real keys, or None when nothing is padding."""
    if attention_mask is None:
        return None
    if attention_mask.dim() != 2 or tuple(attention_mask.shape) != (batch, seq_len):
        raise ValueError(
            f"attention_mask has shape {tuple(attention_mask.shape)}; hf_flexattn expects the 2D padding mask "
            f"of shape (batch, seq_len) = {(batch, seq_len)} with 1 for real tokens and 0 for padding"
        )
    key_is_real = attention_mask.bool()
    if bool(key_is_real.all()):
        return None
    return key_is_real


def head_split(x: Tensor, head_dim: int) -> Tensor:
    """(B, N, H·D) → (B, H, N, D)."""
    return x.view(*x.shape[:-1], -1, head_dim).transpose(1, 2)


def head_merge(x: Tensor) -> Tensor:
    """(B, H, N, D) → (B, N, H·D)."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], -1)


def masks_from_kwargs(module: nn.Module, kwargs: dict):
    masks = kwargs.get("hfx_masks")
    if masks is None:
        raise RuntimeError(
            f"{type(module).__name__} was called without the masks that hf_flexattn builds in the base model's "
            "forward; call the patched model (or its base model), not a layer on its own"
        )
    return masks

