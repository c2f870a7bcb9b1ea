"""NATTEN 2D as CUDA's flex runs it: the mask_mod's arithmetic stays in int32 on flex's int32 indices, and blocks
are marked full exactly where the rule allows."""

import pytest
import torch
from torch.overrides import TorchFunctionMode

from hf_flexattn.masks import BatchMask
from hf_flexattn.masks.natten import generate_natten_2d

from helpers import check_block_structure, natten_2d_reference

pytestmark = pytest.mark.cuda_policy  # also under HF_FLEXATTN_TEST_POLICY=cuda (conftest)


class IntegerWidths(TorchFunctionMode):
    """Records the dtype of every integer tensor an operation returns."""

    def __init__(self):
        super().__init__()
        self.dtypes = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor) and not out.is_floating_point() and out.dtype != torch.bool:
            self.dtypes.add(out.dtype)
        return out


@pytest.mark.parametrize("num_global", [0, 1])
def test_natten_2d_mask_mod_computes_in_int32_on_flex_indices(num_global):
    mask = generate_natten_2d((10, 12), (5, 3), (2, 1), num_global)
    n = 120 + num_global
    # as flex evaluates it: vmapped over q and kv, so the mask_mod sees 0-dim int32 indices (indices with dimensions
    # would hide an int64 capture: a 0-dim int64 tensor does not promote a 1-dim int32 one)
    mask_mod = torch.vmap(torch.vmap(mask.mask_mod, in_dims=(None, None, None, 0)), in_dims=(None, None, 0, None))
    zero, positions = torch.zeros((), dtype=torch.int32), torch.arange(n, dtype=torch.int32)
    with IntegerWidths() as widths:
        allowed = mask_mod(zero, zero, positions, positions)
    assert widths.dtypes == {torch.int32}
    want = natten_2d_reference(10, 12, (5, 3), (2, 1), num_global)
    assert torch.equal(allowed, want)


@pytest.mark.parametrize(
    "grid,kernel,num_global,full_blocks",
    [((56, 56), (7, 7), 0, 0), ((32, 32), (31, 31), 1, 1), ((16, 16), (17, 17), 0, 4)],
)
def test_natten_2d_blocks_are_full_exactly_where_the_rule_allows(grid, kernel, num_global, full_blocks):
    n = grid[0] * grid[1] + num_global
    mask = generate_natten_2d(grid, kernel, (1, 1), num_global)
    block_mask = BatchMask(mask, n).block_mask()
    partial, full, any_true, all_true = check_block_structure(block_mask, mask.dense(1, 1, n, n))
    assert torch.equal(full, all_true & any_true) and torch.equal(partial | full, any_true)
    assert int(full.sum()) == full_blocks
