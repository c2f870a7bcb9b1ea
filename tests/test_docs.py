"""The contributing pages' code runs as written: the variant that docs/adding_a_variant.md builds from a mask and
an options class patches a model and computes exactly its dense rule; the family that docs/adding_a_family.md
writes patches a model of its shape and equals it under `full`."""

import copy
import re
from pathlib import Path

import torch
from family_checks import dinov2_config
from transformers import BertConfig, BertModel, Dinov2Model

import hf_flexattn as hfx
from hf_flexattn import variants
from hf_flexattn.families import FAMILIES, MODEL_TYPE_TO_FAMILY

from helpers import dense_bert_layer, no_dropout, tol

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _run_blocks(page: str) -> dict:
    namespace: dict = {}
    for block in re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), re.S):
        # the pages' relative imports are those of a module inside the package it describes
        package = "hf_flexattn.variants" if "variant" in page else "hf_flexattn.families"
        source = re.sub(r"from \.\.(\w*)", lambda m: "from " + ".".join(filter(None, ["hf_flexattn", m[1]])), block)
        source = re.sub(r"from \.(\w+)", lambda m: f"from {package}.{m[1]}", source)
        exec(compile(source, str(DOCS / page), "exec"), namespace)
    return namespace


def test_adding_a_variant_page_builds_a_working_variant(monkeypatch):
    page = _run_blocks("adding_a_variant.md")
    monkeypatch.setitem(variants.VARIANTS, "dilated_band", page["DilatedBandVariant"])
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=120, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64
    )
    model = no_dropout(BertModel(config)).eval()
    hfx.patch(model, "dilated_band", half_width=3, dilation=2)
    ids = torch.randint(5, 120, (2, 40))
    offset = torch.arange(40)[:, None] - torch.arange(40)[None, :]
    rule = (offset.abs() <= 6) & (offset % 2 == 0)
    with torch.no_grad():
        got = model(input_ids=ids).last_hidden_state
        want = dense_bert_layer(model, ids, rule)
    assert (got - want).abs().max() <= tol(1e-5)


def test_adding_a_family_page_builds_a_working_family(monkeypatch):
    page = _run_blocks("adding_a_family.md")
    family = page["MyVisionFamily"]()
    monkeypatch.setitem(FAMILIES, family.name, family)
    monkeypatch.setitem(MODEL_TYPE_TO_FAMILY, "dinov2", family)  # DINOv2 has the page's shape: encoder.layer, CLS
    torch.manual_seed(0)
    original = no_dropout(Dinov2Model(dinov2_config())).eval()
    patched = copy.deepcopy(original)
    assert family.variants() == ["full", "neighborhood", "swin", "linformer", "performer"]  # from its capabilities
    hfx.patch(patched, "full")
    assert hfx.patching.patch_state(patched).family is family
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (
            original(pixel_values=pixels).last_hidden_state - patched(pixel_values=pixels).last_hidden_state
        ).abs().max() <= tol(1e-5)
