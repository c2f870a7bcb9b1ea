"""Which variant patches which family follows from the family's capabilities and the variant's requirements
(variants/base.py): the table below is the README's "Supported models and variants", and a mismatch is refused at
patch time naming what the variant needs."""

import inspect

import pytest
import torch
from family_checks import family_model
from transformers import ViTModel

import hf_flexattn as hfx
from hf_flexattn import families, variants
from hf_flexattn.families import FAMILIES
from hf_flexattn.variants import Variant, VariantOptions

from helpers import tiny_vit_config

TEXT = ["full", "longformer", "neighborhood", "linformer", "performer"]
IMAGES = ["full", "neighborhood", "swin", "linformer", "performer"]
BLOCKS = ["full", "neighborhood", "swin"]

SUPPORTED = {
    "bert": TEXT,
    "distilbert": TEXT,
    "albert": TEXT,
    "general_text": TEXT,
    "modernbert": ["full", "longformer", "neighborhood"],
    "longformer": ["longformer"],
    "vit": IMAGES,
    "dinov2": IMAGES,
    "beit": IMAGES,
    "general_vision": IMAGES,
    "clip_vision": ["full", "neighborhood", "swin"],
    "swin": BLOCKS,
    "swinv2": BLOCKS,
    "dinat": ["neighborhood"],
}


def test_each_family_gets_the_variants_its_capabilities_allow():
    assert {name: family.variants() for name, family in FAMILIES.items()} == SUPPORTED


@pytest.mark.parametrize(
    "family,variant,reason",
    [
        ("vit", "longformer", "it attends a 1D token sequence; the family's modules attend prefix tokens then a patch"),
        ("bert", "swin", "it attends prefix tokens then a patch grid; the family's modules attend a 1D token sequence"),
        ("swin", "linformer", "the family's modules attend each block's own stage feature map"),
        ("longformer", "full", "the model's global rows use its own global projections"),
        ("modernbert", "performer", "it adds parameters to the attention modules, which is not verified"),
    ],
)
def test_a_mismatch_says_what_the_variant_needs(family, variant, reason):
    assert reason in FAMILIES[family].unsupported(variant)


def test_patch_refuses_a_mismatch_naming_variant_family_and_reason():
    model = family_model(ViTModel, tiny_vit_config())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError) as raised:
        hfx.patch(model, "longformer", window=4)
    message = str(raised.value)
    assert "variant='longformer' does not support the vit family" in message
    assert "it attends a 1D token sequence" in message
    assert "variants for vit: full, neighborhood, swin, linformer, performer" in message
    assert not hfx.is_patched(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_variants_name_no_family_and_families_define_no_variant():
    """A variant says what it requires, not which families it serves; a family's own strategies (Swin's blocks,
    ModernBERT's full, HF Longformer's checkpoint variant, DiNAT's neighborhood) are variants under variants/."""
    for cls in {*variants.VARIANTS.values(), *(c for f in FAMILIES.values() for c in f.variant_overrides.values())}:
        assert not hasattr(cls, "families"), cls
        assert cls.__module__.startswith("hf_flexattn.variants."), cls
    for module in vars(families).values():
        if inspect.ismodule(module) and module.__name__.startswith("hf_flexattn.families."):
            defined = [c for c in vars(module).values() if inspect.isclass(c) and c.__module__ == module.__name__]
            assert not [c for c in defined if issubclass(c, (Variant, VariantOptions))], module.__name__
