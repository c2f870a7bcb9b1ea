"""How many graphs ``torch.compile(model, fullgraph=True)`` makes of a patched model: one tiny model per family, each
variant the family takes, inference and a training step, with and without padding and attention dropout.

Shared by tests/test_compile_graphs.py (CPU tensors under CUDA's policy, dynamo's ``aot_eager`` backend) and
``scripts/gpu_check.py``'s part ``graphs`` (on the GPU, inductor). A patched model must compile as one graph per
forward, and a second length in the same bucket (text) must add none.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

import hf_flexattn as hfx

TEXT_LENGTHS = (40, 45)  # two lengths of one bucket (128 tokens): the second must reuse the first graph
IMAGE = 32
ATTENTION_DROPOUT = 0.1
SMALL = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)


def _text(model_type: str, **extra):
    from transformers import AutoConfig, AutoModel

    def build(dropout: float):
        config = AutoConfig.for_model(model_type, **extra)
        config.attention_probs_dropout_prob = dropout
        config.hidden_dropout_prob = 0.0
        return AutoModel.from_config(config, attn_implementation="eager")

    return build


def _distilbert(dropout: float):
    from transformers import DistilBertConfig, DistilBertModel

    config = DistilBertConfig(
        vocab_size=120, dim=32, n_layers=1, n_heads=2, hidden_dim=64, attention_dropout=dropout, dropout=0.0
    )
    return DistilBertModel(config)


def _modernbert(dropout: float):
    from transformers import ModernBertConfig, ModernBertModel

    config = ModernBertConfig(
        vocab_size=120,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        local_attention=16,
        global_attn_every_n_layers=2,
        attention_dropout=dropout,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        cls_token_id=0,
        sep_token_id=2,
    )
    config._attn_implementation = "eager"
    return ModernBertModel(config)


def _vision(model_type: str, **extra):
    from transformers import AutoConfig, AutoModel

    def build(dropout: float):
        config = AutoConfig.for_model(
            model_type, **SMALL, image_size=IMAGE, patch_size=4, attention_probs_dropout_prob=dropout, **extra
        )
        config.hidden_dropout_prob = 0.0
        return AutoModel.from_config(config, attn_implementation="eager")

    return build


def _clip_vision(dropout: float):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(**SMALL, image_size=IMAGE, patch_size=4, attention_dropout=dropout)
    config._attn_implementation = "eager"
    return CLIPVisionModel(config)


def _hierarchical(model_type: str):
    from transformers import AutoConfig, AutoModel

    def build(dropout: float):
        config = AutoConfig.for_model(
            model_type,
            image_size=IMAGE,
            patch_size=2,
            embed_dim=16,
            depths=[2, 1],
            num_heads=[2, 2],
            window_size=4,
            drop_path_rate=0.0,
            attention_probs_dropout_prob=dropout,
        )
        return AutoModel.from_config(config, attn_implementation="eager")

    return build


def _dinat(dropout: float):
    modeling = hfx.dinat_modeling()
    config = modeling.DinatConfig(
        embed_dim=16,
        depths=[1, 1],
        num_heads=[2, 2],
        kernel_size=3,
        dilations=[[1], [2]],
        patch_size=4,
        drop_path_rate=0.0,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=dropout,
    )
    return modeling.DinatModel(config)


TEXT = dict(vocab_size=120, max_position_embeddings=130, pad_token_id=1, **SMALL)
# family → (builder of a tiny random model given its attention dropout, whether it reads text)
FAMILY_MODELS: dict[str, tuple[Callable, bool]] = {
    "bert": (_text("bert", **TEXT), True),
    "distilbert": (_distilbert, True),
    "albert": (_text("albert", embedding_size=16, **TEXT), True),
    "general_text": (_text("data2vec-text", **TEXT), True),
    "longformer": (_text("longformer", attention_window=[16], sep_token_id=2, **TEXT), True),
    "modernbert": (_modernbert, True),
    "vit": (_vision("vit"), False),
    "dinov2": (_vision("dinov2"), False),
    "beit": (_vision("beit", use_relative_position_bias=True), False),
    "general_vision": (_vision("vit_msn"), False),
    "clip_vision": (_clip_vision, False),
    "swin": (_hierarchical("swin"), False),
    "swinv2": (_hierarchical("swinv2"), False),
    "dinat": (_dinat, False),
}

# tiny options for each variant (the models above have 40-45 tokens or an 8x8 grid)
VARIANT_OPTIONS = {
    "full": {},
    "longformer": dict(window=16, global_tokens=[0]),
    "neighborhood": dict(kernel_size=3),
    "swin": dict(window_size=4),
    "linformer": dict(proj_len=16),
    "performer": dict(num_features=16),
}


def family_variants() -> list[tuple[str, str]]:
    """Every (family, variant) pair hf_flexattn supports, as ``hfx.supported()`` lists them."""
    return [(f, s["variant"]) for s in hfx.supported() for f in s["families"] if f in FAMILY_MODELS]


def variant_options(family: str, variant: str) -> dict:
    if family in ("swin", "swinv2") and variant == "swin":
        return {}  # the checkpoint's windows
    return dict(VARIANT_OPTIONS[variant])


@dataclass
class Scenario:
    """One call of the compiled model: ``mode`` "inference" (eval, no_grad) or "training" (a forward and backward),
    with a padded batch or not, at ``length`` tokens (text)."""

    mode: str
    padded: bool
    length: int = TEXT_LENGTHS[0]


def inputs(family: str, scenario: Scenario, device) -> dict:
    _, text = FAMILY_MODELS[family]
    g = torch.Generator(device=device).manual_seed(scenario.length)
    if not text:
        return {"pixel_values": torch.randn(2, 3, IMAGE, IMAGE, generator=g, device=device)}
    ids = torch.randint(5, 120, (2, scenario.length), generator=g, device=device)
    if not scenario.padded:
        return {"input_ids": ids}
    mask = torch.ones_like(ids)
    mask[1, scenario.length - 11 :] = 0
    return {"input_ids": ids, "attention_mask": mask}


def build_patched(family: str, variant: str, attention_dropout: bool, device) -> torch.nn.Module:
    build, _ = FAMILY_MODELS[family]
    torch.manual_seed(0)
    model = build(ATTENTION_DROPOUT if attention_dropout else 0.0)
    options = variant_options(family, variant)
    return hfx.patch(model.to(device), variant, attention_dropout="standard" if attention_dropout else "off", **options)


def first_output(out) -> torch.Tensor:
    return out.last_hidden_state if getattr(out, "last_hidden_state", None) is not None else out[0]


def run_scenario(model: torch.nn.Module, family: str, scenario: Scenario, device) -> torch.Tensor:
    """One call: the model's first output (inference), or the loss whose backward ran (training)."""
    batch = inputs(family, scenario, device)
    if scenario.mode == "inference":
        model.eval()
        with torch.no_grad():
            return first_output(model(**batch))
    model.train()
    loss = first_output(model(**batch)).float().square().mean()
    loss.backward()
    return loss.detach()


def count_graphs(
    family: str, variant: str, attention_dropout: bool, scenarios: list[Scenario], backend: str, device
) -> list[dict]:
    """Compile one patched model (``fullgraph=True``, dynamic shapes) and run ``scenarios`` in order; per scenario,
    the graphs dynamo added and the seconds it took (compile included), and the eager model's result beside the
    compiled one's (inference, or training without dropout: same numbers expected)."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    model = build_patched(family, variant, attention_dropout, device)
    eager = copy.deepcopy(model)
    compiled = torch.compile(model, fullgraph=True, dynamic=True, backend=backend)
    rows = []
    for scenario in scenarios:
        # dynamo's count of graphs it made (a restarted analysis, e.g. to specialise a float, is not a new graph)
        before = counters["stats"]["unique_graphs"]
        start = time.perf_counter()
        got = run_scenario(compiled, family, scenario, device)
        seconds = time.perf_counter() - start
        want = None
        if scenario.mode == "inference" or not attention_dropout:
            want = run_scenario(eager, family, scenario, device)
        rows.append(
            dict(
                scenario=scenario,
                graphs=counters["stats"]["unique_graphs"] - before,
                seconds=seconds,
                got=got,
                want=want,
            )
        )
    return rows


def representative_variant(family: str) -> str:
    """One masked variant per family for the GPU checks: text with globals (``longformer``) where the family takes it,
    Swin's windows on Swin, the 2D neighborhood elsewhere."""
    supported = {v for f, v in family_variants() if f == family}
    for variant in ("longformer", "swin" if family in ("swin", "swinv2") else "neighborhood", "neighborhood"):
        if variant in supported:
            return variant
    return "full"


def cuda_policy_on_cpu():
    """A context in which CPU tensors take CUDA's paths (the ``kernels.device_kind`` seam), uncompiled flex standing
    in for the compiled kernel, and FlexAttention's op allowed to train on CPU (its reference backward), as the
    tests run it."""
    import contextlib

    import torch.nn.attention.flex_attention as flex_api

    from hf_flexattn import kernels

    @contextlib.contextmanager
    def context():
        saved = (kernels.device_kind, kernels.flex.compiled_flex_attention, flex_api._validate_device)
        kernels.device_kind = lambda tensor: "cuda"
        kernels.flex.compiled_flex_attention = lambda dynamic: kernels.flex.flex_reference
        flex_api._validate_device = lambda *tensors: None
        try:
            yield
        finally:
            kernels.device_kind, kernels.flex.compiled_flex_attention, flex_api._validate_device = saved

    return context()
