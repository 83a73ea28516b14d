"""The range of values a numeric setting may take, declared beside the setting itself.

A setting's type says what it is (a float, an integer); its range says what makes sense: a
learning rate of 1e300 or a resolution of 0.05 mm is a float, and fails an hour later, or
never and silently. Every numeric setting of the core declares its range on its field
(``field(default=..., metadata=within(...))``), and the configuration resolver checks every
value against it before anything is read or written, naming the field and the range.
Non-finite floats (NaN, infinities) are refused everywhere, plugins' settings included.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from cdsf_bench.errors import ConfigError

#: the key of a field's metadata that holds its :class:`Range`
RANGE = "range"
#: the largest seed every consumer accepts (scikit-learn's random_state: 2**32 - 1)
MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class Range:
    """A closed or half-open interval; ``None`` leaves a side unbounded."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def contains(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if self.high_open else value > self.high))

    def __str__(self) -> str:
        def number(value: float) -> str:
            return f"{value:g}" if isinstance(value, float) else str(value)

        if self.high is None and self.low is not None:
            return f"{'>' if self.low_open else '>='} {number(self.low)}"
        if self.low is None and self.high is not None:
            return f"{'<' if self.high_open else '<='} {number(self.high)}"
        left = "(" if self.low_open else "["
        right = ")" if self.high_open else "]"
        return f"in {left}{number(self.low or 0)}, {number(self.high or 0)}{right}"


def within(
    low: float | None = None, high: float | None = None, *, low_open: bool = False, high_open: bool = False
) -> dict[str, Range]:
    """Field metadata declaring the setting's range."""
    return {RANGE: Range(low, high, low_open, high_open)}


def check_value(key: str, value: Any, allowed: Range) -> None:
    """Refuse a number outside ``allowed`` (or not finite), naming ``key`` and the range."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"Setting '{key}' must be a finite number {allowed}, got {value!r}.")
    if not allowed.contains(value):
        raise ConfigError(f"Setting '{key}' must be {allowed}, got {value!r}.")


def check_section(settings: type, values: dict[str, Any], where: str) -> None:
    """Every value of a section against the ranges its settings type declares."""
    for item in fields(settings):
        declared = item.metadata.get(RANGE)
        if declared is not None and item.name in values:
            check_value(f"{where}.{item.name}", values[item.name], declared)


def check_finite(key: str, value: Any, default: Any) -> None:
    """A float setting whose default is finite must be finite too (a NaN weight trains nothing)."""
    if isinstance(value, float) and not math.isfinite(value):
        if isinstance(default, float) and not math.isfinite(default):
            return
        raise ConfigError(f"Setting '{key}' must be a finite number, got {value!r}.")
