"""A patched model's checkpoint is the stock one: ``save_pretrained`` writes the keys the unpatched model writes (the
hub's layout, through transformers' conversion mapping where the model type has one), plus the variant's own extra
weights, listed below; the file loads into the unpatched class with the same weights, and ``hfx.from_pretrained``
gives the patched model back, extra weights included. For every model type of ``MODEL_TYPE_TO_FAMILY`` and every
variant of its family."""

import copy
import os

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import MODEL_TYPES, base_class, tiny_model, variant_cases

import hf_flexattn as hfx
from hf_flexattn.families import MODEL_TYPE_TO_FAMILY
from hf_flexattn.patching import patch_state

# what each variant adds to every patched attention module (nothing else may appear in the file)
EXTRA_WEIGHTS = {
    "linformer": ("linformer.E", "linformer.F"),
    "performer": ("performer.features",),
}
# (``longformer`` with ``global_projections=True``: copies of the layer's query/key/value, bias where they have one)
GLOBAL_PROJECTION_WEIGHTS = tuple(f"{p}_global.{w}" for p in ("query", "key", "value") for w in ("weight", "bias"))


def _cases():
    """Every variant of every family (on the family's first model type); every other model type (transformers'
    conversion mappings are per model type) with the variant that adds most: global projections, else Linformer."""
    seen = set()
    for model_type in MODEL_TYPES:
        family = MODEL_TYPE_TO_FAMILY[model_type]
        cases = variant_cases(model_type)
        if "longformer" in family.variants() and family.name not in ("longformer", "modernbert"):
            cases.append(("longformer", {"window": 4, "global_projections": True}))
        if family.name in seen:
            cases = cases[-1:]
        seen.add(family.name)
        for variant, options in cases:
            name = variant + ("-global_projections" if options.get("global_projections") else "")
            yield pytest.param(model_type, variant, options, id=f"{model_type}-{name}")


def _extra_suffixes(variant, options):
    if options.get("global_projections"):
        return GLOBAL_PROJECTION_WEIGHTS
    return EXTRA_WEIGHTS.get(variant, ())


_stock = {}


def _stock_checkpoint(model_type, tmp_path_factory):
    """The unpatched model and what its ``save_pretrained`` writes (once per model type)."""
    if model_type not in _stock:
        original = tiny_model(model_type)
        path = tmp_path_factory.mktemp(f"stock-{model_type}")
        original.save_pretrained(path)
        _stock[model_type] = original, load_file(os.path.join(path, "model.safetensors"))
    return _stock[model_type]


# a list, not the generator: a second collection in one process (mutmut's fork server) must see every case too
@pytest.mark.parametrize("model_type,variant,options", list(_cases()))
def test_save_pretrained_writes_the_stock_layout(model_type, variant, options, tmp_path, tmp_path_factory):
    original, stock = _stock_checkpoint(model_type, tmp_path_factory)
    patched = hfx.patch(copy.deepcopy(original), variant, **options)
    patched.save_pretrained(tmp_path)
    saved = load_file(os.path.join(tmp_path, "model.safetensors"))

    extra = sorted(set(saved) - set(stock))
    assert set(stock) <= set(saved), f"stock keys not written: {sorted(set(stock) - set(saved))[:4]}"
    suffixes = _extra_suffixes(variant, options)
    added = set(patched.state_dict()) - set(original.state_dict())
    assert all(k.endswith(suffixes) for k in extra) if suffixes else not extra, extra[:4]
    assert len(extra) == len(added) and (len(added) > 0) == bool(suffixes), (extra, added)
    for key, tensor in stock.items():
        assert torch.equal(saved[key], tensor), key

    # the unpatched class loads it: every stock weight, nothing missing, only the listed extras left over
    cls = type(original)
    loaded, info = cls.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["mismatched_keys"], info
    assert len(info["unexpected_keys"]) == len(extra), info["unexpected_keys"]
    want = original.state_dict()
    for key, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, want[key]), key

    # and hf_flexattn loads it back patched the same way, extra weights included
    again = hfx.from_pretrained(cls, tmp_path)
    assert patch_state(again).variant.name == variant
    got, want = again.state_dict(), patched.state_dict()
    assert got.keys() == want.keys()
    for key in want:
        assert torch.equal(got[key], want[key]), key


def test_checkpoint_of_a_head_loads_into_the_base_model(tmp_path):
    """ViT (whose keys transformers renames): a patched head's extra weights are found from its base model."""
    from transformers import ViTForImageClassification

    head = hfx.patch(tiny_model("vit", ViTForImageClassification), "linformer", proj_len=8)
    head.save_pretrained(tmp_path)
    saved = load_file(os.path.join(tmp_path, "model.safetensors"))
    assert "vit.encoder.layer.0.attention.attention.key.weight" in saved  # the hub's layout
    assert "vit.encoder.layer.0.attention.linformer.E" in saved
    base = hfx.from_pretrained(base_class("vit"), tmp_path)
    got, want = base.state_dict(), head.vit.state_dict()
    assert set(want) <= set(got)  # the base model has a pooler of its own
    for key in want:
        assert torch.equal(got[key], want[key]), key


def test_a_checkpoint_in_the_modules_own_names_still_loads(tmp_path):
    """Files written before the layout fix (a patched ViT saved its modules' own names, ``layers.0.attention.k_proj``,
    and its extra weights under them) load back patched, extra weights included."""
    from safetensors.torch import save_file

    patched = hfx.patch(tiny_model("vit"), "linformer", proj_len=8)
    patched.save_pretrained(tmp_path)
    own_names = {k: v.contiguous() for k, v in patched.state_dict().items()}
    assert "layers.0.attention.linformer.E" in own_names  # the modules' names differ from the hub's here
    save_file(own_names, os.path.join(tmp_path, "model.safetensors"), metadata={"format": "pt"})
    again = hfx.from_pretrained(base_class("vit"), tmp_path)
    got = again.state_dict()
    assert got.keys() == own_names.keys()
    for key, tensor in own_names.items():
        assert torch.equal(got[key], tensor), key
