"""One-time warnings (Liger-Kernel's habit): an option that cannot take effect is said once, never ignored."""

from __future__ import annotations

import warnings

_warned: set[str] = set()


def warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, stacklevel=3)
