"""Search spaces: transforms round-trip, decoded values stay in bounds and round like their key."""

from __future__ import annotations

import numpy as np
import pytest

from puffctl.errors import PuffctlError
from puffctl.sweep import spaces

SPECS = {
    "lr": {"space": "log", "min": 1e-5, "max": 1e-1},
    "gamma": {"space": "logit", "min": 0.9, "max": 0.9999},
    "batch": {"space": "pow2", "min": 64, "max": 8192},
    "epochs": {"space": "int", "min": 1, "max": 16},
    "clip": {"space": "linear", "min": -0.5, "max": 2.0},
}
XS = np.concatenate([np.linspace(-1.0, 1.0, 201), np.random.default_rng(0).uniform(-1, 1, 500), [-5.0, 5.0, -1.0000001]])

@pytest.mark.parametrize("name", SPECS)
def test_sweep_decoded_values_respect_bounds_and_rounding(name):
    space = spaces.parse(name, SPECS[name])
    values = [space.decode(x) for x in XS]
    assert all(space.min <= value <= space.max for value in values)
    if space.kind == "log":
        assert min(values) > 0
    if space.kind == "logit":
        assert max(values) < 1
    if space.kind == "pow2":
        assert all(isinstance(v, int) and v & (v - 1) == 0 for v in values)
        assert set(values) == {2**p for p in range(6, 14)}
    if space.kind == "int":
        assert all(isinstance(v, int) for v in values) and set(values) == set(range(1, 17))
    assert space.decode(-1.0) in (space.min, space.max) and space.decode(1.0) in (space.min, space.max)

@pytest.mark.parametrize("name", SPECS)
def test_sweep_transforms_round_trip(name):
    space = spaces.parse(name, SPECS[name])
    for x in XS[:201]:
        value = space.decode(x)
        assert space.decode(space.normalize(value)) == pytest.approx(value, rel=1e-9)
        assert space.snap(space.snap(x)) == pytest.approx(space.snap(x), abs=1e-12)
        if space.kind in ("log", "logit", "linear"):
            assert space.normalize(value) == pytest.approx(x, abs=1e-9)

def test_sweep_centres_default_to_the_middle_of_each_axis_and_scale_is_in_own_units():
    parsed = {name: spaces.parse(name, spec) for name, spec in SPECS.items()}
    assert parsed["lr"].center == pytest.approx(10**-3)
    assert parsed["gamma"].center == pytest.approx(1 - 10**-2.5)
    assert parsed["batch"].center in (512, 1024) and isinstance(parsed["batch"].center, int)
    assert parsed["epochs"].center in (8, 9)
    given = spaces.parse("lr", {**SPECS["lr"], "center": 3e-4, "scale": 1})
    assert given.center == pytest.approx(3e-4) and given.scale == 1
    assert given.scale_normalized == pytest.approx(2 / 4)  # one decade of four, on an axis 2 wide

@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"space": "log", "min": 0, "max": 1}, "min > 0"),
        ({"space": "logit", "min": 0.9, "max": 1.0}, "max < 1"),
        ({"space": "pow2", "min": 64, "max": 1000}, "powers of two"),
        ({"space": "int", "min": 1.2, "max": 1.8}, "no integer"),
        ({"space": "cubic", "min": 1, "max": 2}, "space: expected one of"),
        ({"space": "linear", "min": 2, "max": 1}, "must be below max"),
        ({"space": "linear", "min": 0, "max": 1, "center": 3}, "center"),
        ({"space": "linear", "min": 0, "max": 1, "scale": 0}, "scale"),
        ({"space": "linear", "min": 0, "max": 1, "step": 0.1}, "unknown field"),
    ],
)
def test_sweep_bad_space_is_one_line_error(spec, message):
    with pytest.raises(PuffctlError, match=message) as error:
        spaces.parse("train.x", spec)
    assert "\n" not in str(error.value) and "search.train.x" in str(error.value)
