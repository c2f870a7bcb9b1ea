"""Attention weights and the patched config, as transformers' own machinery uses them: ``config.output_attentions =
True`` is accepted while patched, the returned attention weights are in the autograd graph (their gradient is
eager's), ``set_attn_implementation`` to another implementation is refused at the call, and a copied, unpickled or
derived config stays consistent. (What transformers' common model tests, ``ModelTesterMixin``, found on patched
models, as small checks CI runs; the held-out run itself: tests/held_out/run_transformers_common.sh.)"""

import copy
import pickle

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM, BertModel, ViTModel

import hf_flexattn as hfx

from helpers import no_dropout, tiny_bert_config, tiny_vit_config

LOCAL_OPTIONS = {"full": {}, "longformer": {"window": 4, "global_tokens": [0]}, "neighborhood": {"kernel_size": 3}}


def _bert(cls=BertModel, **config):
    torch.manual_seed(0)
    return cls(tiny_bert_config(**config)).eval()


def _text_batch():
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(1, 100, (2, 12), generator=generator)
    attention_mask = torch.ones(2, 12, dtype=torch.long)
    attention_mask[1, 7:] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def _gradients(model, inputs, output_attentions=True):
    """The attention weights' gradients (``retain_grad``) and the parameters', for a loss on the real tokens."""
    out = model(**inputs, output_attentions=output_attentions)
    if output_attentions:
        for weights in out.attentions:
            weights.retain_grad()
    real = inputs["attention_mask"][..., None] if "attention_mask" in inputs else 1
    (out.last_hidden_state * real).pow(2).sum().backward()
    weight_grads = [w.grad for w in out.attentions] if output_attentions else None
    parameter_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    return weight_grads, parameter_grads


def test_config_output_attentions_is_accepted_while_patched():
    eager = _bert(BertForMaskedLM, attn_implementation="sdpa")
    model = hfx.patch(copy.deepcopy(eager), "full")
    model.config.output_attentions = True  # transformers refuses this for every implementation but eager
    inputs = _text_batch()
    with torch.no_grad():
        attentions = model(**inputs).attentions
    eager.set_attn_implementation("eager")
    eager.config.output_attentions = True
    with torch.no_grad():
        expected = eager(**inputs).attentions
    assert len(attentions) == len(expected) == 2
    for got, want in zip(attentions, expected):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)

    hfx.unpatch(model)  # weights still asked for: back to eager, the implementation of transformers that gives them
    assert type(model.config) is type(eager.config)
    assert model.config._attn_implementation == "eager" and model.config.output_attentions
    with torch.no_grad():
        assert len(model(**inputs).attentions) == 2


def test_patch_keeps_a_config_that_asked_for_weights_and_unpatch_restores_its_implementation():
    model = _bert(attn_implementation="eager")
    model.config.output_attentions = True
    hfx.patch(model, "full")
    assert model.config.output_attentions
    model.config.output_attentions = False
    hfx.unpatch(model)
    assert model.config._attn_implementation == "eager" and not model.config.output_attentions


@pytest.mark.parametrize("variant", ["full", "longformer", "neighborhood"])
def test_attention_weights_are_in_the_autograd_graph(variant):
    # float64: the gradients with and without weights sum the same terms in other orders (float32 leaves 1e-5)
    eager = no_dropout(_bert()).double()
    model = hfx.patch(copy.deepcopy(eager), variant, **LOCAL_OPTIONS[variant])
    inputs = _text_batch()
    weight_grads, parameter_grads = _gradients(model, inputs)
    assert all(g is not None for g in weight_grads)
    # asking for the weights changes no gradient (the output is not counted twice through them)
    _, without_weights = _gradients(model, inputs, output_attentions=False)
    assert parameter_grads.keys() == without_weights.keys()
    for name in parameter_grads:
        torch.testing.assert_close(parameter_grads[name], without_weights[name], atol=1e-12, rtol=1e-9, msg=name)
    if variant == "full":  # the weights' own gradient is eager's (padded key columns included)
        expected, _ = _gradients(eager, inputs)
        for got, want in zip(weight_grads, expected):
            torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-9)


def test_vit_attention_weights_are_in_the_autograd_graph():
    torch.manual_seed(0)
    eager = no_dropout(ViTModel(tiny_vit_config()).eval())
    model = hfx.patch(copy.deepcopy(eager), "full")
    inputs = {"pixel_values": torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))}
    got, _ = _gradients(model, inputs)
    expected, _ = _gradients(eager, inputs)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_set_attn_implementation_is_refused_at_the_call(implementation):
    model = hfx.patch(_bert(BertForMaskedLM), "full")
    with pytest.raises(ValueError, match=f"attn_implementation='{implementation}'.*hf_flexattn.unpatch"):
        model.set_attn_implementation(implementation)
    assert model.config._attn_implementation == "hf_flexattn"
    with torch.no_grad():
        model(**_text_batch())  # still the patched model
    hfx.unpatch(model)
    model.set_attn_implementation(implementation)  # once unpatched, as for any model
    assert model.config._attn_implementation == implementation


def test_a_copied_or_unpickled_patched_model_keeps_a_patched_config():
    model = hfx.patch(_bert(BertForMaskedLM), "full")
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert clone.config is clone.bert.config and type(clone.config) is type(model.config)
        clone.config.output_attentions = True
        with torch.no_grad():
            assert len(clone(**_text_batch()).attentions) == 2
        with pytest.raises(ValueError, match=r"hf_flexattn\.unpatch"):
            clone.set_attn_implementation("sdpa")


def test_a_new_config_or_model_from_a_patched_config_is_made_freely():
    model = hfx.patch(_bert(), "full")
    assert type(model.config)(attn_implementation="sdpa")._attn_implementation == "sdpa"
    assert type(model.config).from_dict(model.config.to_dict()).num_hidden_layers == 2
    # a copy of the config alone is a plain config: a new model from it, with another implementation, is not patched
    fresh = BertModel._from_config(copy.deepcopy(model.config), attn_implementation="eager")
    assert not hfx.is_patched(fresh) and fresh.config._attn_implementation == "eager"
    # a new model from the config itself (transformers' _from_config sets the implementation on the config it gets)
    other = BertModel._from_config(model.config, attn_implementation="eager")
    assert not hfx.is_patched(other) and type(other.config) is BertConfig
    with pytest.raises(ValueError, match="attn_implementation='eager' cannot take effect"):
        model(**_text_batch())  # the patched model no longer has a patched config: said at its next forward
    # a model made from the patched class is patched (and unpatched) as any other
    made = type(model)(tiny_bert_config())
    hfx.patch(made, "neighborhood", kernel_size=3)
    hfx.unpatch(made)
    assert type(made) is BertModel
    BertModel(tiny_bert_config(attn_implementation="sdpa"))  # other models are not affected
