"""One file per model family: which HF module is patched, where the layers are, the token geometry.

``MODEL_TYPE_TO_FAMILY`` is the one table from ``config.model_type`` to the family that patches it (as Liger-Kernel's
``MODEL_TYPE_TO_APPLY_LIGER_FN``): a model type is supported when, and only when, it is listed here.
"""

from .albert import AlbertFamily
from .base import FAMILIES, MODEL_TYPE_TO_FAMILY, Family
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

FAMILIES.update(
    (f.name, f)
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
)

MODEL_TYPE_TO_FAMILY.update(
    {
        # BertSelfAttention's design (query/key/value)
        "bert": FAMILIES["bert"],
        "roberta": FAMILIES["bert"],
        "xlm-roberta": FAMILIES["bert"],
        "camembert": FAMILIES["bert"],
        "electra": FAMILIES["bert"],
        "distilbert": FAMILIES["distilbert"],
        "albert": FAMILIES["albert"],
        # measured exact through the general path (tests/test_general_path.py)
        "data2vec-text": FAMILIES["general_text"],
        "ernie": FAMILIES["general_text"],
        "esm": FAMILIES["general_text"],
        "mobilebert": FAMILIES["general_text"],
        "nomic_bert": FAMILIES["general_text"],
        "roberta-prelayernorm": FAMILIES["general_text"],
        "splinter": FAMILIES["general_text"],
        "xlm-roberta-xl": FAMILIES["general_text"],
        # long-context text encoders with a design of their own
        "longformer": FAMILIES["longformer"],
        "modernbert": FAMILIES["modernbert"],
        # ViTAttention's design (q_proj/k_proj/v_proj/o_proj), prefix tokens + a patch grid
        "vit": FAMILIES["vit"],
        "deit": FAMILIES["vit"],
        "dinov2": FAMILIES["dinov2"],
        "dinov2_with_registers": FAMILIES["dinov2"],
        "beit": FAMILIES["beit"],
        "vit_msn": FAMILIES["general_vision"],
        "ijepa": FAMILIES["general_vision"],
        # CLIP/SigLIP vision towers (a full CLIP/SigLIP model is refused with the advice to patch model.vision_model)
        "clip_vision_model": FAMILIES["clip_vision"],
        "siglip_vision_model": FAMILIES["clip_vision"],
        "clip": FAMILIES["clip_vision"],
        "siglip": FAMILIES["clip_vision"],
        # hierarchical: the patched module is the block, which owns the windowing
        "swin": FAMILIES["swin"],
        "swinv2": FAMILIES["swinv2"],
        "dinat": FAMILIES["dinat"],
    }
)

__all__ = ["FAMILIES", "MODEL_TYPE_TO_FAMILY", "Family", "family_for"]


def family_for(config) -> Family:
    """The family of ``config.model_type``; ``ValueError`` naming the supported types otherwise."""
    model_type = getattr(config, "model_type", None)
    family = MODEL_TYPE_TO_FAMILY.get(model_type)
    if family is None:
        raise ValueError(
            f"model: config.model_type={model_type!r} is not supported; supported model types: "
            f"{', '.join(sorted(MODEL_TYPE_TO_FAMILY))}"
        )
    return family
