"""One file per model family: which HF module is patched, where the layers are, the token geometry."""

from .albert import AlbertFamily
from .base import Family
from .beit import BeitFamily
from .bert import BertFamily
from .clip import ClipVisionFamily
from .dinat import DinatFamily
from .dinov2 import Dinov2Family
from .distilbert import DistilBertFamily
from .general import GeneralTextFamily, GeneralVisionFamily
from .longformer import LongformerFamily
from .modernbert import ModernBertFamily
from .swin import SwinFamily
from .swinv2 import Swinv2Family
from .vit import ViTFamily

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        BertFamily(),
        ViTFamily(),
        SwinFamily(),
        DistilBertFamily(),
        AlbertFamily(),
        Dinov2Family(),
        BeitFamily(),
        Swinv2Family(),
        GeneralTextFamily(),
        GeneralVisionFamily(),
        LongformerFamily(),
        ModernBertFamily(),
        ClipVisionFamily(),
        DinatFamily(),
    )
}

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
