"""The docs/ pages' code runs as written, and the pages hold together.

* the variant that docs/adding_a_variant.md builds from a mask and an options class patches a model and computes
  exactly its dense rule; the family that docs/adding_a_family.md writes patches a model of its shape and equals it
  under `full`;
* the examples of docs/ops.md, docs/integrations.md and docs/long_context.md compute what their text says (the
  sentence-transformers one: tests/test_sentence_transformers.py);
* every ```python block of the README and of docs/ is run by a test named in ``EXAMPLES``;
* every relative link of the README, the top-level pages and docs/ reaches a file (and a heading, for an anchor),
  every picture they show exists, and every docs/ page can be reached from the README.
"""

import copy
import re

import pytest
import torch
from doc_pages import DOCS, README, ROOT, anchors, headings_with_python, pages, python_blocks, relative_links
from family_checks import dinov2_config
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoTokenizer,
    BertConfig,
    BertModel,
    Dinov2Model,
    LongformerForMaskedLM,
    RobertaForMaskedLM,
)

import hf_flexattn as hfx
from hf_flexattn import variants
from hf_flexattn.families import FAMILIES, MODEL_TYPE_TO_FAMILY

from helpers import dense_bert_layer, no_dropout, padded_batch, tiny_bert_config, tiny_roberta_config, tol

# every page section with ```python blocks -> the test that runs them ("*": every block of the page)
EXAMPLES = {
    ("README.md", "Quick start"): "test_readme.py::test_quick_start_runs",
    ("README.md", "Options"): "test_readme.py::test_options_example_patches_the_same_by_keywords_or_by_the_object",
    ("ops.md", "Using the ops directly"): "test_docs.py::test_ops_example_runs",
    (
        "integrations.md",
        "Without `patch`: transformers' own `attn_implementation`",
    ): "test_docs.py::test_native_attn_implementation_example_runs",
    (
        "long_context.md",
        "Long documents with sentence-transformers",
    ): "test_sentence_transformers.py::test_long_documents_example_runs_as_written",
    (
        "long_context.md",
        "Back to plain transformers: BERT/RoBERTa → Longformer",
    ): "test_docs.py::test_longformer_export_example_runs",
    ("adding_a_variant.md", "*"): "test_docs.py::test_adding_a_variant_page_builds_a_working_variant",
    ("adding_a_family.md", "*"): "test_docs.py::test_adding_a_family_page_builds_a_working_family",
}


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
    monkeypatch.setattr(variants.FullVariant, "families", (*variants.FullVariant.families, family.name))
    hfx.patch(patched, "full")
    assert hfx.patching.patch_state(patched).family is family
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (
            original(pixel_values=pixels).last_hidden_state - patched(pixel_values=pixels).last_hidden_state
        ).abs().max() <= tol(1e-5)


def test_ops_example_runs(capsys):
    (block,) = python_blocks(DOCS / "ops.md", "Using the ops directly")
    namespace = {}
    exec(compile(block, str(DOCS / "ops.md"), "exec"), namespace)
    assert namespace["q"].grad is not None and namespace["q"].grad.abs().sum() > 0
    assert "torch.Size([1, 4, 1024, 64]) torch.Size([1, 4, 32, 32, 64])" in capsys.readouterr().out


def test_native_attn_implementation_example_runs(tmp_path):
    """The example on a saved tiny BERT: loaded with `hf_flexattn_longformer` it computes what `patch` computes with
    the same options (past the window), and switched to `hf_flexattn_full` what the unpatched model computes."""
    page = DOCS / "integrations.md"
    (block,) = python_blocks(page, "Without `patch`: transformers' own `attn_implementation`")
    load, switch = block.split("model.set_attn_implementation")
    torch.manual_seed(0)
    BertModel(tiny_bert_config(attn_implementation=None)).save_pretrained(tmp_path)
    namespace = {"AutoConfig": AutoConfig, "AutoModel": AutoModel, "path": str(tmp_path)}
    ids, mask = padded_batch(batch=2, seq_len=400, lengths=[400, 310])
    unpatched = no_dropout(BertModel.from_pretrained(tmp_path)).eval()
    patched = hfx.patch(copy.deepcopy(unpatched), "longformer", window=256, global_tokens=[0])
    with torch.no_grad():
        exec(compile(load, str(page), "exec"), namespace)
        model = namespace["model"].eval()
        native = model(input_ids=ids, attention_mask=mask).last_hidden_state
        want = patched(input_ids=ids, attention_mask=mask).last_hidden_state
        full = unpatched(input_ids=ids, attention_mask=mask).last_hidden_state
        real = mask.bool()
        assert (native - want)[real].abs().max() <= tol(1e-5)
        assert (native - full)[real].abs().max() > 1e-3  # the window matters at this length
        exec(compile("model.set_attn_implementation" + switch, str(page), "exec"), namespace)
        assert model.config._attn_implementation == "hf_flexattn_full"
        switched = model(input_ids=ids, attention_mask=mask).last_hidden_state
        assert (switched - full)[real].abs().max() <= tol(1e-5)


def test_longformer_export_example_runs(tmp_path, monkeypatch, minilm_dir):
    """The example on a saved tiny RoBERTa for "roberta-base": the checkpoint it writes loads into plain
    transformers' LongformerForMaskedLM and gives the patched model's outputs, past the window."""
    page = DOCS / "long_context.md"
    (block,) = python_blocks(page, "Back to plain transformers: BERT/RoBERTa → Longformer")
    assert '"roberta-base"' in block
    torch.manual_seed(0)
    RobertaForMaskedLM(tiny_roberta_config(attn_implementation=None)).save_pretrained(tmp_path / "roberta")
    monkeypatch.chdir(tmp_path)  # the example writes a folder
    namespace = {
        "AutoModelForMaskedLM": AutoModelForMaskedLM,
        "LongformerForMaskedLM": LongformerForMaskedLM,
        "hf_flexattn": hfx,
        "tokenizer": AutoTokenizer.from_pretrained(minilm_dir),
    }
    exec(compile(block.replace('"roberta-base"', repr(str(tmp_path / "roberta"))), str(page), "exec"), namespace)
    patched = namespace["model"].eval()
    native = LongformerForMaskedLM.from_pretrained(tmp_path / "my-longformer").eval()
    ids = torch.randint(5, 120, (1, 700), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got, want = native(input_ids=ids).logits, patched(input_ids=ids).logits
    assert (got - want).abs().max() <= tol(1e-4)
    assert (tmp_path / "my-longformer" / "tokenizer_config.json").exists()


def test_every_python_example_is_run_by_a_test():
    found = {}
    for page in pages():
        by_heading = headings_with_python(page)
        if (page.name, "*") in EXAMPLES and by_heading:
            found[(page.name, "*")] = sum(by_heading.values())
        else:
            found.update({(page.name, heading): count for heading, count in by_heading.items()})
    assert set(found) == set(EXAMPLES), "a page's ```python block has no test in EXAMPLES (or an entry no block)"
    for target in EXAMPLES.values():
        file, name = target.split("::")
        assert re.search(rf"^def {name}\(", (ROOT / "tests" / file).read_text(), re.M), target


@pytest.mark.parametrize("page", pages(), ids=lambda page: page.name)
def test_every_relative_link_resolves(page):
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        assert resolved.exists(), f"{page.name}: {target} does not exist"
        if anchor:
            assert resolved.suffix == ".md" and anchor in anchors(resolved), f"{page.name}: no heading for {target}"


def test_every_docs_page_is_reachable_from_the_readme():
    reached, todo = set(), [README.resolve()]
    while todo:
        page = todo.pop()
        if page in reached or page.suffix != ".md" or not page.exists():
            continue
        reached.add(page)
        todo += [(page.parent / target.partition("#")[0]).resolve() for target in relative_links(page)]
    assert {page.resolve() for page in DOCS.glob("*.md")} <= reached


def test_every_picture_the_pages_show_exists():
    pictures = [(page, t) for page in pages() for t in relative_links(page) if t.endswith((".png", ".svg"))]
    assert any("model_cards/figures/" in t for _, t in pictures)  # the mask pictures are among them
    for page, target in pictures:
        assert (page.parent / target).stat().st_size > 5000, (page.name, target)
