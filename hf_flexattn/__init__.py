"""hf_flexattn: FlexAttention variants for pretrained Hugging Face BERT, ViT and Swin models."""

from .long_context import extend_position_embeddings
from .patching import from_pretrained, patch, supported, unpatch

__all__ = ["patch", "unpatch", "from_pretrained", "supported", "extend_position_embeddings"]
__version__ = "0.1.0"
