"""One file per model family: which HF module is patched, where the layers are, the token geometry."""

from .base import Family
from .bert import BertFamily
from .swin import SwinFamily
from .vit import ViTFamily

FAMILIES: dict[str, Family] = {f.name: f for f in (BertFamily(), ViTFamily(), SwinFamily())}

__all__ = ["FAMILIES", "Family", "family_for"]


def family_for(config) -> Family:
    """The family of ``config.model_type``; ``ValueError`` naming the supported types otherwise."""
    model_type = getattr(config, "model_type", None)
    for family in FAMILIES.values():
        if model_type in family.model_types:
            return family
    supported = sorted(t for f in FAMILIES.values() for t in f.model_types)
    raise ValueError(
        f"model: config.model_type={model_type!r} is not supported; supported model types: {', '.join(supported)}"
    )
