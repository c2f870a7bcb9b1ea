"""Mutation testing of hf_flexattn's own code (mutmut), opt-in: one command runs it and writes the report.

    pip install -e ".[dev,mutation]"
    python scripts/mutation.py                              # the default packages (mods, masks), then the report
    python scripts/mutation.py --packages mods              # one package
    python scripts/mutation.py --packages kernels.windows   # one module of a larger package
    python scripts/mutation.py --resume                     # run only the mutants a stopped run did not reach
    python scripts/mutation.py --survivors                  # after new tests: re-run only the surviving mutants
    python scripts/mutation.py --report-only                # rewrite the report from the committed results

mutmut copies the package into a scratch folder (``build/mutation/<packages>/mutants``, ignored by git), makes every
mutant of the selected modules' functions, runs the selected tests once to record which test calls which function,
then runs each mutant against only the tests that call its function (``-x``: the first failure kills it). The tests
mutmut may choose from are the fast files mapped to each module below (``TESTS``): the selection per mutant is
mutmut's, from that map. Everything runs under ``nice -n 19`` with one thread per process, one module at a time
(mutmut keeps each mutant's result as it comes, so a stopped run loses nothing and ``--resume`` goes on from there).

Each run's results are kept in ``docs/mutation_results.json`` (committed: per module, mutmut's result for every mutant,
the hash of every mutated function and the diff of every mutant not killed), and a fresh scratch folder starts from
them: mutmut keeps a result while its function hashes the same, so ``--resume`` and ``--survivors`` work on a fresh
clone, and only the modules run replace their entries. The report (``docs/mutation_report.md`` unless ``--report``
says otherwise) is built from that file, every module in it: the commit, command and machine of each run whose results
it holds, the score per module and over all, and every surviving mutant with its diff: each survivor is either argued
equivalent in ``EQUIVALENT`` below (matched on its function and the mutated line, so that it outlives renumbering)
or listed as not handled. The score counts killed mutants (and timeouts) over the non-equivalent ones.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "docs" / "mutation_results.json"  # every module's last results, committed beside the report

# module (dotted, under hf_flexattn) → the fast test files (or test ids) that exercise it; a package key expands to
# its modules. mutmut runs each mutant against the tests among these that call the mutated function.
_MODS_TESTS = ["tests/test_mods.py", "tests/test_ops.py"]
_MASKS_TESTS = ["tests/test_masks_edges.py", "tests/test_masks.py", "tests/test_ops.py"]
# the tests of test_linear_variants.py that patch a model (the others test the kernels alone), without its compile
# test: mutmut's call recording (a ContextVar read in every mutated function) breaks its fullgraph=True trace
_LINEAR_TESTS = [
    f"tests/test_linear_variants.py::{name}"
    for name in (
        "test_linformer_with_identity_projections_equals_full",
        "test_outputs_at_real_tokens_do_not_depend_on_padding",
        "test_linformer_gradients_reach_E_and_F_on_cpu",
        "test_linformer_share_kv_has_one_matrix_and_vit_works",
        "test_performer_in_a_patched_model_approaches_softmax_attention",
        "test_performer_eval_is_deterministic_and_training_redraws_on_schedule",
        "test_save_and_reload_reproduces_outputs",
        "test_unpatch_removes_the_added_weights_and_restores_the_model",
        "test_bad_options_name_the_call_they_were_given_to",
        "test_linformer_projects_to_as_many_slots_as_the_model_has_tokens",
        "test_linformer_layer_gives_the_kernel_its_scale_and_padding_and_so_do_its_probabilities",
        "test_linformer_projections_take_the_models_dtype",
        "test_performer_warns_once_that_the_models_attention_dropout_cannot_be_applied",
        "test_performer_probabilities_of_every_query_row_sum_to_one_beside_a_much_larger_row",
    )
] + [
    "tests/test_real_use.py::test_output_attentions_of_linformer_and_performer_are_their_own_matrices",
    "tests/test_patching.py::test_failure_half_way_leaves_the_model_as_it_was",  # detach, undoing a failed patch
    "tests/test_bad_input.py",
    "tests/test_checkpoint_layout.py",
]
TESTS = {
    "mods.relative_position": _MODS_TESTS,
    "mods.relative_position_with_cls": _MODS_TESTS,
    "mods.continuous_position": _MODS_TESTS,
    "masks.core": _MASKS_TESTS,
    "masks.common": _MASKS_TESTS,
    "masks.natten": _MASKS_TESTS,
    "masks.windows": _MASKS_TESTS,
    "masks.batch": _MASKS_TESTS,
    # the package's own module (choose_path, attend, the device policy): mutmut names its mutants without
    # ``__init__`` (``hf_flexattn.kernels.x_choose_path__mutmut_1``), see ``mutant_pattern``
    "kernels.__init__": ["tests/test_kernels.py", "tests/test_backend_option.py", "tests/test_cuda_policy_dtypes.py"],
    "kernels.dense": ["tests/test_kernels.py", "tests/test_ops.py"],
    "kernels.linformer": ["tests/test_linear_variants.py"],
    "kernels.performer": ["tests/test_linear_variants.py", "tests/test_ops.py"],
    "kernels.windows": ["tests/test_tiles.py", "tests/test_kernels.py"],
    # not its compile tests: mutmut's call-recording trampoline (a ContextVar set and reset around each call) makes
    # dynamo trace the mask_mod to None, so the recording run fails; and they take minutes. The tests below check the
    # keep mask's statistics and the output and gradients against the dense reference, under CUDA's policy.
    "kernels.flex_dropout": [
        f"tests/test_flex_dropout.py::{name}"
        for name in (
            "test_the_keep_mask_keeps_each_entry_with_probability_1_minus_p",
            "test_the_keep_scale_is_1_over_1_minus_the_applied_p",
            "test_the_keep_mask_computes_in_int32_on_0_dim_int32_indices",
            "test_output_and_gradients_match_the_dense_reference_given_the_same_keep_mask",
            "test_dropout_preserves_each_rows_probability_mass_in_expectation",
            "test_the_mix_is_lowbias32_on_every_int32_word",
            "test_the_keep_mask_is_the_documented_hash_and_keeps_entries_at_the_threshold",
            "test_the_seed_is_an_int32_draw_on_the_device_asked_from_a_wide_range",
            "test_the_kept_block_mask_keeps_the_patterns_blocks_lengths_and_heads",
            "test_flex_dropout_attention_uses_the_seed_given_the_query_dtype_and_the_callers_flex_options",
        )
    ],
    "kernels.halo": ["tests/test_tiles.py", "tests/test_tile_chunks.py"],
    "kernels.band": ["tests/test_tiles.py", "tests/test_tile_chunks.py"],
    # NATTEN's own kernels: its tests run where NATTEN is installed (the bench extra), else skip and leave those
    # mutants untested; CPU NATTEN (its flex backend, no libnatten) runs them
    "kernels.natten_backend": ["tests/test_backend_option.py"],
    "kernels.block_sparse": ["tests/test_kernels.py", "tests/test_attention_dropout.py"],
    "kernels.tiles": ["tests/test_tiles.py", "tests/test_tile_chunks.py"],
    # compiled flex, its backends and its compile guard: the flex path against the reference, the backend option
    # (flex_reference standing in for the CUDA kernel), the compile counts over random lengths
    "kernels.flex": [
        "tests/test_kernels.py",
        "tests/test_backend_option.py",
        "tests/test_device_readiness.py",
        # the limit on compiles, reached for real (two compiles of a 1,100-token model, MAX_COMPILES=1)
        "tests/test_integration.py::test_compile_limit_raises_instead_of_silently_running_unfused",
    ],
    # variants: their own tests on tiny models (against the unpatched model or the kernel's closed form), the bad
    # options they refuse, and the weights they add (names, save and reload)
    "variants.linformer": _LINEAR_TESTS,
    "variants.performer": _LINEAR_TESTS,
    "variants.full": ["tests/test_full.py", "tests/test_family_modernbert.py", "tests/test_checkpoint_layout.py"],
}
DEFAULT_PACKAGES = ["mods", "masks"]

# Surviving mutants argued equivalent (no input can tell them from the code): (module, function, mutated line as
# mutmut writes it, stripped) → why. A survivor whose line is not here is reported as not handled.
_INT64_ARANGE = "``torch.arange`` of ints is int64 already"
_FLOOR_OF_FRACTION = (
    "x = n + f with n an integer and 0 ≤ f < 1 (a position divided by the columns, or a key of the query's dilation "
    "group divided by the dilation): floor((x + a)/w) = floor((n + a)/w) for integers a, w, and x compares with "
    "integer bounds as n does"
)
_WINDOW_KEY = (
    "any key that sorts by a value per window, then row, then column lists each window's tokens together in "
    "row-major order (two windows sharing a value lie in different bands of rows, which the row separates); the "
    "windows' order among themselves is free: the order only gathers and scatters"
)
_KV_AXIS = "``BlockGrid.per_block`` reads every axis but ``'q'`` as the key axis"
_NAME_OF_RULE = "a Mask given no name takes its rule's function name, which is the name dropped here"
_GROUPING_ONLY = (
    "it only changes how query blocks are grouped into chunks (hence memory and speed): each row gathers its own "
    "keys whatever its chunk, a chunk wider than the row adds only slots past the row's count, which are invalid "
    "and masked out (exact zeros in softmax and products), and dropout stays a fresh per-chunk draw regenerated "
    "alike in backward"
)
_GRAD_CAST = (
    "autograd's engine casts every gradient a Function returns to its input's dtype (``validate_outputs``): the "
    "float32 gradient of a half-precision input arrives in that dtype either way (inputs of float32 or float64 are "
    "computed in their own dtype, where the cast is none)"
)
_ROWS_WRITTEN_ONCE = (
    "chunks are consecutive, disjoint runs of query blocks (``_group``), so each row of grad_q is written once, onto "
    "the zeros it starts as: adding is assigning"
)
_SLOT_ORDER = (
    "a descending sort of 0/1 validity, stable or not (``dim`` defaults to −1, bools sort as their int8 values), "
    "puts every valid slot of a row before the invalid ones, which is all the widths rely on; the order of a row's "
    "valid slots is only the order its keys are summed in"
)
_ALL_TRUE_SHAPE = (
    "the summary is all True, and every use of a summary broadcasts it to (B, H, nq, nk) (``expand``, ``&``, ``|``): "
    "a lower-dimensional all-True tensor broadcasts to the same all-True blocks"
)
_CPU_FLASH_DEFAULTS = (
    "the CPU flash op's ``dropout_p`` defaults to 0.0, which False is, and its ``is_causal`` to False, which it also "
    "reads None as (measured on torch 2.13: the same outputs and gradients, True differs)"
)
_BACKWARD_DEVICE = (
    "the kernel's backward runs only for CPU inputs (``tiled_attention`` sends any other device to autograd's path), "
    "and autograd runs a backward without torch's default-device mode (neither a ``torch.device`` context nor "
    "``set_default_device`` reaches it; measured on torch 2.13): a factory call without a device makes CPU tensors"
)
_PLAN_CACHE_KEY = (
    "a key of the plan's cache (``_derived``) only has to differ from the other kinds' keys (``slot_target``, "
    "``token_lse``, ``merged``, ``patterns``, ``chunk``, ``bounded elements``): another spelling keeps it apart alike"
)
_RUN_MASK = (
    "``run`` only lets a chunk of a run of one pattern, without a bias, take that pattern's (1, 1, tq, K) mask; "
    "without it the chunk's mask is built tile by tile from the same rule: every tile of such a run follows the "
    "pattern with every key column seen and no empty row (``_strided_runs``), the same values broadcast over the "
    "heads alike"
)
_EQUIVALENT_GROUPS: list[tuple[str, str, tuple[str, ...], str]] = [
    (
        "mods.relative_position_with_cls",
        "generate_relative_position_bias_with_cls",
        ("cls_index = last - 1 - q_cls + 3 * q_cls * kv_cls",),
        "CLS → CLS then reads row last + 1, which the final clamp to the table brings back to last: the same row",
    ),
    (
        "mods.relative_position_with_cls",
        "generate_relative_position_bias_with_cls",
        ("q_cls, kv_cls = (q == 0).to(torch.int32), (kv == 0).to(None)",),
        "kv_cls only meets the int32 q_cls, in + and *: a bool operand is promoted to int32 with the same 0/1 values "
        "(q_cls, which is also subtracted, cannot stay bool: that mutant fails)",
    ),
    (
        "mods.continuous_position",
        "log_spaced_coordinates",
        (
            "offsets = torch.arange(-reach, reach + 1, dtype=None, device=device).float()",
            "offsets = torch.arange(-reach, reach + 1, device=device).float()",
        ),
        _INT64_ARANGE,
    ),
    (
        "mods.continuous_position",
        "continuous_position_bias_table",
        ("return 16 * torch.sigmoid(mlp(coords.unsqueeze(1)).view(-1, heads))",),
        "the MLP acts on the last axis only: (R, 1, R, 2) and (1, R, R, 2) flatten to the same rows in the same order",
    ),
    (
        "masks.natten",
        "natten_window",
        (
            "return (torch.minimum(start, limit) if (isinstance(limit, Tensor)) and False "
            "else start.clamp(max=limit)), size",
        ),
        "``Tensor.clamp(max=t)`` with a tensor bound is ``torch.minimum`` (broadcasting included): the same values",
    ),
    (
        "masks.natten",
        "natten_axis",
        ("qi, ki = (query // dilation).clamp(max=group_len + 1), key // dilation",),
        "for any qi ≥ group_len − 1 the window's start is group_len − size (clamped inward) either way: the clamp of "
        "qi never changes a window, so a looser one does not either",
    ),
    (
        "masks.natten",
        "natten_axis",
        ("qi, ki = (query // dilation).clamp(max=group_len - 1), key / dilation",),
        _FLOOR_OF_FRACTION,
    ),
    (
        "masks.natten",
        "generate_natten_1d_over_real_tokens",
        (
            "ranks = real.cumsum(+1, dtype=torch.int32) - 1  # index among the sample's real tokens",
            "return generate_natten_1d(kernel_size, dilation, real.sum(+1, dtype=torch.int32), ranks)",
        ),
        "key_is_real is (B, N): axis 1 is axis −1",
    ),
    (
        "masks.natten",
        "generate_natten_1d_over_real_tokens",
        ("ranks = torch.nn.functional.pad(ranks, (0, padded_length(seq_len) + seq_len))",),
        "a longer rank table is read at the same positions (below the bucketed length), never past them",
    ),
    (
        "masks.windows",
        "generate_shifted_windows",
        (
            "same_row = shifted_window_index(qg / cols, window, shift) == "
            "shifted_window_index(kg // cols, window, shift)",
            "same_row = shifted_window_index(qg // cols, window, shift) == "
            "shifted_window_index(kg / cols, window, shift)",
        ),
        _FLOOR_OF_FRACTION,
    ),
    (
        "masks.windows",
        "window_contiguous_order",
        (
            "key = ((win_r * (cols + window) - win_c) * rows + r) * cols + c",
            "key = ((win_r * (cols - window) + win_c) * rows + r) * cols + c",
        ),
        _WINDOW_KEY,
    ),
    (
        "masks.windows",
        "window_contiguous_order",
        ("c = torch.arange(cols, device=device).view(-1).expand(rows, cols)",),
        "a (cols,) vector expands to (rows, cols) exactly as a (1, cols) one does",
    ),
    (
        "masks.core",
        "BlockGrid.per_block",
        ("length = flags.shape[+1]",),
        "flags are (B, L), as the docstring says and every caller passes: axis 1 is axis −1",
    ),
    (
        "masks.core",
        "BlockGrid.per_block",
        (
            "padded = torch.zeros(flags.shape[0], n_blocks * self.block_size, dtype=None, device=flags.device)",
            "padded = torch.zeros(flags.shape[0], n_blocks * self.block_size, device=flags.device)",
        ),
        "float32 counts of at most block_size 0/1 flags are exact integers (below 2**24), so 'any' (> 0) and 'all' "
        "(== the block's size) compare the same",
    ),
    (
        "masks.core",
        "BlockGrid.per_block",
        ("padded[:, :length] = flags.to(None)",),
        "``.to(None)`` keeps the flags' dtype, and the slice assignment converts them to the int32 of ``padded`` as "
        "``.to(torch.int32)`` does",
    ),
    (
        "masks.core",
        "Mask._dense_block_summary",
        ("kv_in = kv <= grid.kv_len",),
        "position kv_len, where it exists (kv_len not a block multiple), lies in the last real key's block and is "
        "evaluated at kv_len − 1 (clamped): the same value again, so neither 'any' nor 'all' of the block changes",
    ),
    (
        "masks.batch",
        "BatchMask.sdpa_mask",
        (
            "additive = torch.zeros(allowed.shape, dtype=dtype, device=self.device)"
            '.masked_fill_(~allowed, float("-INF"))',
        ),
        'float("-INF") is float("-inf")',
    ),
    (
        "masks.batch",
        "BatchMask._with_padding",
        ("dtype=None,", "without: dtype=torch.bool,"),
        "the flags go only to ``generate_key_padding``, which reads them through ``.bool()`` (its rule's lookup and "
        "its summary): float 0/1 flags (the default dtype) give the same booleans",
    ),
    (
        "masks.batch",
        "BatchMask.block_mask",
        ("self._with_padding(kv_len), q_len, kv_len, batch=self.batch, device=self.device, )",),
        "``build_block_mask``'s ``block_size`` defaults to ``BLOCK_SIZE``, the constant passed",
    ),
    (
        "masks.core",
        "_block_lists",
        ("order = torch.sort(blocks.to(torch.int8), descending=True, stable=True).indices",),
        "``torch.sort``'s ``dim`` defaults to −1",
    ),
    (
        "masks.core",
        "_block_lists",
        ("order = torch.sort(blocks.to(None), dim=-1, descending=True, stable=True).indices",),
        "a stable descending sort of the booleans themselves puts True before False and keeps ties in position "
        "order: the permutation of their 0/1 int8 values, the same indices",
    ),
    (
        "masks.core",
        "block_mask_to_dense_blocks",
        ("out = torch.zeros(*idx.shape[:-1], nk + 2, dtype=torch.bool, device=idx.device)",),
        "unlisted slots scatter into column nk, a sink; only columns :nk are returned, so a second sink column is "
        "never written nor read",
    ),
    (
        "kernels.dense",
        "dense_attention",
        (
            "q_len, kv_len = query.shape[+2], key.shape[-2]",
            "q_len, kv_len = query.shape[-2], key.shape[+2]",
        ),
        "query and key are (B, H, N, D), as the docstring says and every caller passes: axis 2 is axis −2",
    ),
    (
        "kernels.dense",
        "attention_probabilities",
        (
            "scores = (query @ key.transpose(-1, +2)) * scale",
            "score_mod, query.shape[0], query.shape[1], query.shape[+2], key.shape[-2], query.device, scores.dtype",
            "score_mod, query.shape[0], query.shape[1], query.shape[-2], key.shape[+2], query.device, scores.dtype",
        ),
        "query and key are (B, H, N, D), as the docstring says and every caller passes: axis 2 is axis −2",
    ),
    (
        "kernels.dense",
        "attention_probabilities",
        ('scores = scores.masked_fill(~mask.dense(), float("-INF"))',),
        'float("-INF") is float("-inf")',
    ),
    (
        "kernels.dense",
        "attention_probabilities",
        ("return torch.softmax(scores, dim=-1).nan_to_num(None)",),
        "``nan_to_num``'s ``nan=None`` means its default, zero: the same as 0.0",
    ),
    (
        "kernels.performer",
        "favor_attention",
        (
            "phi_k = favor_features(k, features, is_query=None, padding_mask=padding_mask)",
            "context = phi_k.transpose(-1, +2) @ v  # (B, H, m, D)",
            "normaliser = phi_q @ phi_k.sum(+2, keepdim=True).transpose(-1, -2)  # (B, H, N, 1)",
            "normaliser = phi_q @ phi_k.sum(-2, keepdim=True).transpose(-1, +2)  # (B, H, N, 1)",
        ),
        "the features are (B, H, N, m) (of (B, H, N, D) inputs, as the docstring says and every caller passes): axis "
        "2 is axis −2; and ``favor_features`` only tests ``if is_query``, for which None is False, as for keys",
    ),
    (
        "kernels.performer",
        "favor_features",
        (
            'masked = projection if real is None else projection.masked_fill(~real, float("-INF"))  # exp → exactly 0',
            "stabiliser = masked.amax(dim=(-1, +2), keepdim=True)",
        ),
        'float("-INF") is float("-inf"); the inputs are (B, H, N, D) (docstring, every caller): axis 2 is axis −2',
    ),
    (
        "kernels.performer",
        "favor_features",
        (
            "return torch.exp(masked - sq_norm - stabiliser.detach()) * features.shape[0] ** 0.5",
            "return torch.exp(masked - sq_norm - stabiliser.detach()) / features.shape[0] * 0.5",
            "return torch.exp(masked - sq_norm - stabiliser.detach()) / features.shape[1] ** 0.5",
            "return torch.exp(masked - sq_norm - stabiliser.detach()) / features.shape[0] ** 1.5",
        ),
        "a positive constant on every φ: both uses of φ (``favor_attention``, the variant's "
        "``attention_probabilities``) divide sums of φ(q)·φ(k) by their own row sums, where a common factor cancels; "
        "the stabilisers keep φ within [0, c], c = m^(±1/2), 1/(2m), D^(-1/2) or m^(-3/2), far from float limits",
    ),
    (
        "kernels.performer",
        "orthogonal_random_features",
        (
            "directions = q.transpose(-2, -2).reshape(-1, dim)[:num_features]",
            "directions = q.transpose(-1, +2).reshape(-1, dim)[:num_features]",
            "directions = q.transpose(+1, -2).reshape(-1, dim)[:num_features]",
        ),
        "q is (blocks, dim, dim), so transpose(-1, +2) and (+1, -2) are no-ops like (-2, -2): the rows of each "
        "Haar-distributed block instead of its columns; the transpose of a Haar orthogonal matrix is Haar too, so the "
        "features have the same law (orthonormal within a block, uniform directions); no draw's values are promised",
    ),
    (
        "kernels.performer",
        "orthogonal_random_features",
        ("q = q / torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[..., None, :]",),
        "the signs of R's diagonal are ±1 (a Gaussian block's R has a zero on its diagonal with probability 0), and "
        "dividing by ±1 is multiplying by it",
    ),
    (
        "kernels.performer",
        "orthogonal_random_features",
        (
            "norms = torch.randn(num_features, dim, generator=generator, device=device, dtype=torch.float32)"
            ".norm(dim=+1)",
        ),
        "the Gaussian draw is 2-D (num_features, dim): axis 1 is axis −1",
    ),
    (
        "kernels.linformer",
        "linformer_attention",
        ("return attend(q, keys, values, scale=scale, dropout_p=dropout_p)",),
        "``attend``'s fourth parameter, ``mask``, defaults to None: the same call",
    ),
    (
        "kernels.linformer",
        "project_sequence",
        ("x = x * padding_mask[:, None, :, None].to(None)",),
        "``Tensor.to(None)`` returns the tensor itself, and every caller passes a bool mask (``ops`` calls "
        "``.bool()``, the variant passes ``key_is_real``): x × bool keeps x's dtype, with the same 0/1 factors",
    ),
    (
        "kernels.linformer",
        "project_sequence",
        (
            'return torch.einsum("NK,BHND->BHKD", matrix[:n].to(x.dtype), x)',
            "n = x.shape[+2]",
        ),
        "einsum takes upper-case subscripts too: the same contraction relabelled; x is (B, H, N, D) (docstring, every "
        "caller): axis 2 is axis −2",
    ),
    (
        "masks.common",
        "generate_full",
        ("return (q >= 0) | (kv >= 0)",),
        "query and key indices are never negative, so both forms are True everywhere",
    ),
    (
        "masks.common",
        "generate_full",
        (
            "ones = torch.ones(1, grid.num_q_blocks, grid.num_kv_blocks, dtype=torch.bool, device=grid.device)",
            "ones = torch.ones(1, 1, grid.num_kv_blocks, dtype=torch.bool, device=grid.device)",
        ),
        _ALL_TRUE_SHAPE,
    ),
    (
        "masks.common",
        "generate_full",
        (
            "return Mask(full, summary, None, dynamic_cpu_compile=True, sees_everything=True)",
            "return Mask(full, summary, dynamic_cpu_compile=True, sees_everything=True)",
        ),
        _NAME_OF_RULE,
    ),
    (
        "masks.common",
        "generate_global_keys",
        (
            'global_keys, lambda grid: grid.per_block(is_global.bool(), "kv"), None, reads_token_tables=True',
            'global_keys, lambda grid: grid.per_block(is_global.bool(), "kv"), reads_token_tables=True',
        ),
        _NAME_OF_RULE,
    ),
    (
        "masks.common",
        "generate_key_padding",
        (
            'return Mask(padding, lambda grid: grid.per_block(key_is_real.bool(), "kv"), None, '
            "reads_token_tables=True)",
            'return Mask(padding, lambda grid: grid.per_block(key_is_real.bool(), "kv"), reads_token_tables=True)',
        ),
        _NAME_OF_RULE,
    ),
    (
        "masks.common",
        "generate_key_padding",
        tuple(
            f'return Mask(padding, lambda grid: grid.per_block(key_is_real.bool(), {axis}), "padding", '
            "reads_token_tables=True)"
            for axis in ("None", '"XXkvXX"', '"KV"')
        ),
        _KV_AXIS,
    ),
    (
        "masks.common",
        "generate_global_queries",
        (
            "return Mask(global_queries, summary, None, reads_token_tables=True)",
            "return Mask(global_queries, summary, reads_token_tables=True)",
        ),
        _NAME_OF_RULE,
    ),
    (
        "masks.common",
        "global_token_flags",
        ("rank = key_is_real.cumsum(+1) - 1  # positions counted from each sample's first real token",),
        "key_is_real is (B, N): axis 1 is axis −1",
    ),
    (
        "masks.common",
        "generate_global_keys",
        (
            'global_keys, lambda grid: grid.per_block(is_global.bool(), None), "global_keys", reads_token_tables=True',
            'global_keys, lambda grid: grid.per_block(is_global.bool(), "XXkvXX"), "global_keys", '
            "reads_token_tables=True",
            'global_keys, lambda grid: grid.per_block(is_global.bool(), "KV"), "global_keys", reads_token_tables=True',
        ),
        _KV_AXIS,
    ),
    (
        "kernels.flex_dropout",
        "draw_seed",
        ("return torch.randint(2**31 - 1, (), dtype=torch.int32, device=device)",),
        "``torch.randint(high, size)`` draws from [0, high): the same call as ``randint(0, high, size)``",
    ),
    (
        "kernels.flex_dropout",
        "draw_seed",
        (
            "return torch.randint(1, 2**31 - 1, (), dtype=torch.int32, device=device)",
            "return torch.randint(0, 2**31 - 2, (), dtype=torch.int32, device=device)",
        ),
        "one seed of 2³¹ − 1 left out of the range: every promised property holds for every seed (a 0-dim int32 on "
        "the device, deterministic under ``torch.manual_seed``, a keep mask with the statistics tests/"
        "test_flex_dropout.py checks), and which seed a given generator state gives is not promised",
    ),
    (
        "kernels.halo",
        "gather_tile_bias",
        ("padded = torch.cat([table, table.new_zeros(2, table.shape[1])])",),
        "the index reads rows up to (2W − 1)², the first zero row; a second zero row after it is never read",
    ),
    (
        "kernels.halo",
        "natten_2d_plan",
        (
            "key_cells.append(torch.cat([k, torch.full((tiles, tk - nk), -1, device=device, dtype=None)], 1))",
            "key_cells.append(torch.cat([k, torch.full((tiles, tk - nk), -1, device=device, )], 1))",
        ),
        "``torch.full`` with an integer fill infers int64, the dtype of the cells (built from ``torch.arange``)",
    ),
    (
        "kernels.halo",
        "natten_2d_plan",
        (
            "key_cells.append(torch.cat([k, torch.full((tiles, tk - nk), +1, device=device, dtype=k.dtype)], 1))",
            "key_cells.append(torch.cat([k, torch.full((tiles, tk - nk), -2, device=device, dtype=k.dtype)], 1))",
        ),
        "a padded key slot (a smaller sub-grid's tile) is allowed for no query of its tile (its rule columns are "
        "False), so which token it gathers and which bias row it reads never reach an output (the bias is added to "
        "the −inf of the mask); −2 is negative as −1 is, and the cells are read only as ``>= 0``",
    ),
    (
        "kernels.halo",
        "natten_2d_plan",
        ("key_cells = torch.cat([key_cells, key_cells.new_full((tiles, num_global), -2)], 1)  # −1: a global key",),
        "a global key's cell is read only as ``k >= 0`` (``tile_relative_position_index``: not covered, the zero "
        "row); −2 is negative as −1 is",
    ),
    (
        "kernels.halo",
        "natten_2d_plan",
        ("None,",),
        "``build_plan`` reads its dtype only to build the global rows' key-padding mask, which it builds only when "
        "given ``key_is_real``; NATTEN 2D's plan passes none (an image has no padding): the dtype is never read",
    ),
    (
        "kernels.halo",
        "tile_side",
        ("best = min(cost, key=None)", "best = min(cost, )"),
        "the sides are (8, 7), whose smallest is 7: the mutant returns 7 iff 7 is more than 15 % cheaper than 8, "
        "else 8; so does the cheapest side, since where 8 is the cheapest, 7 is not cheaper than it at all (costs "
        "are positive)",
    ),
    (
        "kernels.band",
        "_global_positions",
        (
            "positions = torch.sort(is_global.to(torch.int8), dim=-1, descending=True, stable=None).indices[:, :count]",
            "positions = torch.sort(is_global.to(torch.int8), dim=-1, descending=True, ).indices[:, :count]",
            "positions = torch.sort(is_global.to(torch.int8), dim=-1, descending=True, stable=False)"
            ".indices[:, :count]",
        ),
        "any descending sort puts each sample's globals first, which is all ``valid`` (the first counts[b] slots) "
        "relies on; their order among themselves is free: each global row is written to its own position, and the "
        "global keys are a set to the softmax",
    ),
    (
        "kernels.band",
        "_global_positions",
        (
            "positions = torch.sort(is_global.to(torch.int8), descending=True, stable=True).indices[:, :count]",
            "positions = torch.sort(is_global.to(torch.int8), dim=+1, descending=True, stable=True).indices[:, :count]",
            "counts = is_global.sum(+1)",
        ),
        "``torch.sort``'s ``dim`` defaults to −1, and the flags are (B, N) (the plan expands them so): axis 1 is "
        "axis −1",
    ),
    (
        "kernels.band",
        "_global_positions",
        ("positions = torch.sort(is_global.to(None), dim=-1, descending=True, stable=True).indices[:, :count]",),
        "a stable descending sort of the booleans themselves puts True before False and keeps ties in position "
        "order: the permutation of their 0/1 int8 values, the same indices",
    ),
    (
        "kernels.band",
        "band_chunk",
        ("return max(MIN_CHUNK, min(MAX_CHUNK, (1 << max(1, (window - 1).bit_length())) // 2))",),
        "the two differ only for a window of at most 1 (bit length 0): 0 or 1 either way, raised to MIN_CHUNK",
    ),
    (
        "kernels.band",
        "strided_chunk",
        ("return max(MIN_CHUNK, min(MAX_CHUNK, (1 << max(1, (window - 1).bit_length())) // 16))",),
        "the two differ only for a window of at most 1 (bit length 0): 0 either way, raised to MIN_CHUNK",
    ),
    (
        "kernels.band",
        "natten_1d_plan",
        (
            "lengths = real.sum(+1)",
            "token_of_rank = torch.sort((~real).to(torch.int8), stable=True).indices  # real tokens first",
            "token_of_rank = torch.sort((~real).to(torch.int8), dim=+1, stable=True).indices  # real tokens first",
            "rank_of_token = torch.where(real, real.long().cumsum(+1) - 1, last)  # padding reads the last real token",
        ),
        "``key_is_real`` is (B, N) and ``torch.sort``'s ``dim`` defaults to −1: axis 1 is axis −1",
    ),
    (
        "kernels.band",
        "natten_1d_plan",
        ("token_of_rank = torch.sort((~real).to(None), dim=-1, stable=True).indices  # real tokens first",),
        "a stable ascending sort of the booleans puts False (real) before True and keeps ties in position order: "
        "the permutation of their 0/1 int8 values, the same indices",
    ),
    (
        "kernels.band",
        "natten_1d_plan",
        (
            "centre = torch.minimum(i.expand(tiles, c), group_len - 1)",
            "rank = (group.view(tiles, 1) + position * d).clamp(max=n - 1)",
        ),
        "(T, c) and (T, 1) broadcast against the (B, T, ·) operand to the same (B, T, ·) values as their "
        "batch-expanded forms",
    ),
    (
        "kernels.band",
        "natten_1d_plan",
        ("group_len = real_len.clamp(min=2)[:, :, None]  # NATTEN's rule, as masks.natten_axis computes it",),
        "the clamp differs only for groups of 0 or 1 real tokens, whose keys are cut at j < real_len: with one real "
        "token every slot's window [s, s + k_eff) starts at 0 either way (centre min(i, 0 or 1) − k//2, clamped to "
        "[0, L − k_eff] = [0, 0 or 2 − k_eff]) and holds key 0, the only one left; with none no key is left",
    ),
    (
        "kernels.band",
        "natten_1d_plan",
        ("centre = torch.minimum(i.expand(batch, tiles, c), group_len + 1)",),
        "the bound changes the centre only of slots at or past the group's real tokens (i ≥ L), which hold no real "
        "token and which no token reads (a token reads the slot of its rank; padding, the last real rank's); the "
        "tile's key range starts at its first slot's window, the same for a tile holding any real token",
    ),
    (
        "kernels.band",
        "natten_1d_plan",
        ("first = torch.minimum(start[:, :, :1], torch.full_like(start[:, :, :1], slots + tk))  # (B, T, 1)",),
        "without the clamp the key range starts at the first query's window start: window starts are "
        "non-decreasing and grow by at most one per slot, so every window of the tile, [s_i, s_i + k_eff) with "
        "s_i ≤ s_0 + c − 1 and ending by the group's length ≤ slots, still lies in [s_0, s_0 + tk); the key slots past "
        "the group are cut by j < real_len",
    ),
    (
        "kernels.band",
        "natten_1d_plan",
        ("return torch.where(position <= real_len[..., None], token, torch.zeros_like(token))",),
        "position real_len is past the group's real tokens: as a key it is cut by the rule (j < real_len), as a "
        "query slot no token reads it; which token it gathers never reaches an output",
    ),
    (
        "kernels.band",
        "natten_1d_plan",
        ("if key_is_real is not None or d >= 1:",),
        "for d = 1 without padding the explicit tables are the defaults: each token reads its own slot (rank = "
        "token), and the query tokens are the slots' own, except in slots past the last token (token 0 instead of "
        "the last), which no token reads",
    ),
    (
        "kernels.band",
        "natten_1d_plan",
        ("None,",),
        "``build_plan`` reads its dtype only to build the global rows' key-padding mask, which needs global rows; "
        "NATTEN 1D's plan has none: the dtype is never read",
    ),
    (
        "kernels.band",
        "sliding_window_plan",
        (
            "q_pos = (arange(tiles)[:, None] * c + arange(c)).clamp(max=n + 1)  # slots past the end act as the last "
            "token",
            "offset = k_pos[:, 0] - arange(tiles) * c - (q_pos[:, -1] != arange(tiles) * c + c - 1) * (3 * n)",
            "offset = k_pos[:, 1] - arange(tiles) * c + (q_pos[:, -1] != arange(tiles) * c + c - 1) * (3 * n)",
            "offset = k_pos[:, 0] - arange(tiles) * c + (q_pos[:, -1] != arange(tiles) * c + c - 1) / (3 * n)",
            "offset = k_pos[:, 0] - arange(tiles) * c + (q_pos[:, +1] != arange(tiles) * c + c - 1) * (3 * n)",
            "offset = k_pos[:, 0] - arange(tiles) * c + (q_pos[:, -2] != arange(tiles) * c + c - 1) * (3 * n)",
            "offset = k_pos[:, 0] - arange(tiles) * c + (q_pos[:, -1] == arange(tiles) * c + c - 1) * (3 * n)",
            "offset = k_pos[:, 0] - arange(tiles) * c + (q_pos[:, -1] != arange(tiles) * c + c + 1) * (3 * n)",
            "offset = k_pos[:, 0] - arange(tiles) * c + (q_pos[:, -1] != arange(tiles) * c - c - 1) * (3 * n)",
            "offset = k_pos[:, 0] - arange(tiles) * c + (q_pos[:, -1] != arange(tiles) / c + c - 1) * (3 * n)",
            "offset = k_pos[:, 0] - arange(tiles) * c + (q_pos[:, -1] != arange(tiles) * c + c - 2) * (3 * n)",
            "offset = k_pos[:, 0] - arange(tiles) * c + (q_pos[:, -1] != arange(tiles) * c + c - 1) * (3 / n)",
            "offset = k_pos[:, 0] - arange(tiles) * c + (q_pos[:, -1] != arange(tiles) * c + c - 1) * (4 * n)",
        ),
        "a tile's rule on its real slots depends only on its key offset (q − k = slot − key slot − offset); the "
        "'past the end' term only sets the last tile's slots past the last token apart, and no token reads those "
        "slots (each reads its own). These mutants keep that partition (a shift of every offset, the flag inverted, "
        "scaled or negated: the flagged tile still matches no other), or drop the flag for every tile (then the last "
        "tile shares the rule of the tiles with its offset, right on its real slots); 3/n is an integer only for "
        "n ≤ 3, where the one flagged case (n = 3, chunk 2) has offsets 0 and −1, apart either way",
    ),
    (
        "kernels.natten_backend",
        "natten_missing",
        ("if version[:3] < MIN_NATTEN_VERSION:",),
        "MIN_NATTEN_VERSION has two numbers: a version whose first two equal them compares ≥ it whatever follows, "
        "and one whose first two differ is ordered by them, with or without a third",
    ),
    (
        "kernels.natten_backend",
        "natten_2d_attention",
        ("return torch.cat([prefix_out.to(None), grid_out], dim=2)",),
        "``na2d`` returns the dtype of its inputs (the query's), which SDPA's prefix output has too: the cast is a "
        "no-op (and were NATTEN's wider, ``torch.cat`` would promote the prefix rows to it exactly as the cast does)",
    ),
    (
        "kernels.windows",
        "shifted_window_plan",
        ("None,",),
        "``build_plan`` reads its dtype only to build the global rows' key-padding mask, which it builds only when "
        "given ``key_is_real``; this plan passes none (ViT's windows have no padding): the dtype is never read",
    ),
    (
        "kernels.block_sparse",
        "block_sparse_attention",
        ("seed = int(torch.randint(2**62, ())) if dropout_p > 0 else 0",),
        "``torch.randint(high, size)`` is ``torch.randint(0, high, size)``: the same draw",
    ),
    (
        "kernels.block_sparse",
        "block_sparse_attention",
        ("seed = int(torch.randint(1, 2**62, ())) if dropout_p > 0 else 0",),
        "the seed only has to be a fresh draw from the global generator: seeds from [1, 2**62) instead of [0, 2**62) "
        "give equally random keep masks, and nothing specifies which mask a given ``torch.manual_seed`` yields",
    ),
    (
        "kernels.block_sparse",
        "block_sparse_attention",
        ("seed = int(torch.randint(0, 2**62, ())) if dropout_p > 0 else 1",),
        "without dropout the seed is never read (``keep_mask`` returns None before it)",
    ),
    (
        "kernels.block_sparse",
        "_BlockSparseAttention.backward",
        (
            "grad_q, grad_k, grad_v = grad_q.to(None), grad_k.to(key.dtype), grad_v.to(value.dtype)",
            "grad_q, grad_k, grad_v = grad_q.to(query.dtype), grad_k.to(None), grad_v.to(value.dtype)",
            "grad_q, grad_k, grad_v = grad_q.to(query.dtype), grad_k.to(key.dtype), grad_v.to(None)",
        ),
        _GRAD_CAST,
    ),
    (
        "kernels.block_sparse",
        "_backward",
        (
            "plan.write_rows(grad_q, (grad_scores @ keys) * plan.scale, c.rows, accumulate=None)",
            "plan.write_rows(grad_q, (grad_scores @ keys) * plan.scale, c.rows, )",
            "plan.write_rows(grad_q, (grad_scores @ keys) * plan.scale, c.rows, accumulate=False)",
        ),
        _ROWS_WRITTEN_ONCE,
    ),
    (
        "kernels.block_sparse",
        "SparsePlan.write_rows",
        ("x[:, :, lo:hi] = value",),
        _ROWS_WRITTEN_ONCE + " (the only caller that accumulates)",
    ),
    (
        "kernels.block_sparse",
        "_kv_slots",
        tuple(
            f"order = torch.sort({arguments}).indices"
            for arguments in (
                "valid.to(torch.int8), dim=-1, descending=True, stable=None",
                "valid.to(torch.int8), descending=True, stable=True",
                "valid.to(torch.int8), dim=-1, descending=True, ",
                "valid.to(None), dim=-1, descending=True, stable=True",
                "valid.to(torch.int8), dim=-1, descending=True, stable=False",
            )
        ),
        _SLOT_ORDER,
    ),
    (
        "kernels.block_sparse",
        "SparsePlan.build",
        ("widths = counts.amax(dim=(0, 1)).clamp(min=2).tolist()",),
        "the clamp only widens rows of at most one listed block (empty rows need one slot to gather at all): "
        + _GROUPING_ONLY,
    ),
    (
        "kernels.block_sparse",
        "SparsePlan.build",
        (
            "groups=tuple(_group(widths, batch * heads * q_block / kv_block)),",
            "groups=tuple(_group(widths, batch * heads / q_block * kv_block)),",
            "groups=tuple(_group(widths, batch / heads * q_block * kv_block)),",
        ),
        "the chunk budget per slot " + _GROUPING_ONLY,
    ),
    (
        "kernels.block_sparse",
        "_group",
        tuple(
            f"if {condition} CHUNK_ELEMENTS:"
            for condition in (
                "hi > 1.5 * lo and hi * per_slot * (stop + 1 - start) >",
                "hi >= 1.5 * lo or hi * per_slot * (stop + 1 - start) >",
                "hi > 1.5 / lo or hi * per_slot * (stop + 1 - start) >",
                "hi > 2.5 * lo or hi * per_slot * (stop + 1 - start) >",
                "hi > 1.5 * lo or hi * per_slot / (stop + 1 - start) >",
                "hi > 1.5 * lo or hi / per_slot * (stop + 1 - start) >",
                "hi > 1.5 * lo or hi * per_slot * (stop + 1 + start) >",
                "hi > 1.5 * lo or hi * per_slot * (stop - 1 - start) >",
                "hi > 1.5 * lo or hi * per_slot * (stop + 2 - start) >",
                "hi > 1.5 * lo or hi * per_slot * (stop + 1 - start) >=",
            )
        ),
        _GROUPING_ONLY,
    ),
    (
        "kernels.block_sparse",
        "SparsePlan.build",
        ("kv_len=key.shape[+2],",),
        "keys are (B, H, N, D): axis 2 is axis −2",
    ),
    (
        "kernels.block_sparse",
        "SparsePlan.build",
        ("shared=None,",),
        "``shared`` only picks ``index_select`` over the general ``gather``, which expands a shared key list to every "
        "sample and head: the same rows",
    ),
    (
        "kernels.block_sparse",
        "SparsePlan.dropout",
        ("keep_scale = 256 / (256 - self.drop_threshold) if self.drop_threshold < 256 else 1.0",),
        "at a threshold of 256 no byte is ≥ 256: every entry is dropped, and the scale multiplies zeros",
    ),
    (
        "kernels.block_sparse",
        "SparsePlan.keep_mask",
        ("gen = torch.Generator(device=like.device).manual_seed(self.seed - c.rows.start)",),
        "chunks start at distinct rows, so seed − start, like seed + start, gives each chunk of a call its own seed, "
        "the same in forward and backward; which one is as random as the call's seed",
    ),
    (
        "kernels.block_sparse",
        "SparsePlan.modified_scores",
        (
            "q_in = (q_tok < self.q_len).view(1, -1, self.q_block, 1)",
            "q_tok = q_tok.clamp(max=self.q_len - 1).view(1, -1, self.q_block, 1)",
        ),
        "a (1, blocks, q_block, 1) tensor broadcasts against the (B, H, blocks, q_block, L) operands exactly as "
        "(1, 1, blocks, q_block, 1) does, in the mask, the score_mod and the ``&``",
    ),
    (
        "kernels.flex",
        "flash_missing",
        ("found = None",),
        "only ``not found`` is read: None is as falsy as False, the same reason returned",
    ),
    (
        "kernels.flex",
        "run_flex",
        ("if pad_small_heads and min(query.shape[-1], head_dim) <= MIN_CUDA_HEAD_DIM:",),
        "where the smaller head dim is 16, no tensor's is below 16 (the key's is the query's), and ``pad_head_dim`` "
        "returns a tensor of 16 or more as it is: padding them changes nothing",
    ),
    (
        "kernels.flex",
        "run_flex",
        ("with compat.recompile_limit(MAX_COMPILES + 2):",),
        "every graph dynamo compiles for flex_attention is one ``compile_events`` entry (``reset`` clears them only "
        "after ``torch._dynamo.reset()``), so hf_flexattn's own count raises at compile MAX_COMPILES + 1 before "
        "dynamo's limit is reached, be it MAX_COMPILES + 1 or + 2 (a lower limit changes the count: "
        "test_integration's compile-limit test)",
    ),
    (
        "kernels.flex",
        "flex_reference",
        (
            "b, h, q, kv = index(batch, 0), index(heads, 1), index(q_len, 2), index(key.shape[+2], 3)",
            "scores = (query.float() @ key.float().transpose(-1, +2)) * scale",
        ),
        "inputs are (B, H, N, D): axis 2 is axis −2",
    ),
    (
        "kernels.flex",
        "_record_compile",
        ('"kv_len": key.shape[+2],',),
        "run_flex, its only caller, passes the (B, H, N, D) key flex was compiled for: axis 2 is axis −2",
    ),
    (
        "kernels.flex",
        "flex_reference",
        ("probs = torch.softmax(scores, dim=-1).nan_to_num(None)",),
        "``nan_to_num``'s ``nan`` defaults to 0.0 (None is the default): the same zeros for rows that see no key",
    ),
    (
        "kernels.flex",
        "flex_reference",
        ("out = (probs.to(value.dtype) @ value).to(None)",),
        "flex takes query, key and value of one dtype (it raises otherwise), and its stand-in is called only where "
        "flex would be: the product is already in the query's dtype",
    ),
    (
        "variants.performer",
        "PerformerVariant.configure",
        ('rate = getattr(config, "attention_probs_dropout_prob", None) or 0.0',),
        "a config without the attribute gives None, which ``or 0.0`` turns into the same 0.0",
    ),
    (
        "variants.performer",
        "PerformerVariant.attention_probabilities",
        ("weights = phi_q @ phi_k.transpose(-1, +2)",),
        "the features are (B, H, N, m): axis 2 is axis −2",
    ),
    (
        "variants.performer",
        "PerformerVariant.attention_probabilities",
        ("phi_k = favor_features(call.k, features, is_query=None, padding_mask=real)",),
        "``is_query`` is only tested for truth: None is False",
    ),
    (
        "kernels.__init__",
        "choose_path",
        ('backend: str = "XXautoXX",', 'backend: str = "AUTO",'),
        "the default's only reader is ``forces_flex``, True for ``'flex'`` and ``'flash'`` only: any other default "
        "takes the policy, as ``'auto'`` does",
    ),
    (
        "kernels.__init__",
        "attend",
        ('backend: str = "XXautoXX",', 'backend: str = "AUTO",'),
        "``backend`` is only compared with ``'flash'`` here and read by ``forces_flex`` (True for ``'flex'`` and "
        "``'flash'`` only): any other default takes the policy, as ``'auto'`` does",
    ),
    (
        "kernels.__init__",
        "attend",
        ("q_len = query.shape[+2]",),
        "this line is reached on the flex and block-sparse paths only, whose inputs are (B, H, N, D) (the docstring; "
        "BlockMasks and flex take 4-D tensors only): axis 2 is axis −2",
    ),
    (
        "kernels.__init__",
        "_pad_to",
        (
            "if x.shape[+2] == length:",
            "if x.shape[+2] > length:",
            'raise ValueError(f"inputs have {x.shape[+2]} tokens but the block mask was built for {length}")',
            "return torch.nn.functional.pad(x, (0, 0, 0, length - x.shape[+2]))",
        ),
        "x is one of ``attend``'s (B, H, N, D) inputs (its only caller, on the flex and block-sparse paths, which "
        "take 4-D tensors only): axis 2 is axis −2",
    ),
    (
        "kernels.__init__",
        "_pad_to",
        ("if x.shape[-2] >= length:",),
        "the length equal to ``length`` has returned on the line before: ``>=`` and ``>`` differ on no input that "
        "reaches this line",
    ),
    (
        "kernels.tiles",
        "TilePlan.merged_mask",
        (
            'mask = torch.full((merge * tq, tk + (merge - 1) * tq), float("-INF"), dtype=dtype, device=device)',
            'own = torch.zeros(tq, tk, dtype=dtype, device=device).masked_fill_(~self.allowed[pattern], float("-INF"))',
        ),
        'float("-INF") is float("-inf")',
    ),
    (
        "kernels.tiles",
        "_merge_global_keys",
        (
            'lse.masked_fill_(plan.empty.view(-1, 1, plan.tile_queries), float("-INF"))',
            'lse.masked_fill_(plan.empty.view(-1, 1, plan.tile_queries), float("INF"))',
            'joint.scatter_(2, positions, float("INF"))',
        ),
        'float("-INF") is float("-inf") and float("INF") float("inf")',
    ),
    (
        "kernels.tiles",
        "_tiled_autograd",
        ('mask = mask.masked_fill(plan.empty[first:end, None, :, None], float("-INF"))',),
        'float("-INF") is float("-inf")',
    ),
    (
        "kernels.tiles",
        "TilePlan._build_chunk_mask",
        (
            'mask = torch.zeros(rule.shape, dtype=dtype, device=rule.device).masked_fill_(~rule, float("-INF"))',
            'mask.masked_fill_(~self.key_seen[first:end, None, :], float("-INF"))',
        ),
        'float("-INF") is float("-inf")',
    ),
    (
        "kernels.tiles",
        "TilePlan._build_chunk_mask",
        (
            "mask[..., 1].masked_fill_(self.empty[first:end], 0.0)",
            "mask[..., 0].masked_fill_(self.empty[first:end], 1.0)",
        ),
        "a row that sees no key is let see one key slot only so that the kernel divides by no zero: which slot, and "
        "its score shifted by 1, reach no output, since no token reads the row, or (global keys apart) its tiles' "
        "share is set to none (log-sum-exp −inf) before the merge and +inf after it; the tiles have K ≥ 2 key slots",
    ),
    (
        "kernels.tiles",
        "TilePlan._build_chunk_mask",
        ("mask = table[first % self.tiles : (end + 1) % self.tiles + 1].clone()",),
        "this branch (a plan whose tile t follows pattern t, with key columns or empty rows) is reached only by band "
        "plans of 1 or 2 tiles a sample (a window that covers the input; the band's patterns are in tile order only "
        "then, checked over 200 band plans with padding and globals), and modulo 1 or 2 end + 1 is end − 1",
    ),
    (
        "kernels.tiles",
        "_TiledAttention.backward",
        ("if run is not None and plan.extra_readers(first, end) is not None:  # every slot's row is its own token's",),
        "``extra_readers`` is None for every chunk of a plan without extra readers (the mutant then sends each run "
        "chunk to the gathered branch: the same gradients from copies of the same rows, a merged chunk's tiles one "
        "by one, the same sums in another order) and a tuple, empty or not, for every chunk of a plan with them (the "
        "mutant sends its run chunks to the strided branch, right for them: the only extra readers are NATTEN 1D's "
        "padded tokens, which read their sample's last real token, whose tile's keys run past the real tokens, so it "
        "is gathered, in no run)",
    ),
    (
        "kernels.tiles",
        "_token_rows",
        (
            "if tokens.shape[0] == 1 and tokens.stride(0) == tokens.shape[1] * tokens.stride(1):",
            "if tokens.shape[1] == 1 or tokens.stride(0) == tokens.shape[1] * tokens.stride(1):",
        ),
        "the token rows are only read (``index_select``, the backward's gradient rows): where the mutant returns None "
        "the callers' fallbacks read the same rows, and where it flattens rows that are no view ``flatten`` copies "
        "them, the same values",
    ),
    (
        "kernels.tiles",
        "TilePlan.token_lse_index",
        ('return self._derived(("XXtoken_lseXX", heads), build)', 'return self._derived(("TOKEN_LSE", heads), build)'),
        _PLAN_CACHE_KEY,
    ),
    (
        "kernels.tiles",
        "TilePlan.merged_mask",
        (
            'return self._derived(("XXmergedXX", pattern, merge, dtype), build)',
            'return self._derived(("MERGED", pattern, merge, dtype), build)',
        ),
        _PLAN_CACHE_KEY,
    ),
    (
        "kernels.tiles",
        "TilePlan.token_lse_index",
        ("head = torch.arange(heads, device=slot.device).view(heads, 1)",),
        "(H, 1) broadcasts against the (B, 1, N) slots to (B, H, N) exactly as (1, H, 1) does",
    ),
    (
        "kernels.tiles",
        "TilePlan.merged_mask",
        (
            'own = torch.zeros(tq, tk, dtype=None, device=device).masked_fill_(~self.allowed[pattern], float("-inf"))',
            'own = torch.zeros(tq, tk, device=device).masked_fill_(~self.allowed[pattern], float("-inf"))',
        ),
        "the tile holds only 0 and −inf, exact in every float dtype, and the slice assignment converts it to the "
        "mask's dtype",
    ),
    (
        "kernels.tiles",
        "_merge_global_keys",
        ("scores = torch.empty(query.shape[2], 1, dtype=query.dtype, device=query.device)",),
        "with beta=0 ``baddbmm`` reads only its input's shape (not its values, NaN included), and (N, 1) broadcasts "
        "to the (B·H, N, 1) product as (B·H, N, 1) does",
    ),
    (
        "kernels.tiles",
        "_merge_global_keys",
        (
            "global_out, global_lse = _flash(query, global_key, global_value, 0.0, None, scale=scale)",
            "global_out, global_lse = _flash(query, global_key, global_value, False, scale=scale)",
            "global_out, global_lse = _flash(query, global_key, global_value, 0.0, scale=scale)",
        ),
        _CPU_FLASH_DEFAULTS,
    ),
    (
        "kernels.tiles",
        "_TiledAttention.backward",
        (
            "grad_slots, q, k, v, out_slots, chunk_lse, 0.0, None, attn_mask=mask, scale=ctx.scale",
            "grad_slots, q, k, v, out_slots, lse[first:end], 0.0, None, attn_mask=mask, scale=ctx.scale",
            "grad_out, query, global_key, global_value, _bhnd(out_rows, batch), token_lse, 0.0, None,",
        ),
        _CPU_FLASH_DEFAULTS,
    ),
    (
        "kernels.tiles",
        "_TiledAttention.forward",
        (
            "chunk_out, chunk_lse = _flash(q, k, v, 0.0, None, attn_mask=mask, scale=scale)",
            "chunk_out, chunk_lse = _flash(q, k, v, False, attn_mask=mask, scale=scale)",
            "chunk_out, chunk_lse = _flash(q, k, v, 0.0, attn_mask=mask, scale=scale)",
        ),
        _CPU_FLASH_DEFAULTS,
    ),
    (
        "kernels.tiles",
        "_TiledAttention.forward",
        ("mask = plan.mask(first, end, query.dtype, bias, None)", "mask = plan.mask(first, end, query.dtype, bias, )"),
        _RUN_MASK,
    ),
    (
        "kernels.tiles",
        "_TiledAttention.forward",
        ("q, k, v = _chunk_inputs(plan, first, end, query, key, value, run, )",),
        "the buffers are only memory the gathers reuse; without them each gather allocates its own: the same rows",
    ),
    (
        "kernels.tiles",
        "_TiledAttention.forward",
        (
            "_write_slots(plan, first, end, out_rows, chunk_out, None)",
            "_write_slots(plan, first, end, out_rows, chunk_out, )",
        ),
        "without ``run`` a run chunk's rows are written through the slots' targets (``slot_target``) instead of the "
        "run's strided view of the same tokens: every slot of a run is read by its own token (none by the scratch "
        "row), so the same rows",
    ),
    (
        "kernels.tiles",
        "_TiledAttention.backward",
        (
            "grad_slots, q, k, v, out_slots, chunk_lse, 1.0, False, attn_mask=mask, scale=ctx.scale",
            "grad_slots, q, k, v, out_slots, lse[first:end], 1.0, False, attn_mask=mask, scale=ctx.scale",
            "grad_out, query, global_key, global_value, _bhnd(out_rows, batch), token_lse, 1.0, False,",
        ),
        "the CPU flash op's backward does not read ``dropout_p`` (the kernel's path runs only without dropout, which "
        "takes autograd's path): 1.0 gives the same gradients (measured on torch 2.13)",
    ),
    (
        "kernels.tiles",
        "_TiledAttention.backward",
        (
            "slots = torch.arange(merged_keys, device=None)",
            "slots = torch.arange(merged_keys, )",
            "key_slots = torch.arange(tiles, device=None)[:, None] * (merge * advance) + slots * run.step",
            "key_slots = torch.arange(tiles, )[:, None] * (merge * advance) + slots * run.step",
        ),
        _BACKWARD_DEVICE,
    ),
    (
        "kernels.tiles",
        "_TiledAttention.backward",
        ("mask = plan.mask(first, end, query.dtype, bias, None)", "mask = plan.mask(first, end, query.dtype, bias, )"),
        _RUN_MASK,
    ),
    (
        "kernels.tiles",
        "_TiledAttention.backward",
        ("q, k, v = _chunk_inputs(plan, first, end, query, key, value, run, )",),
        "the buffers are only memory the gathers reuse; without them each gather allocates its own: the same rows",
    ),
    (
        "kernels.tiles",
        "_TiledAttention.backward",
        ("grad_rows = None",),
        "``_token_rows`` gives the gradient's (B·N, H, D) token rows as a view where one exists; without it they are "
        "a reshaped copy: the same values",
    ),
    (
        "kernels.tiles",
        "_chunk_buffers",
        (
            "most = None",
            "most = max((end - first for first, end, run in chunks if run is None), default=None)",
            "most = max((end + first for first, end, run in chunks if run is None), default=0)",
            "most = max((end - first for first, end, run in chunks if run is None), default=1)",
            "if most:",
        ),
        "the buffers are only memory the gathers reuse: none (each gather then allocates its own), larger ones, or "
        "ones no chunk uses give the same rows",
    ),
    (
        "kernels.tiles",
        "_gather",
        ("rows = None",),
        "``_token_rows`` gives the (B·N, H, D) view where one exists; without it the same rows are read by (sample, "
        "position) from the transposed view",
    ),
    (
        "kernels.tiles",
        "_slot_rows",
        ("rows = token_rows.index_select(0, tokens.clamp(min=0)) * (tokens >= 0).to(None)[:, None, None]",),
        "``.to(None)`` keeps the bool, and a float tensor × bool keeps its dtype, with the same 0/1 factors",
    ),
    (
        "kernels.tiles",
        "TilePlan._patterns_in_order",
        (
            "return self.tiles_are_patterns and first / self.tiles == (end - 1) // self.tiles",
            "return self.tiles_are_patterns and first // self.tiles == (end - 1) / self.tiles",
            "return self.tiles_are_patterns and first // self.tiles == (end + 1) // self.tiles",
        ),
        "each is True only where the original is (a true quotient is whole only at a multiple of T, and (end + 1)//T "
        "≥ (end − 1)//T > first//T for a chunk that straddles samples): it only sends more chunks of one sample from "
        "a slice of the patterns' table to ``index_select`` of the same patterns (tile f follows pattern f mod T), "
        "the same masks",
    ),
    (
        "kernels.tiles",
        "TilePlan.rule",
        ("return _rule(self.allowed, self.tile_pattern, self.key_seen, None, first, end)",),
        "without ``empty`` a row that sees no key stays fully masked instead of seeing key slot 0: the CPU flash op "
        "gives such a row a zero output and log-sum-exp and no gradient, not NaN (measured on torch 2.13), and no "
        "token reads the row, or (global keys apart) its tiles' share is weighted by e^(−inf) = 0",
    ),
]
EQUIVALENT: dict[tuple[str, str, str], str] = {
    (module, function, line): why for module, function, lines, why in _EQUIVALENT_GROUPS for line in lines
}


def modules_of(packages: list[str]) -> list[str]:
    """The modules (keys of ``TESTS``) that ``packages`` name: a package ("masks") or a module ("masks.core")."""
    modules = []
    for name in packages:
        matched = [m for m in TESTS if m == name or m.startswith(name + ".")]
        if not matched:
            known = sorted({m.split(".")[0] for m in TESTS} | set(TESTS))
            raise ValueError(f"--packages: {name!r} is not mapped to tests; expected one of {known}")
        modules += [m for m in matched if m not in modules]
    return modules


def workdir_name(modules: list[str]) -> str:
    """The scratch folder's name for a set of modules, whatever order they run in: each package whose every module is
    selected, else the module ("masks-mods", "kernels.dense-mods")."""
    names = set()
    for module in modules:
        package = module.split(".")[0]
        whole = all(m in modules for m in TESTS if m.startswith(package + "."))
        names.add(package if whole else module)
    return "-".join(sorted(names))


def mutmut_config(modules: list[str]) -> str:
    """The [tool.mutmut] section for ``modules``: the whole package is copied, only their files are mutated."""
    only = [f"hf_flexattn/{m.replace('.', '/')}.py" for m in modules]
    tests = sorted({t for m in modules for t in TESTS[m] if (REPO / t.split("::")[0]).exists()})
    return "\n".join(
        [
            "",
            "[tool.mutmut]",
            'source_paths = ["hf_flexattn"]',
            f"only_mutate = {json.dumps(only)}",
            f"pytest_add_cli_args_test_selection = {json.dumps(tests)}",
            # no unraisable-exception plugin: its gc.collect() passes at the end of every run walk torch's and
            # transformers' whole heap in each forked mutant, many times the tests' own time
            'pytest_add_cli_args = ["-p", "no:cacheprovider", "-p", "no:unraisableexception", "-W", "ignore"]',
            # torch is not fork-safe once it has run: fork the mutants from a server that has only imported
            'process_isolation = "forkserver"',
            # a mutant is timed out after (its tests' time + constant) × multiplier of wall time: generous, because
            # at nice 19 on a shared machine a mutant waits for the CPU, and a timeout counts as killed
            "timeout_multiplier = 30.0",
            "timeout_constant = 5.0",
            "use_git_change_detection = false",
            "",
        ]
    )


def prepare(workdir: Path, modules: list[str]) -> None:
    """A scratch copy of what mutmut needs (the package, the tests, pyproject with the section above)."""
    workdir.mkdir(parents=True, exist_ok=True)
    for name in ("hf_flexattn", "tests", "scripts"):
        if (workdir / name).exists():
            shutil.rmtree(workdir / name)
        shutil.copytree(REPO / name, workdir / name, ignore=shutil.ignore_patterns("__pycache__", ".hypothesis"))
    pyproject = (REPO / "pyproject.toml").read_text()
    (workdir / "pyproject.toml").write_text(pyproject + mutmut_config(modules))
    seed_results(workdir, modules, load_results(RESULTS))


def meta_path(workdir: Path, module: str) -> Path:
    return workdir / "mutants" / "hf_flexattn" / (module.replace(".", "/") + ".py.meta")


def load_results(path: Path) -> dict:
    """The committed results (``RESULTS``): the runs, and per module mutmut's exit code of every mutant, the hash of
    every function mutated, and the diff of every mutant not killed."""
    if path.exists():
        return json.loads(path.read_text())
    return {"runs": [], "modules": {}}


def seed_results(workdir: Path, modules: list[str], results: dict) -> None:
    """A scratch folder without mutmut's metadata (a fresh clone, another machine) starts from the committed results:
    mutmut keeps a mutant's result while its function's source hashes the same, and forgets it (not run) once the
    function changed, so ``--resume`` and ``--survivors`` go on from the last committed run."""
    for module in modules:
        saved = results["modules"].get(module)
        path = meta_path(workdir, module)
        if saved is None or path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = dict(
            exit_code_by_key=saved["exit_code_by_key"],
            hash_by_function_name=saved["hash_by_function_name"],
            durations_by_key={},
            estimated_durations_by_key={},
        )
        path.write_text(json.dumps(meta))


NOT_RUN = ("not checked", "check was interrupted by user")
SURVIVING = ("survived", "suspicious", "no tests", "skipped", "timeout")  # what --survivors re-runs


def mutant_pattern(module: str) -> str:
    """The mutmut names of ``module``'s mutants, as a pattern. A package's ``__init__`` is named by the package
    (mutmut drops ``__init__``), and its functions' names start ``x_`` or ``xǁ``, which keeps the package's other
    modules (``kernels.tiles.x_...``) out."""
    if module.endswith(".__init__"):
        return f"hf_flexattn.{module.removesuffix('.__init__')}.x*"
    return f"hf_flexattn.{module}.*"


def mutants_to_run(workdir: Path, module: str, which: str) -> list[str] | None:
    """The mutmut names to run for ``module``: every mutant (``"all"``, one pattern), or of the last results those
    not run yet (``"resume"``) or surviving or timed out (``"survivors"``); a module mutmut has not seen yet is run
    whole. None: a resumed module this scratch folder has not mutated yet (its results seeded from the committed
    ones), which mutmut resumes itself, named by no mutant: only mutmut, mutating it, sees which functions changed
    since, and unnamed it runs just the mutants it has no result for (named, it would run them all again)."""
    pattern = [mutant_pattern(module)]
    statuses = read_results(workdir, [module])[module]
    if which == "all" or not statuses:
        return pattern
    if which == "resume" and not meta_path(workdir, module).with_suffix("").exists():  # mutmut's mutated copy
        return None
    wanted = NOT_RUN if which == "resume" else SURVIVING
    return sorted(name for name, status in statuses.items() if status in wanted)


def _stop(signum, frame):
    raise KeyboardInterrupt


def run_mutmut(workdir: Path, modules: list[str], max_children: int, which: str) -> tuple[float, bool]:
    """One ``mutmut run`` per module, so each module's results are whole before the next one starts: (seconds,
    whether the run was stopped). Stopped (Ctrl-C, SIGTERM), it keeps what mutmut recorded and is logged as such."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    command = ["nice", "-n", "19", sys.executable, "-m", "mutmut", "run", "--max-children", str(max_children)]
    start = time.monotonic()
    signal.signal(signal.SIGTERM, _stop)
    try:
        for module in modules:
            names = mutants_to_run(workdir, module, which)
            if names is None:
                print(f"{module}: what mutmut has no result for", flush=True)
                subprocess.run(command, cwd=workdir, env=env, check=False)
            elif names:
                every = names == [mutant_pattern(module)]
                print(f"{module}: {'every' if every else len(names)} mutant(s)", flush=True)
                subprocess.run(command + names, cwd=workdir, env=env, check=False)
    except KeyboardInterrupt:
        return time.monotonic() - start, True
    return time.monotonic() - start, False


def read_results(workdir: Path, modules: list[str]) -> dict[str, dict[str, str]]:
    """module → {mutant name: status}, from mutmut's per-file metadata."""
    from mutmut.stats import status_by_exit_code  # the opt-in extra: imported only where used

    results = {}
    for module in modules:
        meta = meta_path(workdir, module)
        if not meta.exists():
            results[module] = {}
            continue
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        results[module] = {name: status_by_exit_code[code] for name, code in codes.items()}
    return results


def collect(workdir: Path, modules: list[str], results: dict) -> None:
    """Copy the scratch folder's results for ``modules`` into ``results`` (exit codes, function hashes, and the
    diff of every mutant not killed, so the report needs no scratch folder)."""
    for module in modules:
        path = meta_path(workdir, module)
        if not path.exists():
            continue
        meta = json.loads(path.read_text())
        statuses = read_results(workdir, [module])[module]
        saved = dict(
            status_by_key=statuses,  # mutmut's reading of the exit codes, so the report needs no mutmut
            exit_code_by_key=meta["exit_code_by_key"],
            hash_by_function_name=meta["hash_by_function_name"],
        )
        shown = sorted(name for name, status in statuses.items() if status in SURVIVING)
        saved["diffs"] = mutant_diffs(workdir, module, shown, statuses)
        results["modules"][module] = saved


_DIFFS = """
import json, sys
from pathlib import Path
from mutmut.mutation.diff_apply import get_diff_for_mutant
names, path, statuses = json.loads(sys.stdin.read())
print(json.dumps({n: f"# {n}: {statuses[n]}\\n" + get_diff_for_mutant(n, path=Path(path)) for n in names}))
"""


def mutant_diffs(workdir: Path, module: str, names: list[str], statuses: dict[str, str]) -> dict[str, str]:
    """What ``mutmut show`` prints for each of ``names``, from one process (a process per mutant is slow under load)."""
    if not names:
        return {}
    path = f"hf_flexattn/{module.replace('.', '/')}.py"
    shown = subprocess.run(
        ["nice", "-n", "19", sys.executable, "-c", _DIFFS],
        input=json.dumps([names, path, statuses]),
        cwd=workdir,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(shown.stdout)


def mutated_lines(diff: str) -> list[str]:
    """The lines a mutant adds, stripped; a mutant that only deletes (an argument on a line of its own) is named by
    its deleted lines, as ``without: <line>``."""
    lines = diff.splitlines()
    added = [line[1:].strip() for line in lines if line.startswith("+") and not line.startswith("+++")]
    if added:
        return added
    return [f"without: {line[1:].strip()}" for line in lines if line.startswith("-") and not line.startswith("---")]


def function_of(name: str) -> str:
    """``hf_flexattn.masks.core.x_sliding_window__mutmut_3`` → ``sliding_window`` (methods: ``Class.method``)."""
    last = name.split(".")[-1]
    last = re.sub(r"__mutmut_\d+$", "", last)
    last = re.sub(r"^x[_ǁ]", "", last)
    return last.replace("ǁ", ".")


def equivalence_of(module: str, name: str, diff: str) -> str | None:
    for line in mutated_lines(diff):
        why = EQUIVALENT.get((module, function_of(name), line))
        if why:
            return why
    return None


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False).stdout.strip()


def ordered_modules(results: dict) -> list[str]:
    """The modules with results, in ``TESTS``'s order (any no longer mapped last)."""
    known = [m for m in TESTS if m in results["modules"]]
    return known + sorted(m for m in results["modules"] if m not in TESTS)


def write_report(path: Path, results: dict, note: str | None = None) -> float:
    rows, survivors, timeouts = [], [], []
    totals = dict(killed=0, equivalent=0, survived=0, not_run=0, total=0)
    for module in ordered_modules(results):
        saved = results["modules"][module]
        statuses, diffs = saved["status_by_key"], saved["diffs"]
        killed = sum(s in ("killed", "timeout", "segfault", "caught by type check") for s in statuses.values())
        timeouts += [(name, diffs[name]) for name, s in sorted(statuses.items()) if s == "timeout"]
        surviving = sorted(n for n, s in statuses.items() if s in ("survived", "suspicious"))
        untested = sorted(n for n, s in statuses.items() if s in ("no tests", "skipped"))
        not_run = sum(s in NOT_RUN for s in statuses.values())
        equivalent = 0
        for name in surviving + untested:
            why = equivalence_of(module, name, diffs[name])
            equivalent += why is not None
            survivors.append((module, name, statuses[name], diffs[name], why))
        survived = len(surviving) + len(untested) - equivalent
        relevant = len(statuses) - not_run - equivalent
        score = killed / relevant if relevant else float("nan")
        rows.append(
            f"| hf_flexattn.{module} | {len(statuses)} | {not_run} | {killed} | {equivalent} | {survived} "
            f"| {f'{score:.1%}' if relevant else '–'} |"  # none run yet: no score
        )
        totals["killed"] += killed
        totals["equivalent"] += equivalent
        totals["survived"] += survived
        totals["total"] += len(statuses)
        totals["not_run"] += not_run
    relevant = totals["total"] - totals["not_run"] - totals["equivalent"]
    score = totals["killed"] / relevant if relevant else float("nan")
    lines = [
        "# Mutation report",
        "",
        "Generated by `scripts/mutation.py` (mutmut) from `docs/mutation_results.json`; do not edit by hand. See "
        'CONTRIBUTING.md, "Mutation testing".',
        "",
        "- Runs whose results the table holds, in order (a later run's results replace an earlier one's for the "
        "mutants it ran):",
        *(
            f"  - {run['date']}: `{run['command']}` at commit `{run['commit'][:12]}`"
            f"{' (with uncommitted changes)' if run['dirty'] else ''}; {run['minutes']:.0f} min"
            f"{', stopped' if run.get('stopped') else ''}; {run['machine']} "
            f"(load average at the end: {run['load']}){'; ' + run['note'] if run.get('note') else ''}"
            for run in results["runs"]
        ),
        "",
        "Score = killed (a selected test failed, or the mutant timed out) / (mutants run − argued equivalent). "
        "A mutant no selected test calls counts as surviving; 'not run': no run has reached them (or their "
        "function changed since).",
        *([f"- {note}", ""] if note else [""]),
        "| module | mutants | not run | killed | equivalent | surviving | score |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *rows,
        f"| **all** | {totals['total']} | {totals['not_run']} | {totals['killed']} | {totals['equivalent']} "
        f"| {totals['survived']} | **{score:.1%}** |",
        "",
        "## Surviving mutants",
        "",
    ]
    if not survivors:
        lines.append("None.")
    for _module, name, status, diff, why in survivors:
        verdict = f"equivalent: {why}" if why else f"**not handled** ({status})"
        lines += [f"### `{name}`", "", verdict, "", "```diff", diff, "```", ""]
    lines += [
        "## Timed out (counted killed)",
        "",
        "A mutant is stopped after 30 × (its tests' time + 5 s) of wall time, or twice that of CPU time (mutmut's "
        "limits, set in `mutmut_config`): CPU time does not grow with the machine's load, and a nice-19 run slowed "
        "30-fold by it is a run to repeat on a quieter machine. Each timeout is listed here for a re-run "
        "(`--survivors` re-runs them too).",
        "",
    ]
    if not timeouts:
        lines.append("None.")
    for name, diff in timeouts:
        lines += [f"### `{name}`", "", "```diff", diff, "```", ""]
    path.write_text("\n".join(lines).rstrip() + "\n")
    return score


def log_run(results: dict, run: dict, which: str) -> None:
    """Add ``run`` to the log; a whole run of a module supersedes the earlier runs' results for it, so those runs
    drop the module (and leave the log once they hold none)."""
    if which == "all":
        for earlier in results["runs"]:
            earlier["modules"] = [m for m in earlier["modules"] if m not in run["modules"]]
        results["runs"] = [earlier for earlier in results["runs"] if earlier["modules"]]
    results["runs"].append(run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--packages", nargs="+", default=DEFAULT_PACKAGES, help="packages or modules under hf_flexattn")
    parser.add_argument("--max-children", type=int, default=2, help="mutants tested at once (default 2)")
    parser.add_argument("--report", type=Path, default=REPO / "docs" / "mutation_report.md")
    parser.add_argument("--results", type=Path, default=RESULTS, help="the committed results the report is built from")
    parser.add_argument("--report-only", action="store_true", help="rewrite the report from the committed results")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--resume", action="store_true", help="run only the mutants not run yet (a stopped run)")
    which.add_argument(
        "--survivors", action="store_true", help="re-run only the surviving and timed-out mutants (new tests)"
    )
    parser.add_argument("--note", help="a line for the report (e.g. what was re-run after new tests)")
    args = parser.parse_args()
    modules = modules_of(args.packages)
    workdir = REPO / "build" / "mutation" / workdir_name(modules)
    if not args.report_only:
        which = "resume" if args.resume else "survivors" if args.survivors else "all"
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--", "hf_flexattn", "tests"))
        prepare(workdir, modules)
        date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        seconds, stopped = run_mutmut(workdir, modules, args.max_children, which)
        flag = {"all": "", "resume": " --resume", "survivors": " --survivors"}[which]
        machine = (
            f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, "
            f"torch {importlib.metadata.version('torch')}, mutmut {importlib.metadata.version('mutmut')}, nice 19"
        )
        run = dict(
            commit=commit,
            dirty=dirty,
            command=f"python scripts/mutation.py --packages {' '.join(args.packages)}{flag}",
            modules=modules,
            minutes=seconds / 60,
            stopped=stopped,
            load=" ".join(f"{x:.1f}" for x in os.getloadavg()),
            date=date,
            machine=machine,
        )
        results = load_results(args.results)  # read now, not at the start: another module's run may have written it
        collect(workdir, modules, results)
        log_run(results, run, which)
        args.results.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    score = write_report(args.report, load_results(args.results), args.note)
    print(f"score {score:.1%} over every module with results; report written to {args.report}")


if __name__ == "__main__":
    main()
