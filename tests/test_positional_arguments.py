"""A patched model takes its arguments as the unpatched one does: by position in the HF forward's own order, by
keyword, or mixed. The arguments passed are read from ``inspect.signature`` of each model type's HF forward (a
new argument in a transformers release is passed too, or the test says it has no value for it), and every output
is compared with the unpatched model's (same weights, a variant that computes what HF computes)."""

import copy
import inspect

import pytest
import torch
from tiny_models import MODEL_TYPES, exact_variant, tiny_model, uses_legacy_natten

import hf_flexattn as hfx
from hf_flexattn.families import MODEL_TYPE_TO_FAMILY

from helpers import generator, rel_err, tol

BATCH, SEQ_LEN = 2, 20


def _text_values(model):
    config = model.config
    g = generator(0)
    ids = torch.randint(5, 100, (BATCH, SEQ_LEN), generator=g)
    mask = torch.ones(BATCH, SEQ_LEN, dtype=torch.long)
    mask[1, 13:] = 0
    ids = ids.masked_fill(mask == 0, config.pad_token_id or 0)
    globals_ = torch.zeros_like(mask)
    globals_[:, 0] = 1
    globals_[0, 9] = 1
    start = 0 if getattr(config, "model_type", "") in ("bert", "albert", "distilbert") else 2
    positions = start + torch.stack([torch.randperm(SEQ_LEN, generator=g) for _ in range(BATCH)])
    embeds = torch.randn(BATCH, SEQ_LEN, getattr(config, "embedding_size", None) or config.hidden_size, generator=g)
    if config.model_type == "distilbert":
        embeds = torch.randn(BATCH, SEQ_LEN, config.dim, generator=g)
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "global_attention_mask": globals_,
        "token_type_ids": torch.randint(0, getattr(config, "type_vocab_size", 2), (BATCH, SEQ_LEN), generator=g),
        "task_type_ids": torch.randint(0, 3, (BATCH, SEQ_LEN), generator=g),
        "position_ids": positions,
        "inputs_embeds": embeds,
    }


def _vision_values(model, original):
    g = generator(0)
    size = 40  # not the config's 32: interpolate_pos_encoding=True matters
    pixels = torch.randn(BATCH, 3, size, size, generator=g)
    with torch.no_grad():
        seq_len = original(pixels, interpolate_pos_encoding=True).last_hidden_state.shape[1]
    mask = torch.ones(BATCH, seq_len, dtype=torch.long)
    mask[1, -5:] = 0
    prefix = seq_len - (size // model.config.patch_size) ** 2
    return {
        "pixel_values": pixels,
        "bool_masked_pos": torch.rand(BATCH, seq_len - prefix, generator=g) < 0.3,
        "interpolate_pos_encoding": True,
        "attention_mask": mask,
    }


# what each forward argument is given (by name); the arguments themselves, and their order, are the signature's
COMMON = {
    "output_attentions": True,  # False where the patched model's attentions are not HF's (ATTENTIONS_DIFFER)
    "output_hidden_states": True,
    "return_dict": False,  # not the default: a tuple comes back if the argument was read
    "encoder_hidden_states": None,  # decoder-only arguments: an encoder has none
    "encoder_attention_mask": None,
    "cache": None,
    "past_key_values": None,  # the name transformers before 5.25 gives the cache argument (the oldest end: 5.21)
    "use_cache": False,
}


# documented: patched Longformer returns (B, H, N, N) attentions and no global_attentions; patched Swin v2 blocks
# return none; DiNAT's reference (NATTEN's legacy ops written out) returns none
ATTENTIONS_DIFFER = ("longformer", "swinv2", "dinat")


def _values(model_type, original):
    family = MODEL_TYPE_TO_FAMILY[model_type]
    common = {**COMMON, "output_attentions": family.name not in ATTENTIONS_DIFFER}
    if family.name in ("swin", "swinv2", "dinat"):  # hierarchical: a padded grid, no token mask
        pixels = torch.randn(BATCH, 3, 36, 36, generator=generator(0))
        values = {"pixel_values": pixels, "interpolate_pos_encoding": True}
        values["bool_masked_pos"] = torch.rand(BATCH, 18 * 18, generator=generator(1)) < 0.3
    elif family.spatial_dims == 2:
        values = _vision_values(original, original)
    else:
        values = _text_values(original)
    return {**common, **values}


def _positional_call(forward, values, keyword_from=None, omit=()):
    """``forward``'s parameters in order, each given its value: positionally up to ``keyword_from``, then by keyword;
    an argument in ``omit`` is given as None (positionally) or left out (by keyword)."""
    parameters = [p for p in inspect.signature(forward).parameters.values() if p.name != "self"]
    args, kwargs = [], {}
    for index, parameter in enumerate(parameters):
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            continue
        assert parameter.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD, parameter
        assert parameter.name in values, (
            f"no value for {forward.__qualname__}'s {parameter.name!r}: add it to the table"
        )
        value = None if parameter.name in omit else values[parameter.name]
        if keyword_from is None or index < keyword_from:
            args.append(value)
        elif parameter.name not in omit:
            kwargs[parameter.name] = value
    return args, kwargs


def _tensors(output):
    """Every tensor of an output (a tuple or a ModelOutput), in order, nested tuples flattened."""
    items = output.to_tuple() if hasattr(output, "to_tuple") else output
    flat = []
    for item in items:
        if isinstance(item, torch.Tensor):
            flat.append(item)
        elif isinstance(item, tuple | list):
            flat.extend(_tensors(item))
    return flat


def _pair(model_type, monkeypatch):
    original = tiny_model(model_type, mask_token=True)
    variant, options = exact_variant(model_type)
    patched = hfx.patch(copy.deepcopy(original), variant, **options)
    if uses_legacy_natten(model_type):
        from test_family_dinat import MODELING, legacy_neighborhood_attention

        monkeypatch.setattr(MODELING.NeighborhoodAttention, "forward", legacy_neighborhood_attention)
    return original, patched


def _real_rows(tensor, real):
    """The rows of real tokens (HF computes padded query rows its own way; a patched model's are unspecified)."""
    if real is None:
        return tensor
    batch, seq_len = real.shape
    if tensor.dim() == 4 and tensor.shape[0] == batch and tensor.shape[2] == seq_len:  # attentions (B, H, N, M)
        return tensor.transpose(1, 2)[real]
    if tensor.dim() >= 2 and tuple(tensor.shape[:2]) == (batch, seq_len):
        return tensor[real]
    return tensor


def _assert_same(got, want, real, where):
    got, want = _tensors(got), _tensors(want)
    assert len(got) == len(want), f"{where}: {len(got)} output tensors, HF gives {len(want)}"
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        assert a.shape == b.shape, f"{where}: output {i} has shape {tuple(a.shape)}, HF's {tuple(b.shape)}"
        error = rel_err(_real_rows(a, real), _real_rows(b, real))
        assert error <= tol(2e-5), f"{where}: output {i} differs from HF's (relative error {error:.2e})"


# the argument that decides between the two token inputs: an input of the other kind is left out
TOKEN_INPUTS = {"input_ids": "inputs_embeds", "inputs_embeds": "input_ids"}


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_every_argument_by_position_and_mixed_equals_unpatched(model_type, monkeypatch):
    original, patched = _pair(model_type, monkeypatch)
    values = _values(model_type, original)
    forward = type(original).forward
    names = [n for n in inspect.signature(forward).parameters if n not in ("self", "kwargs")]
    # all by position; the first one by position, the rest by keyword; half and half
    splits = (None, 1, len(names) // 2)
    if "input_ids" in names:  # and once with inputs_embeds (input_ids given as None)
        calls = [("input_ids", "inputs_embeds", split) for split in splits] + [("inputs_embeds", "input_ids", None)]
    else:
        calls = [(None, None, split) for split in splits]
    mask = values.get("attention_mask")
    real = None if mask is None or "attention_mask" not in names else mask.bool()
    with torch.no_grad():
        for given, omitted, keyword_from in calls:
            args, kwargs = _positional_call(forward, values, keyword_from, omit=(omitted,) if omitted else ())
            where = f"{model_type}: {len(args)} by position, {sorted(kwargs)} by keyword, {given or ''}"
            # what the arguments mean is what the signature says: HF called with every argument by name (some HF
            # forwards refuse some positions themselves: BertModel's decorator passes a positional use_cache twice)
            by_name = {**dict(zip(names, args, strict=False)), **kwargs}
            _assert_same(patched(*args, **kwargs), original(**by_name), real, where)
