"""hf_flexattn/compat.py: the import-time version gate, and every private touchpoint checked on the installed
torch, transformers and accelerate. A test here fails (never skips) when an upgrade removes or changes what a
touchpoint relies on; the fix goes into compat.py and the entry's ``checked_on``."""

import ast
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertModel, PretrainedConfig

import hf_flexattn
from hf_flexattn import compat
from hf_flexattn.families.base import PATCHED_IMPLEMENTATION

from helpers import no_dropout, tiny_bert_config

ROOT = Path(__file__).resolve().parents[1]


# --- the version gate ---------------------------------------------------------------------------------------------


def versions(**installed):
    return lambda distribution: installed.get(distribution)


@pytest.mark.parametrize(
    ("torch_version", "transformers_version", "problem"),
    [
        ("2.10.0", "5.25.0", "torch 2.10.0 is installed, hf_flexattn needs torch>=2.11"),
        ("2.7.1+cu126", "5.25.0", "torch 2.7.1+cu126 is installed, hf_flexattn needs torch>=2.11"),
        ("2.13.0+cpu", "5.20.1", "transformers 5.20.1 is installed, hf_flexattn needs transformers>=5.21"),
        ("2.13.0", None, "transformers is not installed (hf_flexattn needs transformers>=5.21)"),
    ],
)
def test_gate_names_the_installed_and_the_required_versions(torch_version, transformers_version, problem):
    with pytest.raises(ImportError, match=re.escape(problem)) as caught:
        compat.check_installed_versions(versions(torch=torch_version, transformers=transformers_version))
    assert "pip install 'torch>=2.11' 'transformers>=5.21'" in str(caught.value)


@pytest.mark.parametrize(
    ("torch_version", "transformers_version"),
    [("2.11.0", "5.21.0"), ("2.13.0+cpu", "5.25.0"), ("2.16.0.dev20270101+cpu", "5.26.0.dev0"), ("3.0", "5.21")],
)
def test_gate_lets_the_tested_range_and_newer_through(torch_version, transformers_version):
    compat.check_installed_versions(versions(torch=torch_version, transformers=transformers_version))


def test_import_runs_the_gate_before_torch_and_transformers():
    """``import hf_flexattn`` under a too-old torch (as its metadata says) fails with the gate's message, before
    torch or transformers is imported (an old transformers can fail inside its own import)."""
    program = (
        "import importlib.metadata as metadata, sys\n"
        "real = metadata.version\n"
        "metadata.version = lambda name: '2.7.1' if name == 'torch' else real(name)\n"
        "try:\n"
        "    import hf_flexattn\n"
        "except ImportError as err:\n"
        "    print('refused:', err)\n"
        "print('imported before the gate:', sorted({'torch', 'transformers'} & set(sys.modules)))\n"
    )
    run = subprocess.run([sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "refused: hf_flexattn: torch 2.7.1 is installed, hf_flexattn needs torch>=2.11" in run.stdout
    assert "imported before the gate: []" in run.stdout


def test_gate_and_pyproject_declare_the_same_lower_bounds():
    pyproject = (ROOT / "pyproject.toml").read_text()
    for distribution, minimum in compat.MINIMUM_VERSIONS.items():
        assert re.search(rf'^\s*"{distribution}>={re.escape(minimum)}[",]', pyproject, re.MULTILINE), (
            f"pyproject.toml's dependencies should declare {distribution}>={minimum} (compat.MINIMUM_VERSIONS)"
        )


def test_installed_versions_pass_the_gate():
    compat.check_installed_versions()
    assert compat.release_tuple(torch.__version__) >= compat.release_tuple(compat.MINIMUM_VERSIONS["torch"])


def test_release_tuple_refuses_what_is_not_a_version():
    with pytest.raises(ValueError, match="version='unknown'"):
        compat.release_tuple("unknown")


# --- the touchpoints, one test each ----------------------------------------------------------------------------------


def test_every_touchpoint_has_its_test_and_says_where_it_was_checked():
    tests = {name.removeprefix("test_touchpoint_") for name in globals() if name.startswith("test_touchpoint_")}
    assert tests == set(compat.TOUCHPOINTS), "each compat.TOUCHPOINTS entry needs a test_touchpoint_<name> here"
    for name, point in compat.TOUCHPOINTS.items():
        assert point.relies_on and point.why_private and point.used_by, name
        assert re.search(r"\d+\.\d+", point.checked_on), f"{name}: checked_on names no version"


def test_touchpoint_recorded_outputs_registry():
    from transformers.utils.output_capturing import _CAN_RECORD_REGISTRY

    model = BertModel(tiny_bert_config())  # building a model registers its class
    assert isinstance(_CAN_RECORD_REGISTRY, dict)
    assert dict.get(_CAN_RECORD_REGISTRY, str(BertModel)) == BertModel._can_record_outputs

    subclass = type("BertModel", (BertModel,), {"__module__": __name__})
    compat.register_recorded_outputs(subclass, BertModel)
    assert dict.get(_CAN_RECORD_REGISTRY, str(subclass)) == BertModel._can_record_outputs

    # and transformers' hooks read it: a patched model records the hidden states and attentions HF's does
    ids = torch.randint(0, 120, (2, 12))
    hf_flexattn.patch(no_dropout(model), "full")
    output = model(ids, output_hidden_states=True, output_attentions=True)
    assert len(output.hidden_states) == 3 and len(output.attentions) == 2


def test_touchpoint_can_record_outputs():
    from transformers.models.bert.modeling_bert import BertSelfAttention

    assert compat.recorded_outputs(BertModel)["attentions"] is BertSelfAttention
    assert compat.recorded_outputs(torch.nn.Linear) == {}


def test_touchpoint_config_attn_implementation_property():
    assert isinstance(PretrainedConfig.__dict__[compat.CONFIG_ATTN_IMPLEMENTATION_PROPERTY], property)
    config = tiny_bert_config(attn_implementation="eager")
    assert compat.attn_implementation(config) == "eager"
    compat.set_attn_implementation(config, "sdpa")
    assert compat.attn_implementation(config) == config._attn_implementation == "sdpa"

    # the setter sets it on the sub-configs too (a patched CLIP's text and vision halves dispatch on it)
    from transformers import CLIPConfig

    clip = CLIPConfig(attn_implementation="eager")
    compat.set_attn_implementation(clip, "sdpa")
    assert [compat.attn_implementation(c) for c in (clip, clip.text_config, clip.vision_config)] == ["sdpa"] * 3

    # and it is what transformers' modeling files dispatch on: patching sets it, unpatching gives the model's back
    model = BertModel(tiny_bert_config(attn_implementation="sdpa"))
    hf_flexattn.patch(model, "full")
    assert compat.attn_implementation(model.config) == PATCHED_IMPLEMENTATION
    hf_flexattn.unpatch(model)
    assert compat.attn_implementation(model.config) == "sdpa"


def test_touchpoint_config_attn_implementation_attribute():
    config = BertConfig()
    config._attn_implementation = "sdpa"
    assert config.__dict__[compat.CONFIG_ATTN_IMPLEMENTATION_ATTRIBUTE] == "sdpa"
    assert compat.config_attn_implementation(config) == "sdpa"

    # set_attn_implementation writes the attribute through setattr, where a config class can intercept it
    model = BertModel(tiny_bert_config(attn_implementation="sdpa"))
    writes = []

    class RecordingConfig(BertConfig):
        def __setattr__(self, key, value):
            writes.append((key, value))
            super().__setattr__(key, value)

    model.config.__class__ = RecordingConfig
    model.set_attn_implementation("eager")
    assert (compat.CONFIG_ATTN_IMPLEMENTATION_ATTRIBUTE, "eager") in writes
    assert model.config._attn_implementation == "eager"

    # which is what lets a patched model refuse it at the call
    model.config.__class__ = BertConfig
    hf_flexattn.patch(model, "full")
    with pytest.raises(ValueError, match="attn_implementation='sdpa': this model is patched"):
        model.set_attn_implementation("sdpa")


def test_touchpoint_config_output_attentions_attribute():
    assert isinstance(PretrainedConfig.__dict__["output_attentions"], property)
    config = BertConfig(attn_implementation="sdpa")
    assert config.__dict__[compat.CONFIG_OUTPUT_ATTENTIONS_ATTRIBUTE] is False
    with pytest.raises(ValueError, match="output_attentions"):  # transformers allows it for eager only
        config.output_attentions = True

    model = hf_flexattn.patch(BertModel(tiny_bert_config(attn_implementation="sdpa")), "full")
    model.config.output_attentions = True  # a patched model returns its variant's own weights
    assert model.config.__dict__[compat.CONFIG_OUTPUT_ATTENTIONS_ATTRIBUTE] is True


def test_touchpoint_accelerate_old_forward():
    from accelerate.hooks import ModelHook, add_hook_to_module, remove_hook_from_module

    module = torch.nn.Linear(3, 3)
    assert compat.accelerate_hooked_forward(module) is None
    add_hook_to_module(module, ModelHook())
    saved = compat.accelerate_hooked_forward(module)
    assert saved is not None
    x = torch.randn(2, 3)
    torch.testing.assert_close(module(x), torch.nn.functional.linear(x, module.weight, module.bias))

    compat.set_accelerate_hooked_forward(module, lambda x: x * 2)
    torch.testing.assert_close(module(x), x * 2)  # the hook calls the forward it saved

    compat.set_accelerate_hooked_forward(module, saved)
    remove_hook_from_module(module)
    assert compat.accelerate_hooked_forward(module) is None


def test_touchpoint_dinat_without_natten():
    modeling = hf_flexattn.dinat_modeling()
    assert modeling.requires_backends is compat._requires_backends_but_natten
    # the legacy ops were not imported from NATTEN: the names are the module's own stand-ins
    assert modeling.natten2dav.__module__ == modeling.natten2dqkrpb.__module__ == modeling.__name__
    config = modeling.DinatConfig(embed_dim=16, depths=[1], num_heads=[2], dilations=[[2]], kernel_size=3)
    modeling.DinatModel(config)  # built without NATTEN

    # the patched model runs DiNAT's attention without NATTEN
    patched = hf_flexattn.load_dinat("DinatModel", config)
    assert patched(torch.randn(1, 3, 32, 32)).last_hidden_state.shape == (1, 8, 8, 16)


def test_touchpoint_cpu_flash_attention():
    forward, backward = compat.cpu_flash_attention()
    assert (str(forward.default._schema), str(backward.default._schema)) == compat.CPU_FLASH_SCHEMAS

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 4, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    mask = torch.zeros(2, 3, 5, 5, dtype=torch.float64)
    mask[..., 3:] = float("-inf")
    scale = 0.3
    out, lse = forward(q, k, v, 0.0, False, attn_mask=mask, scale=scale)
    scores = q @ k.transpose(-1, -2) * scale + mask
    reference = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    torch.testing.assert_close(out, reference)
    torch.testing.assert_close(lse, torch.logsumexp(scores, dim=-1))

    grad_out = torch.randn(2, 3, 5, 4, generator=g, dtype=torch.float64)
    grads = backward(grad_out, q, k, v, out, lse, 0.0, False, attn_mask=mask, scale=scale)
    expected = torch.autograd.grad(reference, (q, k, v), grad_out)
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want)


def test_touchpoint_tensor_version():
    table = torch.nn.Parameter(torch.ones(4, 3))
    seen = [compat.tensor_version(table)]

    def changed() -> bool:
        seen.append(compat.tensor_version(table))
        return seen[-1] != seen[-2]

    assert isinstance(seen[0], int)
    table.sum().backward()
    assert not changed()  # reading the parameter (forward and backward) leaves it unchanged
    with torch.no_grad():
        table.mul_(2)
        assert changed()
        table[1].add_(1)  # through a view
        assert changed()
    torch.optim.SGD([table], lr=0.1).step()
    assert changed()
    linear = torch.nn.Linear(3, 4)
    before = compat.tensor_version(linear.weight)
    linear.load_state_dict(torch.nn.Linear(3, 4).state_dict())
    assert compat.tensor_version(linear.weight) != before
    torch.autograd.graph.increment_version(table)  # the counter torch's public call bumps
    assert changed()


def test_touchpoint_dynamo_compiles():
    torch._dynamo.reset()
    compiled = torch.compile(lambda x: x * 2 + 1, backend="eager", dynamic=False)
    before = compat.compiled_graph_count()
    with compat.recompile_limit(1):
        compiled(torch.ones(2))
        assert compat.compiled_graph_count() == before + 1
        compiled(torch.ones(2))  # the same shape: no new graph
        assert compat.compiled_graph_count() == before + 1
        with pytest.raises(compat.recompile_limit_hit()):
            compiled(torch.ones(3))  # a second compile past the limit raises instead of running eagerly
    torch._dynamo.reset()


def test_touchpoint_exporting_flag():
    """compat.is_exporting() is True while torch.export traces (strict and non-strict: the path it takes decides the
    exported program) and False inside torch.compile, where torch 2.11's own is_exporting() says True; the flag it
    reads below 2.13 is what torch.export sets and the public call returns."""

    def exporting(x):
        return x + 1 if compat.is_exporting() else x - 1

    class Exporting(torch.nn.Module):
        def forward(self, x):
            return exporting(x)

    x = torch.zeros(2)
    assert not compat.is_exporting() and torch.compiler._is_exporting_flag is False
    for strict in (False, True):
        assert torch.export.export(Exporting(), (x,), strict=strict).module()(x).tolist() == [1.0, 1.0], strict
    torch._dynamo.reset()
    for dynamic in (False, True):
        assert torch.compile(exporting, fullgraph=True, dynamic=dynamic, backend="aot_eager")(x).tolist() == [-1.0] * 2

    class Flag(torch.nn.Module):  # non-strict export runs forward in Python: the public call reads the flag there
        def forward(self, x):
            assert torch.compiler.is_exporting() and torch.compiler._is_exporting_flag is True
            return x

    torch.export.export(Flag(), (x,), strict=False)
    # the gate: torch's public call is used where its dynamo answers False under torch.compile
    public = torch.compile(lambda x: x + torch.compiler.is_exporting(), fullgraph=True, backend="eager")(x)
    assert compat._READ_EXPORTING_FLAG or public.tolist() == [0.0, 0.0]
    torch._dynamo.reset()


def test_touchpoint_longformer_model_forward():
    fingerprint = compat.longformer_forward_fingerprint()
    assert fingerprint in compat.LONGFORMER_FORWARD_FINGERPRINTS, (
        f"transformers' LongformerModel.forward changed (fingerprint {fingerprint}): carry the change over to "
        "FlexLongformerModelMixin.forward (hf_flexattn/families/longformer.py), then add the fingerprint to "
        "compat.LONGFORMER_FORWARD_FINGERPRINTS with the transformers version"
    )


def test_touchpoint_revert_weight_conversion():
    """ViT's modules are renamed on loading (transformers' conversion mapping for its model type): a key's name in
    the checkpoint is the hub's; a model type without a mapping (BERT) keeps its modules' names."""
    from tiny_models import tiny_model

    vit = tiny_model("vit")
    key = "layers.0.attention.k_proj.weight"
    assert key in vit.state_dict(), "ViT's modules are no longer named layers.N.attention.k_proj"
    assert compat.checkpoint_key(vit, key, vit.state_dict()[key]) == "encoder.layer.0.attention.attention.key.weight"
    bert = BertModel(tiny_bert_config())
    key = "encoder.layer.0.attention.self.key.weight"
    assert compat.checkpoint_key(bert, key, bert.state_dict()[key]) == key


def test_touchpoint_custom_code_by_module():
    in_transformers = type("BertModel", (BertModel,), {"__module__": "transformers.models.bert.modeling_bert"})
    elsewhere = type("BertModel", (BertModel,), {"__module__": "hf_flexattn.families.base"})
    assert in_transformers.is_custom_code() is False
    assert elsewhere.is_custom_code() is True


ATTRIBUTE_CALLS = ("getattr", "setattr", "hasattr", "delattr")


def _private_uses(path: Path, own: set[str]) -> list[str]:
    """What ``path`` reads of another library's private names: ``x._name`` (``self._name`` / ``cls._name`` too where
    the package never defines ``_name``), ``getattr(x, "_name")``, ``from torch._dynamo import ...``."""
    found = []
    label = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
    for node in ast.walk(ast.parse(path.read_text())):
        where = f"{label}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Attribute) and _private(node.attr):
            mine = isinstance(node.value, ast.Name) and node.value.id in ("self", "cls") and node.attr in own
            if not mine:
                found.append(f"{where} {ast.unparse(node)}")
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) in ATTRIBUTE_CALLS:
            name = node.args[1].value if len(node.args) > 1 and isinstance(node.args[1], ast.Constant) else None
            if isinstance(name, str) and _private(name):
                found.append(f"{where} {ast.unparse(node)}")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module != "__future__":
            if any(_private(part) for part in node.module.split(".")) or any(_private(a.name) for a in node.names):
                found.append(f"{where} from {node.module} import {', '.join(a.name for a in node.names)}")
        elif isinstance(node, ast.Import):
            found += [f"{where} import {a.name}" for a in node.names if any(map(_private, a.name.split(".")))]
    return found


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _own_private_names(paths) -> set[str]:
    """The private names the package defines itself (functions, classes, attributes it assigns, fields)."""
    own = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                own.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                own.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                own.add(node.id)
    return {name for name in own if _private(name)}


def test_no_private_touchpoint_outside_compat():
    """Only compat.py reaches into torch's, transformers' or accelerate's private names: anything else goes through
    it (a TOUCHPOINTS entry and its test here) or uses a public API."""
    paths = [p for p in sorted((ROOT / "hf_flexattn").rglob("*.py")) if p.name != "compat.py"]
    own = _own_private_names(paths)
    found = [use for path in paths for use in _private_uses(path, own)]
    assert not found, "private names used outside hf_flexattn/compat.py:\n" + "\n".join(found)


def test_the_private_use_check_finds_each_kind(tmp_path):
    source = tmp_path / "hf_flexattn" / "sample.py"
    source.parent.mkdir()
    source.write_text(
        "import torch._dynamo\n"
        "from transformers.utils.output_capturing import _CAN_RECORD_REGISTRY\n"
        "from ..masks.core import _block_lists\n"  # the package's own: allowed
        "class M(torch.nn.Module):\n"
        "    def f(self, module, t):\n"
        "        self._mine = t._version\n"
        "        module._modules.pop('x')\n"
        "        return self._parameters, self._mine, getattr(t, '_base'), getattr(t, '__name__')\n"
    )
    found = [use.split(" ", 1)[1] for use in _private_uses(source, _own_private_names([source]))]
    assert sorted(found) == sorted(
        [
            "import torch._dynamo",
            "from transformers.utils.output_capturing import _CAN_RECORD_REGISTRY",
            "t._version",
            "module._modules",
            "self._parameters",
            "getattr(t, '_base')",
        ]
    )


def test_touchpoints_are_what_the_library_calls():
    """The library reaches the internals through compat: patching a model hooked by accelerate repoints the hook."""
    from accelerate.hooks import ModelHook, add_hook_to_module

    model = no_dropout(BertModel(tiny_bert_config()))
    add_hook_to_module(model, ModelHook())
    ids = torch.randint(0, 120, (1, 8))
    hf_flexattn.patch(model, "longformer", window=2)
    assert isinstance(compat.accelerate_hooked_forward(model), types.MethodType)
    assert compat.accelerate_hooked_forward(model).__func__ is type(model).forward
    model(ids)
    hf_flexattn.unpatch(model)
    assert compat.accelerate_hooked_forward(model).__func__ is BertModel.forward


def test_readme_matrix_names_the_ends_ci_tests_and_the_pinned_torch():
    """The README's one table of tested versions, CI's pinned torch and scripts/ci_matrix.sh's ends say the same."""
    script = (ROOT / "scripts" / "ci_matrix.sh").read_text()
    readme = (ROOT / "README.md").read_text()
    rows = [line for line in readme.splitlines() if re.match(r"\| \d+\.\d+\.\d+ \(", line)]
    assert len(rows) == 3, "README.md should have one tested-versions table: oldest, pinned, newest"
    for end, row in (("OLDEST", rows[0]), ("NEWEST", rows[2])):
        pins = dict(re.findall(r"([a-z-]+)==([\d.]+)", re.search(rf"^{end}=\((.*)\)$", script, re.MULTILINE)[1]))
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert [cells[0].split()[0], cells[1], cells[2]] == [
            pins["torch"],
            pins["transformers"],
            pins["sentence-transformers"],
        ], f"README's {end.lower()} row and scripts/ci_matrix.sh's {end} differ"
        assert f"torch {pins['torch']} + transformers {pins['transformers']}" in compat.TESTED_ENDS
    pinned_torch = re.search(r"pip install -q torch==([\d.]+)", (ROOT / ".ci" / "run").read_text())[1]
    assert rows[1].startswith(f"| {pinned_torch} (CPU"), "README's pinned row should name the torch .ci/run installs"
    assert f"pip install torch=={pinned_torch} --index-url https://download.pytorch.org/whl/cpu" in " ".join(
        readme.split()
    ), "README should say how to get the pinned CPU build on any machine"


def test_touchpoint_linear_without_hooks():
    linear = torch.nn.Linear(3, 4)
    assert compat.is_plain_linear(linear)
    for register in (linear.register_forward_hook, linear.register_forward_pre_hook):
        hook = register(lambda *a: None)
        assert not compat.is_plain_linear(linear)
        hook.remove()
        assert compat.is_plain_linear(linear)
    for register in (
        torch.nn.modules.module.register_module_forward_hook,
        torch.nn.modules.module.register_module_forward_pre_hook,
    ):
        hook = register(lambda *a: None)
        try:
            assert not compat.is_plain_linear(linear)  # a hook on every module
        finally:
            hook.remove()
        assert compat.is_plain_linear(linear)

    class Scaled(torch.nn.Linear):
        def forward(self, x):
            return super().forward(x) * 2

    assert not compat.is_plain_linear(Scaled(3, 4))
    replaced = torch.nn.Linear(3, 4)
    replaced.forward = lambda x: torch.zeros(1)  # as accelerate's hooks replace it on the instance
    assert not compat.is_plain_linear(replaced)
    assert not compat.is_plain_linear(torch.nn.Sequential(torch.nn.Linear(3, 4)))


FAKE_PYTHON = """#!/usr/bin/env bash
# python3 for scripts/ci_matrix.sh's test: `-m venv DIR` makes DIR/bin/python, this script again, which fails what
# $FAKE_<END>_FAILS names for the end whose venv it is (install: pip; tests: pytest exits 3)
if [ "$1 $2" = "-m venv" ]; then mkdir -p "$3/bin"; cp "$0" "$3/bin/python"; exit 0; fi
end=$(basename "$(dirname "$(dirname "$0")")")
fails=$(eval echo "\\${FAKE_${end^^}_FAILS:-}")
echo "$end $*" >>"$FAKE_CALLS"
case "$2" in
    pip) [ "$fails" != install ] ;;
    pytest) [ "$fails" != tests ] || exit 3 ;;
esac
"""


@pytest.mark.parametrize(
    "oldest,newest,status",
    [("", "", 0), ("tests", "", 3), ("install", "", 90), ("install", "tests", 3), ("", "install", 90)],
)
def test_ci_matrix_runs_every_end_and_reports_the_worst(oldest, newest, status, tmp_path):
    """A failing end does not stop the next one; a failing test outranks a failed install (exit 90, which .ci/run
    reads as advisory)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "python3"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    calls = tmp_path / "calls"
    env = dict(
        os.environ,
        PATH=f"{bin_dir}:{os.environ['PATH']}",
        HF_FLEXATTN_VENVS=str(tmp_path / "venvs"),
        FAKE_CALLS=str(calls),
        FAKE_OLDEST_FAILS=oldest,
        FAKE_NEWEST_FAILS=newest,
    )
    run = subprocess.run(
        ["bash", str(ROOT / "scripts" / "ci_matrix.sh"), "--core"], env=env, capture_output=True, text=True
    )
    assert run.returncode == status, run.stdout + run.stderr
    ran = calls.read_text()
    for end, fails in (("oldest", oldest), ("newest", newest)):
        assert f"{end} -m pip install" in ran
        assert (f"{end} -m pytest" in ran) == (fails != "install"), ran
