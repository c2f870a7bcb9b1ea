"""Hypothesis profiles of the randomized differential tests.

* ``ci`` (default): few examples, drawn from a fixed seed (``derandomize``), so every run of the suite checks the same
  cases and a failure reproduces; about a minute on a 2-core machine.
* ``release``: many more examples, freshly drawn; run before a release:

      HF_FLEXATTN_HYPOTHESIS_PROFILE=release python -m pytest -q tests/randomized

Cases that once failed are kept as ``@example``\\ s on the tests, so they run under every profile.
"""

import os

from hypothesis import HealthCheck, settings

PROFILE_VARIABLE = "HF_FLEXATTN_HYPOTHESIS_PROFILE"

# models are built inside examples (deadline=None: the first call of a shape is slower than the next ones)
_common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("ci", max_examples=8, derandomize=True, database=None, print_blob=True, **_common)
settings.register_profile("release", max_examples=200, print_blob=True, **_common)

PROFILE = os.environ.get(PROFILE_VARIABLE, "ci")
settings.load_profile(PROFILE)
