"""The ``ci`` profile cannot spend CI's time shrinking a failing example (tests/randomized/conftest.py)."""

import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st


def test_ci_profile_reports_a_failure_without_shrinking():
    assert Phase.shrink not in settings.get_profile("ci").phases
    assert Phase.generate in settings.get_profile("ci").phases and Phase.explicit in settings.get_profile("ci").phases

    calls = []

    @settings(settings.get_profile("ci"), max_examples=50)
    @given(st.lists(st.integers(0, 1000), min_size=5, max_size=20))
    def fails_on_every_long_list(values):
        calls.append(values)
        assert len(values) < 5

    with pytest.raises(AssertionError):
        fails_on_every_long_list()
    # the first failing example is reported as drawn (then replayed once): no shrinking to the 5-element minimum
    assert len(calls) <= 3
