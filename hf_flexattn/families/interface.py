"""The patching path of every non-hierarchical family: HF's attention module calls transformers'
``ALL_ATTENTION_FUNCTIONS``.

In transformers 5.x encoders' attention modules compute their own q/k/v projections, look the attention function up
by ``config._attn_implementation``, call it on (B, H, N, D) tensors and apply their own output layer. A patched
model's implementation is ``"hf_flexattn"`` (see ``hf_integration``), whose function hands q/k/v back to the patched
module's :meth:`FlexInterfaceAttentionMixin.hfx_attention_function`. So the patched class keeps HF's forward exactly
as written (projections, reshapes, output layer, LayerNorms) and a family only says where the attention modules are
and what its tokens look like (its ``tokens``: a text sequence, or prefix tokens + a patch grid).
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor, nn

from .base import Family, PatchedModule

# the attention-function registry HF's module must look its attention up in for this path to reach it
INTERFACE_NAME = "ALL_ATTENTION_FUNCTIONS"


class ModelBias:
    """A bias of the model itself that HF adds to the attention scores (BEiT's relative position bias), handed to the
    attention as a ``score_mod`` instead of a dense (B, H, N, N) tensor. It travels where HF's dense bias travels
    (the ``attention_mask`` argument), so the family swaps the module that makes it, not the layer around it."""

    score_mod = None  # (score, b, h, q, kv) -> score
    parameters: tuple[Tensor, ...] = ()  # the tensors ``score_mod`` reads that need gradients


class FlexInterfaceAttentionMixin(PatchedModule):
    """HF's attention module, forward unchanged, with its attention function computed by an hf_flexattn variant.

    Same parameters, same forward signature, same return value ``(output, weights)``.
    """

    def forward(self, hidden_states, *args, **kwargs):
        # the hidden states travel with the call to the attention function: a variant that adds projections of its
        # own (Longformer's global ones) applies them there
        return super().forward(hidden_states, *args, hfx_hidden_states=hidden_states, **kwargs)

    def hfx_attention_function(
        self, query: Tensor, key: Tensor, value: Tensor, attention_mask, scaling, dropout, kwargs: dict
    ):
        """What ``ALL_ATTENTION_FUNCTIONS["hf_flexattn"]`` computes for this module: (B, N, H, D) and the weights.
        ``scaling`` and ``dropout`` are what HF's forward passes; the variant reads the same from the module."""
        masks = self.hfx_forward_masks(kwargs)
        if isinstance(attention_mask, Tensor):
            # a patched model's mask function returns None; a tensor here is one the model built on its own, which
            # the variant's masks would silently replace
            raise RuntimeError(
                f"{type(self).__name__} received a dense attention_mask of shape {tuple(attention_mask.shape)} that "
                "hf_flexattn would ignore; this model builds a mask outside transformers' mask interface, which the "
                f"{self.hfx_family} family does not support"
            )
        self._check_call_agrees(scaling, dropout)
        masks.attention_calls += 1
        out, weights = self.hfx_attention(kwargs.get("hfx_hidden_states"), query, key, value, masks, attention_mask)
        return out.transpose(1, 2), weights

    def _check_call_agrees(self, scaling, dropout) -> None:
        """The variant reads the scale and dropout rate from the module (the family says where); HF's forward passes
        its own. Should a model's module keep them elsewhere, say so rather than compute another function."""
        family = self.hfx_variant.family
        if scaling is not None and scaling != self.scaling:
            raise RuntimeError(
                f"{type(self).__name__} passes scaling={scaling} to its attention function but has "
                f"scaling={self.scaling}; the {family.name} family cannot patch it"
            )
        if self.training and dropout != family.dropout_p(self):
            raise RuntimeError(
                f"{type(self).__name__} passes dropout={dropout} to its attention function, but the {family.name} "
                f"family reads {family.dropout_p(self)} from it; the family cannot patch it"
            )


class InterfaceFamily(Family):
    """A family whose attention modules call transformers' attention function. Subclasses set ``name``, ``tokens``
    and :meth:`attention_modules` (and ``projections`` where the module names them otherwise)."""

    attention_mixin = FlexInterfaceAttentionMixin
    # the base model checks, after each forward, that its attention modules reached the attention function
    # (a module that computed its own attention would silently be the unpatched model)
    attention_through_interface = True
    required_attributes = ("scaling",)
    # the names of the module's query/key/value projections (variants that copy them: Longformer's global ones)
    projections: ClassVar[tuple[str, str, str]] = ("q_proj", "k_proj", "v_proj")

    @property
    def expected_design(self) -> str:
        q, k, v = self.projections
        return f"an attention module with {q}/{k}/{v} that calls transformers' {INTERFACE_NAME}"

    def projection_names(self, module: nn.Module) -> tuple[str, str, str] | None:
        """The names of ``module``'s query/key/value projections (None: it has none the family knows)."""
        return self.projections

    def check_attention_module(self, module: nn.Module, layer_idx: int) -> None:
        super().check_attention_module(module, layer_idx)
        names = self.projection_names(module) or self.projections
        missing = [name for name in names if not isinstance(getattr(module, name, None), nn.Linear)]
        if missing:
            raise ValueError(
                f"layer {layer_idx}: {type(module).__name__} lacks {missing}; the {self.name} family expects "
                f"{self.expected_design}"
            )

    def qkv_projections(self, module: nn.Module) -> tuple[nn.Module, nn.Module, nn.Module]:
        return tuple(getattr(module, name) for name in self.projection_names(module))

    def dropout_p(self, module: nn.Module) -> float:
        """The attention-probability dropout HF's module passes to its attention function in training."""
        for name in ("attention_dropout", "dropout"):
            value = getattr(module, name, None)
            if isinstance(value, float):
                return value
            if isinstance(value, nn.Dropout):
                return value.p
        raise ValueError(f"{type(module).__name__} has no attention dropout rate the {self.name} family can read")

    def head_dim(self, module: nn.Module) -> int:
        head_dim = getattr(module, "head_dim", None)
        return head_dim if head_dim is not None else module.attention_head_size
