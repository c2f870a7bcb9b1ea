"""Argument checks shared by the options of every variant, the families and ``ops``.

Each check takes the caller's name for the argument and its value, raises ``ValueError`` quoting both and what is
allowed, and returns the value normalised (ints stay ints, pairs become tuples), so callers validate once and then
use the result. ``where`` prefixes the message with the call it belongs to, e.g. ``"patch(variant='longformer')"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def _fail(where: str, name: str, value: Any, expected: str) -> ValueError:
    prefix = f"{where}: " if where else ""
    return ValueError(f"{prefix}{name}={value!r}; expected {expected}")


def is_int(value: Any) -> bool:
    """An int that is not a bool (``True`` is an int in Python, never a size here)."""
    return isinstance(value, int) and not isinstance(value, bool)


def positive_int(name: str, value: Any, where: str = "") -> int:
    if not is_int(value) or value < 1:
        raise _fail(where, name, value, "a positive int")
    return value


def non_negative_int(name: str, value: Any, where: str = "") -> int:
    if not is_int(value) or value < 0:
        raise _fail(where, name, value, "an int ≥ 0")
    return value


def positive_odd_int(name: str, value: Any, where: str = "") -> int:
    if not is_int(value) or value < 1 or value % 2 == 0:
        raise _fail(where, name, value, "a positive odd int")
    return value


def positive_even_int(name: str, value: Any, where: str = "", why: str = "") -> int:
    if not is_int(value) or value < 1 or value % 2:
        raise _fail(where, name, value, "a positive even int" + (f" ({why})" if why else ""))
    return value


def boolean(name: str, value: Any, where: str = "") -> bool:
    if not isinstance(value, bool):
        raise _fail(where, name, value, "True or False")
    return value


def one_of(name: str, value: Any, choices: Sequence[Any], where: str = "") -> Any:
    if value not in choices:
        raise _fail(where, name, value, " or ".join(repr(c) for c in choices))
    return value


def int_or_pair(name: str, value: Any, where: str = "", check=positive_int) -> tuple[int, int]:
    """An int (used for both axes) or a (rows, cols) pair, each entry passing ``check``."""
    values = tuple(value) if isinstance(value, (list, tuple)) else (value, value)
    if len(values) != 2:
        raise _fail(where, name, value, "an int or a (rows, cols) pair of them")
    try:
        return tuple(check(name, v, "") for v in values)
    except ValueError:
        raise _fail(where, name, value, "a positive int or a (rows, cols) pair of them") from None


def int_per_layer(name: str, value: Any, num_layers: int, where: str = "", check=positive_int) -> tuple[int, ...]:
    """An int for every layer, or a list with one entry per layer, each passing ``check``."""
    values = list(value) if isinstance(value, (list, tuple)) else [value] * num_layers
    if len(values) != num_layers:
        prefix = f"{where}: " if where else ""
        raise ValueError(f"{prefix}{name} has {len(values)} entries; give one int, or one per layer ({num_layers})")
    return tuple(check(name, v, where) for v in values)


def positions(name: str, value: Any, where: str = "") -> tuple[int, ...]:
    """Token positions: a list of ints ≥ 0 (``None`` for none), returned sorted without repeats."""
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)) or not all(is_int(v) and v >= 0 for v in value):
        raise _fail(where, name, value, "a list of token positions (ints ≥ 0), e.g. [0]")
    return tuple(sorted(set(value)))


def sized_like(name: str, shape: tuple[int, ...], expected: tuple[int, ...], meaning: str) -> None:
    """Raise unless a tensor's ``shape`` is ``expected``; ``meaning`` names the dimensions."""
    if tuple(shape) != tuple(expected):
        raise ValueError(f"{name} has shape {tuple(shape)}; expected {meaning} = {tuple(expected)}")


def kernel_fits_grid(
    kernel_size: Any, dilation: Any, grid: tuple[int, int], where: str = "", whose: str = "the"
) -> tuple[tuple[int, int], tuple[int, int]]:
    """NATTEN 2D's one check of its arguments against a grid: odd kernel sides, positive dilations, and a dilated
    kernel no larger than the grid on each axis. ``whose`` names the grid in the message ("the model's", "the
    input's"). Returns (kernel, dilation) as (rows, cols) pairs."""
    kernel = int_or_pair("kernel_size", kernel_size, where, positive_odd_int)
    dilations = int_or_pair("dilation", dilation, where)
    for axis, (g, k, d) in enumerate(zip(grid, kernel, dilations)):
        if k * d > g:
            prefix = f"{where}: " if where else ""
            raise ValueError(
                f"{prefix}kernel_size={kernel_size!r} with dilation={dilation!r} spans {k * d} positions, more than "
                f"the {'rows' if axis == 0 else 'columns'} of {whose} {grid[0]}x{grid[1]} patch grid"
            )
    return kernel, dilations
