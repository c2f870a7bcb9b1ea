"""hf_flexattn: FlexAttention variants for pretrained Hugging Face BERT, ViT and Swin models."""

from . import ops
from .hf_integration import register as _register_with_transformers
from .long_context import extend_position_embeddings
from .patching import from_pretrained, patch, patch_bert, patch_swin, patch_vit, supported, unpatch
from .plotting import plot_mask

__all__ = [
    "patch",
    "unpatch",
    "from_pretrained",
    "supported",
    "extend_position_embeddings",
    "patch_bert",
    "patch_vit",
    "patch_swin",
    "plot_mask",
    "ops",
]
__version__ = "0.1.0"

_register_with_transformers()
