"""The README's code runs as written (the quick start on the offline MiniLM checkpoint instead of the hub name), and
its tables of supported models and of options are the library's own (hf_flexattn.supported(), the one model-type
table, each variant's options dataclass): a family, model type, variant, option, default or help text added or
changed in the code and not in the README fails here."""

import copy

import pytest
import torch
from doc_pages import README, code_names, python_blocks, section, table
from transformers import BertModel

import hf_flexattn as hfx
from hf_flexattn.families import MODEL_TYPE_TO_FAMILY

from helpers import no_dropout, tiny_bert_config

pytestmark = pytest.mark.cpu_only  # the scripts and the README run on CPU here; their --device flags cover GPUs


def test_quick_start_runs(minilm_dir, capsys):
    (block,) = python_blocks(README, "Quick start")
    assert '"bert-base-uncased"' in block
    namespace = {}
    exec(compile(block.replace('"bert-base-uncased"', repr(minilm_dir)), str(README), "exec"), namespace)
    assert namespace["logits"].shape[1] == 4096
    printed = capsys.readouterr().out
    assert "FlexBertSelfAttention(" in printed and "variant=longformer, window=256, global_tokens=[0]" in printed


def test_options_example_patches_the_same_by_keywords_or_by_the_object():
    """Each line of the Options example on its own copy of a tiny BERT ("the same": same saved options, same
    layers, same outputs past the window)."""
    (block,) = python_blocks(README, "Options")
    lines = [line for line in block.splitlines() if line.strip()]
    assert len(lines) == 2
    torch.manual_seed(0)
    original = no_dropout(BertModel(tiny_bert_config())).eval()
    ids = torch.randint(5, 120, (1, 400))
    outputs, configs = [], []
    for line in lines:
        model = copy.deepcopy(original)
        exec(compile(line, str(README), "exec"), {"hf_flexattn": hfx, "model": model})
        configs.append(model.config.hf_flexattn)
        with torch.no_grad():
            outputs.append(model(input_ids=ids).last_hidden_state)
    assert configs[0] == configs[1] and configs[0]["options"]["window"] == 256
    assert torch.equal(outputs[0], outputs[1])
    with torch.no_grad():  # 400 tokens, window 256: the pattern is not the full one, so the outputs say something
        assert (outputs[0] - original(input_ids=ids).last_hidden_state).abs().max() > 1e-3


def _library_families():
    """{family: (its model types, the variants patch accepts on it)} from the library."""
    families = {}
    for model_type, family in MODEL_TYPE_TO_FAMILY.items():
        families.setdefault(family.name, (set(), set()))[0].add(model_type)
    for row in hfx.supported():
        for family in row["families"]:
            families[family][1].add(row["variant"])
    return families


def test_supported_models_table_is_the_librarys():
    header, rows = table(section(README, "Supported models and variants"), "family")
    variants = [name for cell in header[2:] for name in code_names(cell)]
    assert variants == [row["variant"] for row in hfx.supported()]
    in_readme = {}
    for cells in rows:
        (family,) = code_names(cells[0])
        model_types = {name for name in code_names(cells[1]) if "." not in name}  # not `model.vision_model`
        assert set(cells[2:]) <= {"✓", "—"}, cells
        in_readme[family] = (model_types, {v for v, cell in zip(variants, cells[2:]) if cell == "✓"})
    assert in_readme == _library_families()


def test_options_table_is_each_variants_dataclass():
    _, rows = table(section(README, "Options"), "variant")
    in_readme = {(variant, *code_names(option)): (default, text) for variant, option, default, text in rows}
    common = ("attention_dropout", "backend")  # every variant's, the same: one row each
    shared = {option: in_readme.pop(("every variant", option)) for option in common}
    in_library = {}
    for row in hfx.supported():
        for option, default in row["options"].items():
            entry = (f"`{default!r}`", row["help"][option])
            if option in common:
                assert entry == shared[option], row["variant"]
            else:
                in_library[(f"`{row['variant']}`", option)] = entry
    assert in_readme == in_library
