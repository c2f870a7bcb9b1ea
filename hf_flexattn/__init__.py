"""hf_flexattn: FlexAttention variants for pretrained Hugging Face encoders (BERT, DistilBERT, ALBERT, ViT, DINOv2,
BEiT, Swin, Swin v2 families)."""

__version__ = "0.2.0"

from . import ops
from .chunking import late_chunking
from .factory import supported
from .hf_integration import register as _register_with_transformers
from .long_context import extend_position_embeddings
from .patching import (
    from_pretrained,
    is_patched,
    patch,
    patch_albert,
    patch_beit,
    patch_bert,
    patch_dinov2,
    patch_distilbert,
    patch_general_text,
    patch_general_vision,
    patch_swin,
    patch_swinv2,
    patch_vit,
    unpatch,
)
from .plotting import plot_mask
from .variants import (
    FullOptions,
    LinformerOptions,
    LongformerOptions,
    NeighborhoodOptions,
    PerformerOptions,
    SwinOptions,
)

__all__ = [
    "FullOptions",
    "LinformerOptions",
    "LongformerOptions",
    "NeighborhoodOptions",
    "PerformerOptions",
    "SwinOptions",
    "extend_position_embeddings",
    "from_pretrained",
    "is_patched",
    "late_chunking",
    "ops",
    "patch",
    "patch_albert",
    "patch_beit",
    "patch_bert",
    "patch_dinov2",
    "patch_distilbert",
    "patch_general_text",
    "patch_general_vision",
    "patch_swin",
    "patch_swinv2",
    "patch_vit",
    "plot_mask",
    "supported",
    "unpatch",
]

_register_with_transformers()
