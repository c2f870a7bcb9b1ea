"""CLIP and SigLIP vision towers: ``clip_vision_model`` (``CLIPVisionModel``, ``CLIPVisionModelWithProjection``) and
``siglip_vision_model`` (``SiglipVisionModel``), on the general path (families/interface.py).

Layers: ``base.encoder.layers[i].self_attn`` (q_proj/k_proj/v_proj/out_proj, the scale kept as ``scale``); tokens:
CLIP's [CLS] then the patch grid, SigLIP the patch grid alone (the grid read from ``pixel_values`` at forward time,
so ``interpolate_pos_encoding=True`` works). SigLIP's attention-pooling head
is ``nn.MultiheadAttention`` and stays as it is.

A full ``CLIPModel`` / ``SiglipModel`` holds its vision tower as a model of its own (``model.vision_model``, with
its own config): that tower is what is patched, ``hf_flexattn.patch(model.vision_model, ...)``; the text tower
(causal for CLIP) keeps its attention. Patching the whole model is refused with that advice.
"""

from __future__ import annotations

from torch import nn

from .interface import FlexInterfaceAttentionMixin, InterfaceFamily
from .tokens import PatchGridTokens

# tokens in front of the patch grid
_PREFIX_TOKENS = {"clip_vision_model": 1, "siglip_vision_model": 0}
# full models whose vision tower is patched on its own
_TOWER_OF = {"clip": "clip_vision_model", "siglip": "siglip_vision_model"}


class FlexVisionTowerAttentionMixin(FlexInterfaceAttentionMixin):
    """HF's CLIP/SigLIP attention (forward unchanged) with its attention computed by an hf_flexattn variant.

    SigLIP's forward does not pass its keyword arguments on to the attention function, so the forward's masks and
    hidden states are kept on the module for the duration of the call (a recomputing gradient checkpoint calls
    forward again, and sets them again)."""

    @property
    def scaling(self) -> float:
        return self.scale  # what HF's forward passes as ``scaling``

    def forward(self, hidden_states, *args, **kwargs):
        self.__dict__["hfx_call"] = {"hfx_masks": kwargs.get("hfx_masks"), "hfx_hidden_states": hidden_states}
        try:
            return super().forward(hidden_states, *args, **kwargs)
        finally:
            self.__dict__.pop("hfx_call", None)

    def hfx_attention_function(self, query, key, value, attention_mask, scaling, dropout, kwargs: dict):
        kwargs = {**self.__dict__.get("hfx_call", {}), **kwargs}
        return super().hfx_attention_function(query, key, value, attention_mask, scaling, dropout, kwargs)


class ClipVisionFamily(InterfaceFamily):
    name = "clip_vision"
    added_parameters = False  # Linformer's and Performer's parameters not verified on this family
    # a full CLIP/SigLIP model never reaches the geometry: check_model refuses it first
    tokens = PatchGridTokens(prefix_tokens=lambda config: _PREFIX_TOKENS[config.model_type])
    attention_mixin = FlexVisionTowerAttentionMixin
    required_attributes = ("scale", "head_dim")
    native_refusal = (
        "the vision towers build no attention mask through transformers' mask interface, which "
        "attn_implementation='hf_flexattn_*' needs to reach its variant"
    )

    def check_model(self, model: nn.Module) -> None:
        model_type = model.config.model_type
        if model_type in _TOWER_OF:
            raise ValueError(
                f"model: model_type={model_type!r} is a full {type(model).__name__} (text and vision towers); "
                f"hf_flexattn patches its vision tower, a {_TOWER_OF[model_type]} model of its own: call "
                "hf_flexattn.patch(model.vision_model, variant, ...)"
            )

    def attention_modules(self, base: nn.Module) -> list[nn.Module]:
        return [layer.self_attn for layer in base.encoder.layers]
