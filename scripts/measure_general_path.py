"""Which model types does the general path (hf_flexattn/families/interface.py) reproduce exactly?

For each candidate model type: a tiny random-initialised model (hidden 32, 2 layers, 4 heads; text: a padded batch
of 3 × 24 tokens; images: 2 × 32 px), its recorded attention modules patched with `full` through the general path,
then the outputs (real tokens) and every parameter gradient of a random projection of the last hidden state compared
with the unpatched model. Exact: outputs ≤ 1e-5 and gradients ≤ 1e-4 relative (fp32; gradients that are zero in
exact arithmetic, such as key biases, are skipped). Model types whose attention does not go through transformers'
ALL_ATTENTION_FUNCTIONS fail with the patched model's own check ("no patched attention module reached"). Model types
with a general-path family of their own (ModernBERT: a fused Wqkv and sliding-window layers; the CLIP/SigLIP vision
towers: the scale kept as `scale`) are measured through that family, whose `full` is the model's own pattern.

    python scripts/measure_general_path.py                 # the candidates below
    python scripts/measure_general_path.py esm vit_msn     # some of them
"""

from __future__ import annotations

import argparse
import copy

import torch
from transformers import AutoConfig, AutoModel

import hf_flexattn as hfx
from hf_flexattn.families import MODEL_TYPE_TO_FAMILY
from hf_flexattn.families.general import GeneralFamily, recorded_attention_class
from hf_flexattn.families.tokens import PatchGridTokens, TextTokens

TEXT = [
    "bert", "roberta", "xlm-roberta", "camembert", "electra", "distilbert", "albert", "data2vec-text", "ernie",
    "xlm-roberta-xl", "roberta-prelayernorm", "splinter", "esm", "nomic_bert", "mobilebert", "megatron-bert", "mpnet",
    "rembert", "ibert", "layoutlm", "luke", "canine", "convbert", "big_bird", "modernbert", "deberta", "deberta-v2",
    "longformer",
]  # fmt: skip
VISION = [
    "vit", "deit", "dinov2", "dinov2_with_registers", "beit", "vit_mae", "vit_msn", "ijepa", "data2vec-vision",
    "vitdet", "clip_vision_model", "siglip_vision_model",
]  # fmt: skip
# on the general path through a family of their own (families/modernbert.py, families/clip.py)
OWN_FAMILY = ("modernbert", "clip_vision_model", "siglip_vision_model")
SMALL = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64}


class Probe(GeneralFamily):
    """The general text or vision family, for one candidate model type (``prefix`` tokens before its grid)."""

    def __init__(self, *, vision: bool, prefix: int = 0):
        super().__init__()
        self.name = "general_vision" if vision else "general_text"
        self.tokens = PatchGridTokens(prefix_tokens=lambda config: prefix) if vision else TextTokens()


def measure(model_type: str) -> str:
    vision = model_type in VISION
    extra = (
        {"image_size": 32, "patch_size": 4}
        if vision
        else {"vocab_size": 120, "max_position_embeddings": 64, "pad_token_id": 1}
    )
    config = AutoConfig.for_model(model_type, **SMALL, **extra)
    torch.manual_seed(0)
    model = AutoModel.from_config(config, attn_implementation="eager").eval()
    for module in model.modules():  # no dropout: training forwards must be comparable
        for name, value in vars(module).items():
            if isinstance(value, float) and ("dropout" in name or "drop_prob" in name):
                setattr(module, name, 0.0)
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    attention_class = recorded_attention_class(model)
    if attention_class is None:
        return "not on the general path (records no attention class)"
    generator = torch.Generator().manual_seed(0)
    if vision:
        batch = {"pixel_values": torch.randn(2, 3, 32, 32, generator=generator)}
        real = None
    else:
        ids = torch.randint(5, 100, (3, 24), generator=generator)
        mask = (torch.arange(24)[None] < torch.tensor([24, 17, 10])[:, None]).long()
        batch, real = {"input_ids": ids.masked_fill(mask == 0, 1), "attention_mask": mask}, mask.bool()
    prefix = 0
    if vision:
        with torch.no_grad():
            tokens = model(**batch).last_hidden_state.shape[1]
        if tokens < 64:
            return f"not a patch grid: the encoder sees {tokens} tokens for 64 patches (random patch masking)"
        prefix = tokens - 64
    registered = MODEL_TYPE_TO_FAMILY.get(config.model_type)
    if model_type not in OWN_FAMILY:
        MODEL_TYPE_TO_FAMILY[config.model_type] = Probe(vision=vision, prefix=prefix)
    try:
        patched = hfx.patch(copy.deepcopy(model), "full")
        with torch.no_grad():
            want, got = model(**batch).last_hidden_state, patched(**batch).last_hidden_state
        forward = ((want - got) if real is None else (want - got)[real]).abs().max().item()
        model.train()
        patched.train()
        weights = torch.randn(want.shape, generator=generator) * (1 if real is None else real[..., None])
        (model(**batch).last_hidden_state * weights).sum().backward()
        (patched(**batch).last_hidden_state * weights).sum().backward()
        worst = 0.0
        for pw, pg in zip(model.parameters(), patched.parameters()):
            if pw.grad is not None and pw.grad.norm() >= 1e-5:  # below: zero in exact arithmetic (key biases)
                worst = max(worst, ((pg.grad - pw.grad).norm() / pw.grad.norm()).item())
    except Exception as err:
        return f"fails: {type(err).__name__}: {str(err).splitlines()[0][:110]}"
    finally:
        if registered is None:
            MODEL_TYPE_TO_FAMILY.pop(config.model_type, None)
        else:
            MODEL_TYPE_TO_FAMILY[config.model_type] = registered
    verdict = "EXACT" if forward <= 1e-5 and worst <= 1e-4 else "DIFFERS"
    return f"{verdict}  outputs {forward:.1e}, gradients {worst:.1e} ({attention_class.__name__})"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_types", nargs="*", default=TEXT + VISION, help="model types to measure")
    for model_type in parser.parse_args().model_types:
        try:
            result = measure(model_type)
        except Exception as err:
            result = f"cannot build a tiny model here: {type(err).__name__}: {str(err).splitlines()[0][:90]}"
        print(f"{model_type:24s} {result}", flush=True)


if __name__ == "__main__":
    main()
