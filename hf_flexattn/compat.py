"""Every place where hf_flexattn relies on a private part of transformers, torch or accelerate, in one module.

Each touchpoint below is written once here, and the library calls it instead of reaching into the internals itself.
:data:`TOUCHPOINTS` says, for each, what it relies on, why no public API does the job, and the versions it was
checked on. tests/test_compat.py checks every touchpoint on the installed versions and fails (it never skips) when
an upgrade removes or changes what one relies on: the fix then goes here, and the entry's ``checked_on`` gains the
new version. docs/compatibility.md has the tested matrix and how to re-check it.

:func:`check_installed_versions` is the import-time gate: ``import hf_flexattn`` calls it before anything imports
torch or transformers (an older transformers can fail inside its own import under an older torch), so an
unsupported install fails with the installed and the required versions instead of an error from deep inside.
This module imports neither at its top for that reason.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import importlib.metadata
import inspect
import re
import textwrap
from collections.abc import Callable
from dataclasses import dataclass

# the lowest versions of the tested range (pyproject.toml declares the same, a test checks that they agree)
MINIMUM_VERSIONS = {"torch": "2.11", "transformers": "5.21"}

# the ends of the tested matrix (docs/compatibility.md); every touchpoint below was checked on both ends and on the
# README's pinned set (torch 2.13.0, transformers 5.25.0) unless its entry says otherwise
TESTED_ENDS = "torch 2.11.0 + transformers 5.21.0, torch 2.15.0 + transformers 5.25.0"


# --- the version gate ---------------------------------------------------------------------------------------------


def installed_version(distribution: str) -> str | None:
    """The installed version of ``distribution`` (its metadata, without importing it), or None."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def release_tuple(version: str) -> tuple[int, ...]:
    """``"2.13.0+cpu"`` → (2, 13, 0): the release numbers, without local or pre-release tags."""
    match = re.match(r"\d+(\.\d+)*", version)
    if match is None:
        raise ValueError(f"version={version!r}: expected a version starting with release numbers, like '2.13.0'")
    return tuple(int(part) for part in match.group(0).split("."))


def check_installed_versions(version_of: Callable[[str], str | None] = installed_version) -> None:
    """Raise ImportError naming the installed and the required versions when torch or transformers is older than
    the tested range (as Liger-Kernel's minimum-version check does)."""
    problems = []
    for distribution, minimum in MINIMUM_VERSIONS.items():
        installed = version_of(distribution)
        if installed is None:
            problems.append(f"{distribution} is not installed (hf_flexattn needs {distribution}>={minimum})")
        elif release_tuple(installed) < release_tuple(minimum):
            problems.append(f"{distribution} {installed} is installed, hf_flexattn needs {distribution}>={minimum}")
    if problems:
        required = " ".join(f"'{d}>={v}'" for d, v in MINIMUM_VERSIONS.items())
        raise ImportError(
            "hf_flexattn: " + "; ".join(problems) + f". Install the tested range: pip install {required} "
            "(the tested versions: docs/compatibility.md)"
        )


# --- the touchpoints ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Touchpoint:
    """One private thing hf_flexattn relies on (see the module docstring)."""

    relies_on: str
    why_private: str
    used_by: str
    checked_on: str = TESTED_ENDS


TOUCHPOINTS: dict[str, Touchpoint] = {}


def _touchpoint(name: str, **fields) -> None:
    TOUCHPOINTS[name] = Touchpoint(**fields)


# transformers: what a model records for output_hidden_states / output_attentions

_touchpoint(
    "recorded_outputs_registry",
    relies_on="transformers.utils.output_capturing._CAN_RECORD_REGISTRY: a dict keyed by str(model class) whose "
    "values are the class's _can_record_outputs, filled when a model is built and read by the output-capturing "
    "hooks (a plain dict in 5.21; by 5.25 a dict subclass whose get takes the model: read and written here "
    "through dict's own methods, which both share)",
    why_private="transformers looks a model's recorded outputs up there by class name; no public call registers a "
    "class",
    used_by="families/base.py (a patched base model records what its HF class records)",
)


def register_recorded_outputs(cls: type, hf_class: type) -> None:
    """Make ``cls`` record what ``hf_class`` records (output_hidden_states / output_attentions): transformers looks
    it up by the model's class name."""
    from transformers.utils.output_capturing import _CAN_RECORD_REGISTRY

    dict.__setitem__(_CAN_RECORD_REGISTRY, str(cls), dict.get(_CAN_RECORD_REGISTRY, str(hf_class)))


_touchpoint(
    "can_record_outputs",
    relies_on="PreTrainedModel._can_record_outputs: the class attribute naming the module classes whose outputs "
    "are recorded as 'attentions' / 'hidden_states'",
    why_private="the one place a model says which of its modules compute attention; no public accessor",
    used_by="families/general.py (which modules of an unlisted model are attention modules)",
)


def recorded_outputs(model_class: type) -> dict:
    """``model_class``'s ``_can_record_outputs`` ({} when it records nothing)."""
    return getattr(model_class, "_can_record_outputs", None) or {}


# transformers: the attention implementation a config holds

_touchpoint(
    "config_attn_implementation_property",
    relies_on="PretrainedConfig._attn_implementation: the property transformers' modeling files read to pick the "
    "attention function (ALL_ATTENTION_FUNCTIONS[config._attn_implementation]); its setter stores the name and sets "
    "it on the config's sub-configs too",
    why_private="the name transformers dispatches on; the public set_attn_implementation refuses a name while the "
    "model's modules are not the ones it checks, and has no getter",
    used_by="patching.py (patch, unpatch), families/base.py (PatchedBaseModel.forward, PatchedConfig)",
)

CONFIG_ATTN_IMPLEMENTATION_PROPERTY = "_attn_implementation"


def attn_implementation(config) -> str | None:
    """The attention implementation transformers dispatches ``config``'s model on."""
    return getattr(config, CONFIG_ATTN_IMPLEMENTATION_PROPERTY)


def set_attn_implementation(config, name: str | None) -> None:
    """Make transformers dispatch ``config``'s model (and its sub-configs' modules) on ``name``."""
    setattr(config, CONFIG_ATTN_IMPLEMENTATION_PROPERTY, name)


_touchpoint(
    "config_attn_implementation_attribute",
    relies_on="PretrainedConfig stores its attention implementation in the instance attribute "
    "_attn_implementation_internal (the _attn_implementation property's setter writes it; "
    "PreTrainedModel.set_attn_implementation writes it directly, by setattr)",
    why_private="a patched model refuses set_attn_implementation at the call: the patched config class intercepts "
    "that write; no public hook sees the change",
    used_by="families/base.py (PatchedConfig.__setattr__, PatchedBaseModel.__setstate__)",
)

CONFIG_ATTN_IMPLEMENTATION_ATTRIBUTE = "_attn_implementation_internal"


def config_attn_implementation(config) -> str | None:
    """The attention implementation stored on ``config`` itself (without the property, whatever its class)."""
    return config.__dict__.get(CONFIG_ATTN_IMPLEMENTATION_ATTRIBUTE)


_touchpoint(
    "config_output_attentions_attribute",
    relies_on="PretrainedConfig.output_attentions is a property over the instance attribute _output_attentions, "
    "whose setter refuses True unless the implementation is 'eager'; PretrainedConfig.validate_output_attentions "
    "(called by the model) refuses it the same way",
    why_private="a patched model returns its variant's own weights: the patched config accepts True; no public "
    "switch does",
    used_by="families/base.py (PatchedConfig.output_attentions, PatchedConfig.validate_output_attentions)",
)

CONFIG_OUTPUT_ATTENTIONS_ATTRIBUTE = "_output_attentions"


def output_attentions_stored(config) -> bool:
    """``config.output_attentions`` as stored (what HF's getter returns), read without going through a property:
    the patched config's getter runs inside torch.compile, where dynamo cannot trace a call to HF's getter."""
    return getattr(config, CONFIG_OUTPUT_ATTENTIONS_ATTRIBUTE)


def set_output_attentions_unchecked(config, value: bool) -> None:
    """Store ``config.output_attentions`` without transformers' check (eager only): a patched config accepts True."""
    setattr(config, CONFIG_OUTPUT_ATTENTIONS_ATTRIBUTE, value)


# accelerate: hooks (device_map, offloading) call the module's saved forward

_touchpoint(
    "accelerate_old_forward",
    relies_on="accelerate.hooks.add_hook_to_module saves the module's forward as the instance attribute "
    "_old_forward and its new forward calls module._old_forward",
    why_private="a model loaded with device_map has the hook on its base model: patching must repoint the saved "
    "forward to the patched one (and back); accelerate has no public call for it",
    used_by="patching.py (patch, unpatch)",
    checked_on="accelerate 1.16.0 with both ends",
)


def accelerate_hooked_forward(module) -> Callable | None:
    """The forward an accelerate hook on ``module`` calls, or None when ``module`` has no hook."""
    return module.__dict__.get("_old_forward")


def set_accelerate_hooked_forward(module, forward: Callable) -> None:
    """Make the accelerate hook on ``module`` call ``forward``."""
    module._old_forward = forward


# transformers: DiNAT without NATTEN's legacy ops

_touchpoint(
    "dinat_without_natten",
    relies_on="transformers.models.dinat.modeling_dinat imports NATTEN's legacy ops only when "
    "transformers.utils.is_natten_available() says True at its import, and its models call the module-level "
    "requires_backends(self, ['natten']) when built",
    why_private="the legacy ops are gone from NATTEN 0.20 and hf_flexattn computes DiNAT's attention itself; "
    "transformers has no switch to build the models without NATTEN",
    used_by="families/dinat.py (dinat_modeling)",
)


def import_without_natten(module_name: str):
    """Import ``module_name`` with transformers told NATTEN is unavailable (its legacy ops are not imported)."""
    import transformers.utils as utils

    available = utils.is_natten_available
    utils.is_natten_available = lambda: False
    try:
        return importlib.import_module(module_name)
    finally:
        utils.is_natten_available = available


def _requires_backends_but_natten(obj, backends) -> None:
    from transformers.utils import requires_backends

    others = [b for b in backends if b != "natten"]
    if others:
        requires_backends(obj, others)


def build_without_natten(module) -> None:
    """Let ``module``'s models be built without NATTEN (every other backend is still required)."""
    module.requires_backends = _requires_backends_but_natten


# torch: the CPU flash kernel with its log-sum-exp

_touchpoint(
    "cpu_flash_attention",
    relies_on="torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(query, key, value, dropout_p, is_causal, "
    "*, attn_mask, scale) -> (output, logsumexp) and its _backward (grad_out, query, key, value, out, logsumexp, "
    "dropout_p, is_causal, *, attn_mask, scale) -> (grad_query, grad_key, grad_value)",
    why_private="the tiles keep each chunk's log-sum-exp for their own backward; the public "
    "scaled_dot_product_attention returns the output only",
    used_by="kernels/tiles.py",
)

CPU_FLASH_SCHEMAS = (
    "aten::_scaled_dot_product_flash_attention_for_cpu(Tensor query, Tensor key, Tensor value, float dropout_p=0., "
    "bool is_causal=False, *, Tensor? attn_mask=None, float? scale=None) -> (Tensor output, Tensor logsumexp)",
    "aten::_scaled_dot_product_flash_attention_for_cpu_backward(Tensor grad_out, Tensor query, Tensor key, "
    "Tensor value, Tensor out, Tensor logsumexp, float dropout_p, bool is_causal, *, Tensor? attn_mask=None, "
    "float? scale=None) -> (Tensor grad_query, Tensor grad_key, Tensor grad_value)",
)


def cpu_flash_attention() -> tuple[Callable, Callable]:
    """The CPU flash kernel's forward (output and log-sum-exp) and backward ops."""
    import torch

    aten = torch.ops.aten
    return aten._scaled_dot_product_flash_attention_for_cpu, aten._scaled_dot_product_flash_attention_for_cpu_backward


# torch: whether a tensor was changed in place

_touchpoint(
    "tensor_version",
    relies_on="Tensor._version: an int that grows with every in-place change made to the tensor or to a view of it "
    "(mul_, copy_ under no_grad, an optimizer step, load_state_dict), the counter torch.autograd.graph."
    "increment_version bumps; writes through tensor.data do not bump it",
    why_private="the variants keep what they build from a bias table (Swin's window mask, the halo plan's gathered "
    "bias) while it is unchanged; torch has no public read of the counter (increment_version only writes it)",
    used_by="variants/swin.py (SwinBlockVariant's window mask), variants/neighborhood.py (the halo bias)",
)


def tensor_version(tensor) -> int:
    """How many in-place changes ``tensor`` (or a view of it) has had: a cache built from it is stale when this
    differs."""
    return tensor._version


# torch: whether calling a linear module computes exactly F.linear with its weight and bias

_touchpoint(
    "linear_without_hooks",
    relies_on="nn.Module keeps the hooks that run around its forward in the instance dicts _forward_pre_hooks and "
    "_forward_hooks, and the ones for every module in torch.nn.modules.module's _global_forward_pre_hooks and "
    "_global_forward_hooks",
    why_private="HF Longformer checkpoints' global rows fold key_global/value_global's weights into the rows instead "
    "of calling them; that is only the module's output when nothing hooks its forward, and torch has no public "
    "read of a module's hooks",
    used_by="variants/longformer.py (folded global rows)",
    checked_on="torch 2.13.0 (the pinned set); the ends' CI legs run its test",
)


def is_plain_linear(module) -> bool:
    """Whether calling ``module`` computes ``F.linear(x, module.weight, module.bias)`` and nothing else: an
    ``nn.Linear`` whose forward is nn.Linear's own (not a subclass's, not replaced on the instance, as accelerate's
    hooks and quantised linears do) with no forward hook. A PEFT adapter around a linear is not one."""
    import torch
    from torch.nn.modules import module as module_file

    return (
        type(module).forward is torch.nn.Linear.forward
        and isinstance(module, torch.nn.Linear)
        and "forward" not in vars(module)
        and not module._forward_pre_hooks
        and not module._forward_hooks
        and not module_file._global_forward_pre_hooks
        and not module_file._global_forward_hooks
    )


# torch: dynamo's compile count and recompile limit

_touchpoint(
    "dynamo_compiles",
    relies_on="torch._dynamo.utils.counters['stats']['unique_graphs'] (grows by one per graph compiled), "
    "torch._dynamo.config.patch(recompile_limit=..., fail_on_recompile_limit_hit=True) and "
    "torch._dynamo.exc.FailOnRecompileLimitHit (raised past the limit instead of falling back to eager)",
    why_private="compiled flex counts and bounds its own compiles (kernels/flex.py); torch.compile has no public "
    "compile counter or per-call recompile limit",
    used_by="kernels/flex.py (run_flex)",
)


def compiled_graph_count() -> int:
    """How many graphs dynamo has compiled in this process."""
    import torch._dynamo.utils

    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def recompile_limit(limit: int):
    """A context in which a compiled callable that needs more than ``limit`` compiles raises
    :func:`recompile_limit_hit` instead of running eagerly."""
    import torch._dynamo

    return torch._dynamo.config.patch(recompile_limit=limit, fail_on_recompile_limit_hit=True)


def recompile_limit_hit() -> type[Exception]:
    """The exception dynamo raises past :func:`recompile_limit`."""
    import torch._dynamo.exc

    return torch._dynamo.exc.FailOnRecompileLimitHit


# torch: whether torch.export (not torch.compile) is tracing

_touchpoint(
    "exporting_flag",
    relies_on="torch.compiler._is_exporting_flag: the bool torch.export sets while it traces (strict and non-strict) "
    "and torch.compiler.is_exporting() returns; dynamo reads it as a guarded constant, False under torch.compile. "
    "Read on torch < 2.13 only",
    why_private="torch 2.11's dynamo folds a traced torch.compiler.is_exporting() to True in every torch.compile "
    "graph (pytorch/pytorch#176347, fixed by #176499: 2.13 reads the flag); the public call is right on 2.13 and "
    "later, and used there",
    used_by="kernels/__init__.py (choose_path, attend), ops.py (the NATTEN backend's plan)",
)

# the first torch whose dynamo answers torch.compiler.is_exporting() from the flag (checked on 2.13.0 and 2.15.0;
# 2.11.0 answers True inside torch.compile). Decided once, from torch's metadata: a version parsed in the function
# would be traced by dynamo on every compile
PUBLIC_IS_EXPORTING_FROM = (2, 13)
_READ_EXPORTING_FLAG = release_tuple(installed_version("torch") or "0") < PUBLIC_IS_EXPORTING_FROM


def is_exporting() -> bool:
    """``torch.compiler.is_exporting()`` that is False inside ``torch.compile`` on every torch in the range: on
    torch 2.11 the public call is True in any compiled graph, which sent every compiled call to the export path
    (the dense path: a materialised N×N mask, SDPA's dropout instead of flex_dropout's keep mask)."""
    import torch

    if _READ_EXPORTING_FLAG:
        return torch.compiler._is_exporting_flag
    return torch.compiler.is_exporting()


# transformers: HF Longformer's base model forward, rewritten for the patched masks

_touchpoint(
    "longformer_model_forward",
    relies_on="transformers' LongformerModel.forward as of the fingerprints in LONGFORMER_FORWARD_FINGERPRINTS: "
    "FlexLongformerModelMixin.forward is that forward rewritten (embeddings, the layers with the masks in their "
    "attention_mask slot, the pooler, LongformerBaseModelOutputWithPooling) without the padding to the window",
    why_private="HF Longformer's self-attention does not go through transformers' attention interface, so its "
    "base model's forward is replaced; a change upstream must be carried over by hand",
    used_by="families/longformer.py",
)

# fingerprint (see longformer_forward_fingerprint) → the transformers versions it was read from
LONGFORMER_FORWARD_FINGERPRINTS = {
    "c16800961c336178": "transformers 5.21.0, 5.25.0",
}


def longformer_forward_fingerprint() -> str:
    """A fingerprint of transformers' ``LongformerModel.forward`` that ignores formatting, comments and its
    docstring (the first 16 hex digits of the sha256 of its AST)."""
    from transformers.models.longformer.modeling_longformer import LongformerModel

    source = textwrap.dedent(inspect.getsource(LongformerModel.forward))
    function = ast.parse(source).body[0]
    if ast.get_docstring(function) is not None:
        function.body = function.body[1:]
    function.decorator_list = []
    return hashlib.sha256(ast.dump(function).encode()).hexdigest()[:16]


# transformers: the names a checkpoint gives a model's weights

_touchpoint(
    "revert_weight_conversion",
    relies_on="transformers.core_model_loading.revert_weight_conversion(model, state_dict) -> state_dict: the "
    "renaming save_pretrained applies before writing (the conversion mapping the model was loaded with, else its "
    "model type's default; ViT's layers.0.attention.k_proj is saved as encoder.layer.0.attention.attention.key), "
    "key by key for a renaming",
    why_private="the weights a variant adds are loaded by the names save_pretrained gave them; transformers has no "
    "public call that says a key's name in a checkpoint",
    used_by="patching.py (checkpoint_names: from_pretrained of a patched checkpoint)",
)


def checkpoint_key(model, key: str, tensor) -> str:
    """The name ``save_pretrained`` gives the model's state-dict entry ``key`` (holding ``tensor``) in its file."""
    from transformers.core_model_loading import revert_weight_conversion

    (name,) = revert_weight_conversion(model, {key: tensor})
    return name


# transformers: which classes it treats as custom code

_touchpoint(
    "custom_code_by_module",
    relies_on="PreTrainedModel.is_custom_code(): a class whose __module__ does not start with 'transformers.' is "
    "custom code (its checkpoint conversion mapping is skipped, its weights initialised as custom code's)",
    why_private="patched classes are made at run time; transformers decides by the class's __module__, with no "
    "public registration for a subclass of a transformers model",
    used_by="families/base.py (patched_class: the __module__ of a patched class)",
)
