"""General-path families: encoders measured to compute exactly the same function through families/interface.py
(`full` == unpatched, padded batches and gradients; tests/test_general_path.py) without a file of their own.

The attention modules are found the way transformers finds them for ``output_attentions``: the class the model
records attentions from (``_can_record_outputs["attentions"]``). Text: BERT's 1D geometry; images: a few prefix
tokens, then the patch grid (ViT's geometry). Model types not listed here were measured and do not fit as they are
(README: "General path").
"""

from __future__ import annotations

from typing import ClassVar

from torch import nn

from .bert import BertFamily
from .interface import InterfaceFamily
from .vit import ViTFamily

# the names attention modules give their query/key/value projections
PROJECTION_NAMES = (("query", "key", "value"), ("q_proj", "k_proj", "v_proj"), ("q_lin", "k_lin", "v_lin"))


def recorded_attention_class(base: nn.Module) -> type | None:
    """The attention class transformers records ``output_attentions`` from, for this model."""
    recorded = (getattr(type(base), "_can_record_outputs", None) or {}).get("attentions")
    if isinstance(recorded, (list, tuple)):
        recorded = recorded[0] if recorded else None
    return getattr(recorded, "target_class", recorded)


class GeneralFamily(InterfaceFamily):
    """Attention modules found by their recorded class; projections found by their usual names."""

    def attention_modules(self, base: nn.Module) -> list[nn.Module]:
        attention_class = recorded_attention_class(base)
        if attention_class is None:
            raise ValueError(
                f"model: {type(base).__name__} records no attention class (_can_record_outputs['attentions']), "
                f"so the {self.name} family cannot find its attention modules"
            )
        return [m for m in base.modules() if isinstance(m, attention_class)]

    @property
    def expected_design(self) -> str:
        names = " or ".join("/".join(n) for n in PROJECTION_NAMES)
        return f"an attention module with {names} projections that calls transformers' ALL_ATTENTION_FUNCTIONS"

    def projection_names(self, module: nn.Module) -> tuple[str, str, str] | None:
        for names in PROJECTION_NAMES:
            if all(isinstance(getattr(module, n, None), nn.Linear) for n in names):
                return names
        return None


class GeneralTextFamily(GeneralFamily, BertFamily):
    name = "general_text"
    model_types = (
        "data2vec-text", "ernie", "esm", "mobilebert", "nomic_bert", "roberta-prelayernorm", "splinter",
        "xlm-roberta-xl",
    )  # fmt: skip


# tokens in front of the patch grid
_PREFIX_TOKENS = {"vit_msn": 1, "ijepa": 0}


class GeneralVisionFamily(GeneralFamily, ViTFamily):
    name = "general_vision"
    model_types: ClassVar[tuple[str, ...]] = tuple(_PREFIX_TOKENS)

    def num_prefix_tokens(self, config) -> int:
        return _PREFIX_TOKENS[config.model_type]
