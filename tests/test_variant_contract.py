"""The Variant contract (variants/base.py): a small core every variant implements, everything else an opt-in mixin
that the patching code checks with ``isinstance``; per-forward state a dataclass; one entry point, ``attend``, for
patched modules and transformers' attention interface alike."""

import dataclasses
import inspect
import typing

import pytest
import torch
from transformers import BertModel

import hf_flexattn as hfx
from hf_flexattn import hf_integration
from hf_flexattn.factory import supported
from hf_flexattn.families import FAMILIES
from hf_flexattn.patching import patch_state
from hf_flexattn.variants import VARIANTS, ForwardInputs, ForwardMasks, ForwardState, full
from hf_flexattn.variants.base import (
    OPTIONAL_HOOKS,
    FeatureMapVariant,
    HasForwardState,
    NativeAttention,
    Requirements,
    Variant,
)

from helpers import padded_batch, tiny_bert_config

# what a variant implements (the class attributes, configure, the mask or the attend, its repr) ...
CORE = {
    "name",
    "requires",
    "Options",
    "kernel_backends",
    "configure",
    "layer_mask",
    "attend",
    "attention_probabilities",
    "extra_repr",
}
# ... and the machinery the variants use (not hooks: nothing calls them expecting a variant to override them)
MACHINERY = {"dropout_p", "input_dependent", "batch_mask", "cached", "latest", "config_dict"}
# a hierarchical family's block hooks
FEATURE_MAP = {"map_shape", "attend_block", "attend_map", "map_probabilities"}


def _public(cls: type) -> set[str]:
    return {n for n in (*vars(cls), *inspect.get_annotations(cls)) if not n.startswith("_")}


def _variant_classes() -> set[type]:
    """Every variant class: the registered ones, the families' strategies, and every subclass defined in the package."""
    found = {*VARIANTS.values(), *(c for f in FAMILIES.values() for c in f.variant_overrides.values())}
    stack = [Variant]
    while stack:
        for sub in stack.pop().__subclasses__():
            stack.append(sub)
            if sub.__module__.startswith("hf_flexattn."):
                found.add(sub)
    return found


def test_the_core_variant_has_only_the_listed_members():
    assert _public(Variant) == CORE | MACHINERY
    assert _public(FeatureMapVariant) == FEATURE_MAP


def test_each_optional_hook_belongs_to_one_mixin_and_not_to_the_core():
    declared = [hook for hooks in OPTIONAL_HOOKS.values() for hook in hooks]
    assert len(declared) == len(set(declared))  # no hook in two mixins
    for mixin, hooks in OPTIONAL_HOOKS.items():
        assert not issubclass(mixin, Variant), mixin  # opt-in, mixed in before Variant
        assert _public(mixin) == set(hooks), mixin
        assert not set(hooks) & _public(Variant)


def test_every_variant_that_defines_a_hook_inherits_its_mixin():
    classes = _variant_classes()
    assert len(classes) >= 12  # the six registered, the family strategies, the bases
    for cls in classes:
        for mixin, hooks in OPTIONAL_HOOKS.items():
            defined = [h for h in hooks if any(h in vars(k) for k in cls.__mro__ if issubclass(k, Variant))]
            assert not defined or issubclass(cls, mixin), (cls, defined, mixin)


def test_a_hook_without_its_mixin_is_refused_when_the_class_is_defined():
    with pytest.raises(TypeError, match=r"defines 'prepare', a hook of HasForwardState, without inheriting"):

        class StatefulVariant(Variant):
            name = "stateful"
            requires = Requirements(tokens=("sequence",))

            def prepare(self, inputs):
                return None

    with pytest.raises(TypeError, match=r"defines 'attach', a hook of AddsParameters"):

        class ParameterVariant(full.FullVariant):
            def attach(self, module, layer_idx):
                pass


def test_forward_state_is_a_typed_dataclass():
    stateful = [c for c in _variant_classes() if issubclass(c, HasForwardState)]
    assert stateful  # longformer
    for cls in stateful:
        (state_type,) = [
            typing.get_args(base)[0]
            for k in cls.__mro__
            for base in vars(k).get("__orig_bases__", ())
            if typing.get_origin(base) is HasForwardState
        ]
        assert issubclass(state_type, ForwardState) and dataclasses.is_dataclass(state_type), cls
        assert inspect.signature(cls.prepare).return_annotation == state_type.__name__, cls
    torch.manual_seed(0)
    model = hfx.patch(BertModel(tiny_bert_config()).eval(), "longformer", window=4, global_tokens=[0])
    masks = ForwardMasks(patch_state(model).variant, ForwardInputs(2, 24, torch.device("cpu")))
    state = masks.prepared(torch.device("cpu"))
    assert type(state).__name__ == "GlobalTokens" and dataclasses.is_dataclass(state)
    assert state.is_global[0, :3].tolist() == [True, False, False]


def test_feature_map_variants_share_one_attend_map_signature():
    base = list(inspect.signature(FeatureMapVariant.attend_map).parameters)
    for cls in _variant_classes():
        if issubclass(cls, FeatureMapVariant) and "attend_map" in vars(cls):
            assert list(inspect.signature(cls.attend_map).parameters) == base, cls


def test_native_flag_is_the_mixin():
    assert set(hf_integration.NATIVE_VARIANTS) == {n for n, c in VARIANTS.items() if issubclass(c, NativeAttention)}
    assert set(hf_integration.NATIVE_VARIANTS) == {"full", "longformer", "neighborhood"}
    assert {row["variant"] for row in supported() if row["native"]} == set(hf_integration.NATIVE_VARIANTS)


def test_patched_modules_and_the_native_path_both_enter_through_attend(monkeypatch):
    calls = []
    original = full.FullVariant.attend
    monkeypatch.setattr(
        full.FullVariant, "attend", lambda self, call: calls.append(call.module) or original(self, call)
    )
    ids, mask = padded_batch()
    torch.manual_seed(0)
    patched = hfx.patch(BertModel(tiny_bert_config()).eval(), "full")
    torch.manual_seed(0)
    native = BertModel(tiny_bert_config()).eval()
    native.set_attn_implementation("hf_flexattn_full")
    with torch.no_grad():
        a = patched(input_ids=ids, attention_mask=mask).last_hidden_state
        layers = len(calls)
        b = native(input_ids=ids, attention_mask=mask).last_hidden_state
    assert layers == patched.config.num_hidden_layers and all(m is not None for m in calls[:layers])
    assert len(calls) == 2 * layers and all(m is None for m in calls[layers:])  # the native call has no module
    real = mask.bool()
    assert torch.allclose(a[real], b[real], atol=1e-5)
