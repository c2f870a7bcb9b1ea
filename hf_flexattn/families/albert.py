"""ALBERT family: ``AlbertModel`` and every ``AlbertFor*`` head (general path, families/interface.py).

ALBERT shares weights across layers: ``config.num_hidden_layers`` layers run ``config.num_hidden_groups`` groups of
``config.inner_group_num`` layers each (``base.encoder.albert_layer_groups[g].albert_layers[j].attention``), so one
attention module computes several layers. Each shared module is patched once; per-layer options (a per-layer
``window`` list) still mean one value per *computed* layer: the encoder's loop (``AlbertTransformer`` →
``FlexAlbertTransformer``, a helper module) passes each call its layer, ``i · inner_group_num + j``.
"""

from __future__ import annotations

from typing import ClassVar

from torch import nn
from transformers.modeling_outputs import BaseModelOutput

from .base import PatchedHelper
from .interface import FlexInterfaceAttentionMixin, InterfaceFamily
from .tokens import TextTokens


class FlexAlbertAttentionMixin(FlexInterfaceAttentionMixin):
    """HF's ALBERT attention (shared by several layers), forward unchanged, computed by an hf_flexattn variant."""

    def hfx_attention_function(self, query, key, value, attention_mask, scaling, dropout, kwargs: dict):
        offset = kwargs.get("hfx_layer_offset")
        if offset is None:
            raise RuntimeError(
                f"{type(self).__name__} was called without its layer offset; call the patched model (or its base "
                "model), whose encoder loop passes it"
            )
        # one module computes several layers: the variant reads this call's layer (j: the module's place in its group)
        self.hfx_layer_idx = offset + self.hfx_block_idx
        return super().hfx_attention_function(query, key, value, attention_mask, scaling, dropout, kwargs)

    def extra_repr(self) -> str:
        return self.hfx_variant.extra_repr() + ", shared by several layers"


class FlexAlbertTransformerMixin(PatchedHelper):
    """HF's ``AlbertTransformer`` loop, which also tells each call its first layer index (``hfx_layer_offset``)."""

    def forward(self, hidden_states, attention_mask=None, **kwargs):
        hidden_states = self.embedding_hidden_mapping_in(hidden_states)
        inner = self.config.inner_group_num
        for i in range(self.config.num_hidden_layers):
            # Index of the hidden group (HF's formula)
            group_idx = int(i / (self.config.num_hidden_layers / self.config.num_hidden_groups))
            hidden_states = self.albert_layer_groups[group_idx](
                hidden_states, attention_mask, hfx_layer_offset=i * inner, **kwargs
            )
        return BaseModelOutput(last_hidden_state=hidden_states)


class AlbertFamily(InterfaceFamily):
    name = "albert"
    tokens = TextTokens(position_offset=False)  # positions count from 0 (no padding offset)
    projections = ("query", "key", "value")
    attention_mixin = FlexAlbertAttentionMixin
    helper_mixins: ClassVar[dict[str, type]] = {"AlbertTransformer": FlexAlbertTransformerMixin}

    def attention_modules(self, base: nn.Module) -> list[nn.Module]:
        return [layer.attention for group in base.encoder.albert_layer_groups for layer in group.albert_layers]

    def block_index(self, base: nn.Module, layer_idx: int) -> int:
        """The module's place in its group (j), from which each call's layer is counted."""
        return layer_idx % base.config.inner_group_num

    def num_layers(self, config) -> int:
        return config.num_hidden_layers * config.inner_group_num

    def layer_count(self, base: nn.Module, modules: list[nn.Module]) -> int:
        return self.num_layers(base.config)

    def helper_modules(self, base: nn.Module) -> list[nn.Module]:
        return [base.encoder]

    def check_model(self, model: nn.Module) -> None:
        super().check_model(model)
        encoder = self.base_model(model).encoder
        if type(encoder).__name__ != "AlbertTransformer":
            raise ValueError(
                f"model: the albert family patches AlbertTransformer's layer loop, found {type(encoder).__name__}"
            )
