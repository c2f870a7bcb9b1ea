"""Hypothesis profiles of the randomized differential tests.

* ``ci`` (default): few examples, drawn from a fixed seed (``derandomize``), so every run of the suite checks the same
  cases and a failure reproduces; about a minute on a 2-core machine. No shrink phase: a failure is reported as
  drawn (with the call that reproduces it), since shrinking an example that builds models can take many minutes
  (over nine were seen on an old torch) and would eat CI's time; shrink it afterwards under ``release``.
* ``release``: many more examples, freshly drawn; run before a release:

      HF_FLEXATTN_HYPOTHESIS_PROFILE=release python -m pytest -q tests/randomized

Cases that once failed are kept as ``@example``\\ s on the tests, so they run under every profile.
"""

import os

from hypothesis import HealthCheck, Phase, settings

PROFILE_VARIABLE = "HF_FLEXATTN_HYPOTHESIS_PROFILE"

# models are built inside examples (deadline=None: the first call of a shape is slower than the next ones)
_common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
NO_SHRINK = tuple(phase for phase in Phase if phase != Phase.shrink)
settings.register_profile(
    "ci", max_examples=8, derandomize=True, database=None, print_blob=True, phases=NO_SHRINK, **_common
)
settings.register_profile("release", max_examples=200, print_blob=True, **_common)

PROFILE = os.environ.get(PROFILE_VARIABLE, "ci")
settings.load_profile(PROFILE)
