"""Helpers shared by the tests: tiny configs, padded batches, snapshots, and the plainly written dense references
(materialised mask or bias + softmax) that every variant is compared with."""

import copy
import itertools
import math
import os

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from hf_flexattn.kernels.band import NATTEN_1D_MIN_TOKENS
from hf_flexattn.kernels.halo import HALO_MIN_CELLS
from hf_flexattn.masks import block_mask_to_dense_blocks

DEVICE = torch.device(os.environ.get("HF_FLEXATTN_TEST_DEVICE", "cpu"))
# fp32 on a GPU sums in other orders (and its flex kernel tiles differently): comparisons allow 10× the CPU bound
TOLERANCE_SCALE = 1.0 if DEVICE.type == "cpu" else 10.0


# sizes just past CPU's crossovers (kernels/band.py, kernels/halo.py), so tests follow the rules when they move: the
# smallest square patch grid the halo plan takes, and the fewest tokens NATTEN 1D's band takes (small kernels; a
# dilation d needs d times as many: each dilation group is a sequence of its own)
HALO_SIDE = math.isqrt(HALO_MIN_CELLS - 1) + 1
NATTEN_1D_TOKENS = NATTEN_1D_MIN_TOKENS


def tol(bound: float) -> float:
    """A comparison bound measured on CPU, scaled for the test device."""
    return bound * TOLERANCE_SCALE


def generator(seed: int) -> torch.Generator:
    """A seeded generator on the test device (random draws must be made where tensors are created)."""
    return torch.Generator(device=DEVICE).manual_seed(seed)


def use_cuda_policy(monkeypatch) -> None:
    """CPU tensors take CUDA's paths from here on (the ``kernels.device_kind`` seam), with
    ``kernels.flex.flex_reference`` (dense, trains on CPU) standing in for the compiled flex kernel."""
    from hf_flexattn import kernels

    monkeypatch.setattr(kernels, "device_kind", lambda tensor: "cuda")
    monkeypatch.setattr(kernels.flex, "compiled_flex_attention", lambda dynamic: kernels.flex.flex_reference)


def reference_attention(query, key, value, mask=None, bias=None, scale=None):
    """Plain softmax attention with a materialised boolean ``mask`` and additive ``bias``; rows with no allowed
    key give zeros, as FlexAttention does. The reference every kernel and variant is compared with."""
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    scores = query @ key.transpose(-1, -2) * scale
    if bias is not None:
        scores = scores + bias
    if mask is not None:
        scores = scores.masked_fill(~mask, -math.inf)
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    return probs @ value


def tiny_bert_config(**overrides):
    from transformers import BertConfig

    kw = dict(
        vocab_size=120,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=512,
        attn_implementation="eager",
    )
    kw.update(overrides)
    return BertConfig(**kw)


def save_tiny_bert(path, tokenizer, build, **config) -> str:
    """A tiny random BERT (seed 0) with ``tokenizer``'s vocabulary, made by ``build(config)`` (a head class, or a
    function of the config) and saved at ``path`` with the tokenizer, as a local checkpoint for the scripts."""
    torch.manual_seed(0)
    build(tiny_bert_config(vocab_size=tokenizer.vocab_size, attn_implementation=None, **config)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def tiny_roberta_config(**overrides):
    from transformers import RobertaConfig

    kw = dict(
        vocab_size=120,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=514,
        pad_token_id=1,
        attn_implementation="eager",
    )
    kw.update(overrides)
    return RobertaConfig(**kw)


def tiny_vit_config(**overrides):
    from transformers import ViTConfig

    kw = dict(
        image_size=32,
        patch_size=4,
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        num_labels=5,
        attn_implementation="eager",
    )
    kw.update(overrides)
    return ViTConfig(**kw)


# a one-stage Swin with 4x4 windows, for tests that need Swin's window algorithm and bias
TINY_SWIN = dict(patch_size=2, embed_dim=16, depths=[2], num_heads=[2], window_size=4, drop_path_rate=0.0)


def tiny_model_and_input(family, size, **config):
    """A tiny random model of ``family`` ("bert", "vit" or "swin"; seed 0) and an unpadded batch of 2 inputs of
    ``size`` (tokens, or patches per side)."""
    from transformers import BertModel, SwinConfig, SwinModel, ViTModel

    torch.manual_seed(0)
    if family == "bert":
        cfg = tiny_bert_config(max_position_embeddings=max(512, size), **config)
        return BertModel(cfg), dict(input_ids=torch.randint(5, 120, (2, size)))
    if family == "vit":
        pixels = torch.randn(2, 3, 4 * size, 4 * size)
        model = ViTModel(tiny_vit_config(**config), add_pooling_layer=False)
        return model, dict(pixel_values=pixels, interpolate_pos_encoding=True)
    model = SwinModel(SwinConfig(image_size=2 * size, **TINY_SWIN, **config), add_pooling_layer=False)
    return model, dict(pixel_values=torch.randn(2, 3, 2 * size, 2 * size))


def no_dropout(model):
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
        if hasattr(model.config, name):
            setattr(model.config, name, 0.0)
    for module in model.modules():
        for name in ("attention_dropout", "dropout", "drop_prob"):  # some HF modules keep a float (drop path too)
            if isinstance(getattr(module, name, None), float):
                setattr(module, name, 0.0)
    return model


def padded_batch(batch=3, seq_len=24, vocab=120, lengths=None, seed=0):
    g = generator(seed)
    ids = torch.randint(5, vocab, (batch, seq_len), generator=g)
    lengths = lengths or [seq_len - 7 * i for i in range(batch)]
    mask = (torch.arange(seq_len)[None, :] < torch.tensor(lengths)[:, None]).long()
    return ids, mask


def rel_err(a, b, floor=1e-4):
    """‖a − b‖ / ‖b‖, with ‖b‖ floored: gradients that are zero in exact arithmetic (a key bias under softmax)
    are float noise in both models, and their relative error means nothing."""
    return ((a - b).norm() / b.norm().clamp_min(floor)).item()


def snapshot(model):
    """Everything patch must leave untouched when it fails: classes, parameters, buffers, config, hooks."""
    return (
        [type(m) for m in model.modules()],
        {k: v.clone() for k, v in model.state_dict().items()},
        copy.deepcopy(model.config.to_dict()),
        sum(len(m._forward_pre_hooks) for m in model.modules()),
    )


def assert_same_snapshot(a, b):
    assert a[0] == b[0]
    assert a[1].keys() == b[1].keys()
    for k in a[1]:
        assert torch.equal(a[1][k], b[1][k]), k
    assert a[2] == b[2]
    assert a[3] == b[3]


def check_block_structure(block_mask, dense):
    """Every allowed entry lies in a listed block; every 'full' block is entirely allowed."""
    B, H, N, M = dense.shape
    bq, bk = block_mask.BLOCK_SIZE
    partial, full = block_mask_to_dense_blocks(block_mask)
    partial, full = partial.expand(B, H, -1, -1), full.expand(B, H, -1, -1)
    nq, nk = partial.shape[-2:]
    padded = torch.zeros(B, H, nq * bq, nk * bk, dtype=torch.bool)
    padded[:, :, :N, :M] = dense
    blocks = padded.view(B, H, nq, bq, nk, bk)
    any_true = blocks.any(-1).any(3)
    inside = torch.zeros(nq * bq, nk * bk, dtype=torch.bool)
    inside[:N, :M] = True
    all_true = (blocks | ~inside.view(1, 1, nq, bq, nk, bk)).all(-1).all(3)
    assert not (partial & full).any(), "a block is listed both partial and full"
    assert ((partial | full) >= any_true).all(), "an allowed entry falls in a block the BlockMask skips"
    assert (full <= all_true).all(), "a block marked full has masked entries"
    return partial, full, any_true, all_true


def dense_bert_layer(model, ids, rule):
    """Output of a one-layer patched BERT written densely: HF's own projections, a materialised ``rule``
    (N×N or B×1×N×N bool) + softmax, HF's own output and feed-forward."""
    layer = model.encoder.layer[0]
    attn = layer.attention.self
    hidden = model.embeddings(input_ids=ids)
    batch, n, width = hidden.shape
    heads = lambda x: x.view(batch, n, attn.num_attention_heads, attn.attention_head_size).transpose(1, 2)
    ctx = reference_attention(heads(attn.query(hidden)), heads(attn.key(hidden)), heads(attn.value(hidden)), rule)
    attended = layer.attention.output(ctx.transpose(1, 2).reshape(batch, n, width), hidden)
    return layer.output(layer.intermediate(attended), attended)


def assert_equals_full(variant, seq_len, **options):
    """A variant whose pattern covers the whole (padded) sequence gives ``full``'s outputs on real tokens."""
    from transformers import BertModel

    import hf_flexattn as hfx

    torch.manual_seed(0)
    base = BertModel(tiny_bert_config()).eval()
    full, wide = copy.deepcopy(base), copy.deepcopy(base)
    hfx.patch(full, "full")
    hfx.patch(wide, variant, **options)
    ids, mask = padded_batch(seq_len=seq_len)
    with torch.no_grad():
        a = full(input_ids=ids, attention_mask=mask).last_hidden_state
        b = wide(input_ids=ids, attention_mask=mask).last_hidden_state
    assert (a - b)[mask.bool()].abs().max() <= 1e-6


# ------------------------------------------------------------------------------ the rules, entry by entry


def natten_1d_reference(length, kernel_size, dilation):
    """NATTEN 1D, entry by entry: within each dilation group, the k-window centred on the query, shifted
    inward at the ends; a group shorter than k is seen whole."""
    allowed = torch.zeros(length, length, dtype=torch.bool)
    for q in range(length):
        group = [p for p in range(length) if p % dilation == q % dilation]
        k = min(kernel_size, len(group))
        j = group.index(q)
        start = min(max(j - kernel_size // 2, 0), len(group) - k)
        for p in group[start : start + k]:
            allowed[q, p] = True
    return allowed


def natten_2d_reference(rows, cols, kernel, dilation, num_global):
    """NATTEN 2D written out: the product of the clamped 1D rule on each axis; global tokens see and are seen."""

    def axis(i, j, length, k, d):
        if i % d != j % d:
            return False
        group_len = len(range(i % d, length, d))
        k = min(k, group_len)
        start = min(max(i // d - k // 2, 0), group_len - k)
        return start <= j // d < start + k

    n = num_global + rows * cols
    allowed = torch.zeros(n, n, dtype=torch.bool)
    for a, b in itertools.product(range(n), range(n)):
        if a < num_global or b < num_global:
            allowed[a, b] = True
            continue
        (ra, ca), (rb, cb) = divmod(a - num_global, cols), divmod(b - num_global, cols)
        allowed[a, b] = axis(ra, rb, rows, kernel[0], dilation[0]) and axis(ca, cb, cols, kernel[1], dilation[1])
    return allowed


def hf_shift_rule(height, width, window, shift):
    """HF Swin's rule, entry by entry: roll by -shift, partition into windows, and attend only within the
    same window and the same shift region (HF's −100 mask)."""

    def rolled(i, size):
        return (i - shift) % size

    def region(i, size):
        return (i >= size - window) + (i >= size - shift) if shift else 0

    n = height * width
    allowed = torch.zeros(n, n, dtype=torch.bool)
    for a, b in itertools.product(range(n), range(n)):
        (ra, ca), (rb, cb) = divmod(a, width), divmod(b, width)
        ra, ca, rb, cb = rolled(ra, height), rolled(ca, width), rolled(rb, height), rolled(cb, width)
        same_window = ra // window == rb // window and ca // window == cb // window
        same_region = region(ra, height) == region(rb, height) and region(ca, width) == region(cb, width)
        allowed[a, b] = same_window and same_region
    return allowed


def count_batch_masks(monkeypatch) -> list:
    """Record every layer mask a variant binds to a batch (``BatchMask`` built by ``Variant.batch_mask``)."""
    from hf_flexattn.variants import base

    built = []
    original = base.BatchMask
    monkeypatch.setattr(base, "BatchMask", lambda *args, **kwargs: built.append(args) or original(*args, **kwargs))
    return built


class DispatchRecorder(TorchDispatchMode):
    """Every ATen op run inside the block: the device types of every tensor it reads or produces (``devices``), and
    each integer tensor it produces, by op (``integer_outputs``)."""

    def __init__(self):
        super().__init__()
        self.devices: set[str] = set()
        self.integer_outputs: list[tuple[str, torch.dtype]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves((args, kwargs, out)):
            if isinstance(t, torch.Tensor):
                self.devices.add(t.device.type)
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and not t.dtype.is_floating_point and t.dtype != torch.bool:
                self.integer_outputs.append((str(func), t.dtype))
        return out

    @property
    def integer_dtypes(self) -> set[torch.dtype]:
        return {dtype for _, dtype in self.integer_outputs}

    @property
    def int64_ops(self) -> list[str]:
        return [op for op, dtype in self.integer_outputs if dtype == torch.int64]
