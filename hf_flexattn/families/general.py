"""General-path families: encoders measured to compute exactly the same function through families/interface.py
(`full` == unpatched, padded batches and gradients; tests/test_general_path.py) without a file of their own.

The attention modules are found the way transformers finds them for ``output_attentions``: the class the model
records attentions from (``_can_record_outputs["attentions"]``). Text: a 1D sequence; images: a few prefix tokens,
then the patch grid. Model types not listed in ``MODEL_TYPE_TO_FAMILY`` were measured and do not fit as they are
(docs/models.md: "General path").
"""

from __future__ import annotations

from torch import nn

from .. import compat
from .interface import InterfaceFamily
from .tokens import PatchGridTokens, TextTokens

# the names attention modules give their query/key/value projections
PROJECTION_NAMES = (("query", "key", "value"), ("q_proj", "k_proj", "v_proj"), ("q_lin", "k_lin", "v_lin"))


def recorded_attention_class(base: nn.Module) -> type | None:
    """The attention class transformers records ``output_attentions`` from, for this model."""
    recorded = compat.recorded_outputs(type(base)).get("attentions")
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


class GeneralTextFamily(GeneralFamily):
    name = "general_text"
    tokens = TextTokens()


# tokens in front of the patch grid
_PREFIX_TOKENS = {"vit_msn": 1, "ijepa": 0}


class GeneralVisionFamily(GeneralFamily):
    name = "general_vision"
    tokens = PatchGridTokens(prefix_tokens=lambda config: _PREFIX_TOKENS[config.model_type])
