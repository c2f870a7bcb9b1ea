"""The whole-tensor rules of rules.py equal the entry-by-entry rules of helpers.py (written from NATTEN's and HF
Swin's definitions), so the randomized tests compare against the same rules as the rest of the suite."""

import torch
from hypothesis import given
from hypothesis import strategies as st

from .rules import natten_1d_rule, natten_2d_rule, shifted_window_rule
from helpers import hf_shift_rule, natten_1d_reference, natten_2d_reference


@given(length=st.integers(1, 30), kernel=st.sampled_from([1, 3, 5, 7, 9]), dilation=st.integers(1, 4))
def test_natten_1d_rule_is_the_entry_by_entry_rule(length, kernel, dilation):
    real = torch.ones(1, length, dtype=torch.bool)
    assert torch.equal(natten_1d_rule(real, kernel, dilation)[0, 0], natten_1d_reference(length, kernel, dilation))


@given(
    rows=st.integers(1, 9),
    cols=st.integers(1, 9),
    kernel=st.tuples(st.sampled_from([1, 3, 5]), st.sampled_from([1, 3, 5, 7])),
    dilation=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    prefix=st.integers(0, 2),
)
def test_natten_2d_rule_is_the_entry_by_entry_rule(rows, cols, kernel, dilation, prefix):
    want = natten_2d_reference(rows, cols, kernel, dilation, prefix)
    assert torch.equal(natten_2d_rule((rows, cols), kernel, dilation, prefix), want)


@given(st.data())
def test_shifted_window_rule_is_hfs_rule(data):
    window = data.draw(st.integers(1, 4))
    rows, cols = (window * data.draw(st.integers(1, 3)) for _ in range(2))
    shift = data.draw(st.integers(0, window - 1))
    assert torch.equal(shifted_window_rule((rows, cols), window, shift), hf_shift_rule(rows, cols, window, shift))
