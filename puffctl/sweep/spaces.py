"""Search spaces for swept keys, as researchers think in them (DOMAIN.md §7).

A space maps a key's value to its own axis ("internal": log10 for `log`, log10(1 - v) for
`logit`, log2 for `pow2`, the value itself for `linear` and `int`) and that axis linearly onto
[-1, 1], where the tuner fits. Decoding rounds in the key's own space (pow2 to a power of two,
int to an integer) and clips to [min, max], so every decoded value is one the key can take.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from puffctl.errors import PuffctlError

KINDS = ("linear", "log", "logit", "pow2", "int")
FIELDS = ("space", "min", "max", "center", "scale")
#: Default scale (the cost-aware method's step, in the key's own units) as a fraction of the range.
DEFAULT_SCALE_FRACTION = 0.25


@dataclass(frozen=True)
class Space:
    """One searched key: its kind, bounds, centre (trial 1) and scale (in its own units)."""

    key: str
    kind: str
    min: float
    max: float
    center: float | int
    scale: float

    def internal(self, value: float) -> float:
        """A value on the key's own axis (log10, log10(1 - v), log2 or itself)."""
        if self.kind == "log":
            return math.log10(value)
        if self.kind == "logit":
            return math.log10(1.0 - value)
        if self.kind == "pow2":
            return math.log2(value)
        return float(value)

    def external(self, axis: float) -> float:
        """The inverse of `internal`, without rounding."""
        if self.kind == "log":
            return 10.0**axis
        if self.kind == "logit":
            return 1.0 - 10.0**axis
        if self.kind == "pow2":
            return 2.0**axis
        return axis

    @property
    def low(self) -> float:
        """The lower end of the internal axis (logit's axis runs backwards: 1 - v shrinks as v grows)."""
        return min(self.internal(self.min), self.internal(self.max))

    @property
    def high(self) -> float:
        """The upper end of the internal axis."""
        return max(self.internal(self.min), self.internal(self.max))

    def normalize(self, value: float) -> float:
        """A value in [-1, 1]: the internal axis mapped linearly, clipped."""
        span = self.high - self.low
        if span == 0:
            return 0.0
        return max(-1.0, min(1.0, 2.0 * (self.internal(value) - self.low) / span - 1.0))

    def decode(self, x: float) -> float | int:
        """The key's value at normalised `x` in [-1, 1], rounded in its own space and within bounds."""
        x = max(-1.0, min(1.0, float(x)))
        axis = self.low + (x + 1.0) / 2.0 * (self.high - self.low)
        if self.kind == "pow2":
            power = min(max(round(axis), math.ceil(self.low - 1e-9)), math.floor(self.high + 1e-9))
            return int(2**power)
        value = self.external(axis)
        if self.kind == "int":
            return int(min(max(round(value), math.ceil(self.min)), math.floor(self.max)))
        return min(max(value, self.min), self.max)

    def snap(self, x: float) -> float:
        """The normalised position of the value that `x` decodes to (rounding made visible to the tuner)."""
        return self.normalize(self.decode(x))

    @property
    def scale_normalized(self) -> float:
        """The scale in [-1, 1] units (the internal axis's span is 2 there)."""
        span = self.high - self.low
        return 2.0 * self.scale / span if span else 0.0


def parse(key: str, spec: Any) -> Space:
    """A Space from its spec mapping ({space, min, max, center?, scale?}); bad specs are one-line errors."""
    where = f"search.{key}"
    if not isinstance(spec, Mapping):
        raise PuffctlError(f"{where}: expected a mapping with space, min and max, got {spec!r}")
    unknown = sorted(set(spec) - set(FIELDS))
    if unknown:
        raise PuffctlError(f"{where}: unknown field(s) {', '.join(unknown)} (expected {', '.join(FIELDS)})")
    kind = spec.get("space")
    if kind not in KINDS:
        raise PuffctlError(f"{where}.space: expected one of {', '.join(KINDS)}, got {kind!r}")
    bounds = {}
    for name in ("min", "max"):
        value = spec.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise PuffctlError(f"{where}.{name}: expected a number, got {value!r}")
        bounds[name] = float(value)
    low, high = bounds["min"], bounds["max"]
    if low >= high:
        raise PuffctlError(f"{where}: min ({low:g}) must be below max ({high:g})")
    if kind == "log" and low <= 0:
        raise PuffctlError(f"{where}: a log space needs min > 0 (it never samples 0), got {low:g}")
    if kind == "logit" and not (low < high < 1):
        raise PuffctlError(f"{where}: a logit space needs max < 1 (it searches log10(1 - v)), got {high:g}")
    if kind == "pow2":
        for name, value in (("min", low), ("max", high)):
            if value < 1 or not math.log2(value).is_integer():
                raise PuffctlError(f"{where}.{name}: a pow2 space needs powers of two, got {value:g}")
    if kind == "int" and math.floor(high) < math.ceil(low):
        raise PuffctlError(f"{where}: no integer between min {low:g} and max {high:g}")
    shell = Space(key, kind, low, high, low, 1.0)
    center = spec.get("center")
    if center is None:
        center_value = shell.decode(0.0)
    else:
        if isinstance(center, bool) or not isinstance(center, (int, float)) or not low <= center <= high:
            raise PuffctlError(f"{where}.center: expected a number within [{low:g}, {high:g}], got {center!r}")
        center_value = shell.decode(shell.normalize(center))
    scale = spec.get("scale")
    if scale is None:
        scale_value = DEFAULT_SCALE_FRACTION * (shell.high - shell.low)
    elif isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (scale > 0 and math.isfinite(scale)):
        raise PuffctlError(f"{where}.scale: expected a positive number (in the space's own units), got {scale!r}")
    else:
        scale_value = float(scale)
    return Space(key, kind, low, high, center_value, scale_value)
