"""Ablation specs: parse a YAML spec, and expand it into cells with stable ids.

Every cell's config is built by `puffctl.profiles.build_config`, the code `puffctl train`
uses, so a cell is exactly the run `puffctl train PROFILE --set ... --seed S` would be.
A cell id is a hash of that resolved config (seed included): renaming a label, reordering
variants or adding seeds leaves the other cells' ids, and their finished runs, alone.
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from puffctl import profiles, runs
from puffctl.errors import PuffctlError

SPEC_KEYS = ("name", "description", "variants", "grid", "seeds", "env", "steps", "stop_at_steps", "metric", "higher_is_better",
             "target", "baseline", "retries", "slots", "where", "per_gpu", "storage")
VARIANT_KEYS = ("label", "profile", "set")
DEFAULT_METRIC = "env.episode_return"


@dataclass(frozen=True)
class Variant:
    """One arm of the comparison: a profile plus `--set`-style overrides, under a label."""

    label: str
    profile: str
    sets: tuple[str, ...] = ()


@dataclass
class Spec:
    """A parsed ablation spec (docs/ablate.md)."""

    name: str
    variants: list[Variant]
    seeds: list[int]
    metric: str = DEFAULT_METRIC
    higher_is_better: bool = True
    target: float | None = None
    baseline: str | None = None
    grid: dict[str, list] = field(default_factory=dict)
    env: str | None = None
    steps: int | None = None
    stop_at_steps: int | None = None
    retries: int = 1
    slots: int | None = None
    description: str = ""
    source: str = "spec"
    raw: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Cell:
    """One run of the batch: a variant at one grid point with one seed, and its resolved config."""

    cell_id: str
    group: str
    variant: str
    point: tuple[tuple[str, Any], ...]
    seed: int
    profile: str
    sets: tuple[str, ...]
    config: dict

    def to_json(self) -> dict:
        """The cell as stored in the batch's cells.json (its config apart, in configs.json)."""
        return {"id": self.cell_id, "group": self.group, "variant": self.variant, "point": [list(p) for p in self.point],
                "seed": self.seed, "profile": self.profile, "sets": list(self.sets)}

    @classmethod
    def from_json(cls, data: dict, config: dict | None = None) -> Cell:
        """The inverse of to_json, with the cell's config if it was loaded ({} if not)."""
        return cls(cell_id=data["id"], group=data["group"], variant=data["variant"],
                   point=tuple((key, value) for key, value in data["point"]), seed=data["seed"],
                   profile=data["profile"], sets=tuple(data["sets"]), config=config or {})


def cell_id(config: Mapping) -> str:
    """The stable id of a resolved config: 12 hex digits of its canonical JSON's SHA-256."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]


def assignment(key: str, value: Any) -> str:
    """A `--set` string for key=value (JSON is YAML, so the value parses back unchanged)."""
    return f"{key}={json.dumps(value)}"


def load(path: Path) -> Spec:
    """Read and parse a spec file."""
    return parse(profiles.read_yaml(path, "spec file"), str(path))


def _unknown(keys: Any, allowed: tuple[str, ...], where: str) -> None:
    for key in keys:
        if key not in allowed:
            hint = difflib.get_close_matches(str(key), allowed, n=1)
            raise PuffctlError(f"{where}: unknown key {key!r}" + (f" (did you mean {hint[0]}?)" if hint else f" (known: {', '.join(allowed)})"))


def _int(value: Any, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise PuffctlError(f"{what}={value!r} must be an integer >= {minimum}")
    return value


def _sets(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, Mapping):
        return tuple(assignment(str(key), item) for key, item in value.items())
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        for item in value:
            profiles.parse_set(item)
        return tuple(value)
    raise PuffctlError(f"{where}: set must be a mapping of key: value or a list of KEY=VALUE strings")


def _seeds(value: Any, where: str) -> list[int]:
    if isinstance(value, list):
        if not value:
            raise PuffctlError(f"{where}: seeds is an empty list")
        seeds = [_int(item, f"{where}: seed", 0) for item in value]
        if len(set(seeds)) != len(seeds):
            raise PuffctlError(f"{where}: seeds repeat: {value}")
        return seeds
    count = _int(value, f"{where}: seeds", 1)
    return list(range(1, count + 1))


def parse(data: Any, source: str = "spec") -> Spec:
    """A spec mapping to a Spec, or a one-line PuffctlError naming `source` and the problem."""
    if not isinstance(data, Mapping):
        raise PuffctlError(f"{source}: a spec must be a YAML mapping")
    _unknown(data, SPEC_KEYS, source)
    name = data.get("name")
    if not isinstance(name, str):
        raise PuffctlError(f"{source}: name (the batch's name) is required")
    try:
        runs.check_run_id(name)
    except PuffctlError as error:
        raise PuffctlError(f"{source}: name: {error}") from None
    raw_variants = data.get("variants")
    if not isinstance(raw_variants, list) or not raw_variants:
        raise PuffctlError(f"{source}: variants must be a non-empty list")
    variants: list[Variant] = []
    for index, item in enumerate(raw_variants):
        where = f"{source}: variants[{index}]"
        if not isinstance(item, Mapping):
            raise PuffctlError(f"{where}: a variant is a mapping with label, profile and set")
        _unknown(item, VARIANT_KEYS, where)
        label, profile = item.get("label"), item.get("profile")
        if not isinstance(label, str) or not label.strip():
            raise PuffctlError(f"{where}: label is required")
        if not isinstance(profile, str) or not profile:
            raise PuffctlError(f"{where} ({label}): profile is required")
        if any(variant.label == label for variant in variants):
            raise PuffctlError(f"{source}: duplicate variant label {label!r}")
        variants.append(Variant(label, profile, _sets(item.get("set"), f"{where} ({label})")))
    grid = data.get("grid")
    if grid is not None:
        if not isinstance(grid, Mapping) or not grid:
            raise PuffctlError(f"{source}: grid is empty (give key: [values...], or leave it out)")
        for key, values in grid.items():
            if not isinstance(values, list) or not values:
                raise PuffctlError(f"{source}: grid {key}: empty list of values")
            profiles.parse_set(f"{key}=0")
    labels = [variant.label for variant in variants]
    baseline = data.get("baseline", labels[0])
    if baseline not in labels:
        raise PuffctlError(f"{source}: baseline {baseline!r} is not a variant (variants: {', '.join(labels)})")
    metric = data.get("metric", DEFAULT_METRIC)
    if not isinstance(metric, str) or not metric or not all(metric.split(".")):
        raise PuffctlError(f"{source}: metric={metric!r} must be a dotted event key such as env.episode_return")
    higher = data.get("higher_is_better", True)
    if not isinstance(higher, bool):
        raise PuffctlError(f"{source}: higher_is_better={higher!r} must be true or false")
    target = data.get("target")
    if target is not None and (isinstance(target, bool) or not isinstance(target, (int, float))):
        raise PuffctlError(f"{source}: target={target!r} must be a number")
    env = data.get("env")
    if env is not None and not isinstance(env, str):
        raise PuffctlError(f"{source}: env={env!r} must be an env name")
    steps, stop_at = data.get("steps"), data.get("stop_at_steps")
    slots = data.get("slots")
    return Spec(
        name=name,
        variants=variants,
        seeds=_seeds(data.get("seeds", 1), source),
        metric=metric,
        higher_is_better=higher,
        target=None if target is None else float(target),
        baseline=baseline,
        grid={str(key): list(values) for key, values in (grid or {}).items()},
        env=env,
        steps=None if steps is None else _int(steps, f"{source}: steps", 1),
        stop_at_steps=None if stop_at is None else _int(stop_at, f"{source}: stop_at_steps", 1),
        retries=_int(data.get("retries", 1), f"{source}: retries", 0),
        slots=None if slots is None else _int(slots, f"{source}: slots", 1),
        description=str(data.get("description") or ""),
        source=source,
        raw=dict(data),
    )


def group_name(label: str, point: tuple[tuple[str, Any], ...]) -> str:
    """What the report compares: the variant's label, plus its grid point if there is a grid."""
    return " ".join([label, *(f"{key}={json.dumps(value)}" for key, value in point)])


def make_cell(profile: profiles.Profile, group: str, variant: str, sets: tuple[str, ...], seed: int, *,
              point: tuple[tuple[str, Any], ...] = (), env: str | None = None, steps: int | None = None,
              stop_at_steps: int | None = None) -> Cell:
    """One cell: the config `puffctl train PROFILE --set ... --seed SEED` would train, and its id."""
    config = profiles.build_config(profile, sets=sets, env=env, seed=seed, steps=steps, stop_at_steps=stop_at_steps)
    return Cell(cell_id(config), group, variant, point, seed, profile.name, tuple(sets), config)


def expand(spec: Spec) -> list[Cell]:
    """Every cell (variant x grid point x seed), each resolved and validated before anything runs."""
    loaded: dict[str, profiles.Profile] = {}
    points = list(itertools.product(*([(key, value) for value in values] for key, values in spec.grid.items())))
    cells: list[Cell] = []
    seen: dict[str, str] = {}
    for variant in spec.variants:
        if variant.profile not in loaded:
            try:
                loaded[variant.profile] = profiles.load(variant.profile)
            except PuffctlError as error:
                raise PuffctlError(f"{spec.source}: variant {variant.label!r}: {error}") from None
        for point in points:
            group = group_name(variant.label, point)
            sets = (*variant.sets, *(assignment(key, value) for key, value in point))
            for seed in spec.seeds:
                try:
                    cell = make_cell(loaded[variant.profile], group, variant.label, sets, seed, point=point,
                                     env=spec.env, steps=spec.steps, stop_at_steps=spec.stop_at_steps)
                except PuffctlError as error:
                    raise PuffctlError(f"{spec.source}: cell {group} seed {seed}: {error}") from None
                if cell.cell_id in seen:
                    raise PuffctlError(f"{spec.source}: cells {seen[cell.cell_id]} and {group} seed {seed} have the same config")
                seen[cell.cell_id] = f"{group} seed {seed}"
                cells.append(cell)
    return cells


def baseline_group(spec: Spec, cell: Cell) -> str:
    """The group a cell's group is compared against: the baseline variant at the same grid point."""
    return group_name(spec.baseline or spec.variants[0].label, cell.point)
