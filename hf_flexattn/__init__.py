"""hf_flexattn: FlexAttention variants for pretrained Hugging Face encoders (BERT, DistilBERT, ALBERT, ModernBERT,
HF Longformer, ViT, DINOv2, BEiT, CLIP/SigLIP vision, Swin, Swin v2, DiNAT families)."""

__version__ = "0.2.0"

from .compat import check_installed_versions

# before anything imports torch or transformers: an older transformers can fail inside its own import
check_installed_versions()

from . import ops
from .chunking import late_chunking
from .factory import supported
from .families.dinat import dinat_modeling
from .hf_integration import register as _register_with_transformers
from .long_context import extend_position_embeddings
from .longformer_export import save_as_longformer, to_longformer
from .patching import (
    from_pretrained,
    is_patched,
    load_dinat,
    patch,
    patch_albert,
    patch_beit,
    patch_bert,
    patch_clip_vision,
    patch_dinat,
    patch_dinov2,
    patch_distilbert,
    patch_general_text,
    patch_general_vision,
    patch_longformer,
    patch_modernbert,
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
    "dinat_modeling",
    "extend_position_embeddings",
    "from_pretrained",
    "is_patched",
    "late_chunking",
    "load_dinat",
    "ops",
    "patch",
    "patch_albert",
    "patch_beit",
    "patch_bert",
    "patch_clip_vision",
    "patch_dinat",
    "patch_dinov2",
    "patch_distilbert",
    "patch_general_text",
    "patch_general_vision",
    "patch_longformer",
    "patch_modernbert",
    "patch_swin",
    "patch_swinv2",
    "patch_vit",
    "plot_mask",
    "save_as_longformer",
    "supported",
    "to_longformer",
    "unpatch",
]

_register_with_transformers()
