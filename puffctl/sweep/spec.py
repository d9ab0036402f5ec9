"""The sweep spec (docs/sweep.md): a base profile, fixed keys, searched keys and their spaces.

Parsing validates everything before a trial starts: the profile with its fixed keys, and every
searched key at its min, centre and max (the others at their centres), through the same
`profiles.resolve` that `puffctl train` uses, so a typo'd key or an out-of-range bound is one
line naming the spec, not a failed trial an hour later.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from puffctl import profiles
from puffctl.errors import PuffctlError
from puffctl.sweep import spaces

METHODS = ("cost-aware", "default", "random")
COSTS = ("steps", "time")
DIRECTIONS = ("maximize", "minimize")
TOP_KEYS = (
    "name", "description", "profile", "set", "search", "metric", "direction",
    "cost", "method", "trials", "seeds", "retries", "slots", "where", "storage", "run_storage", "seed",
)
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass
class SweepSpec:
    """A validated sweep: what to train, what to search, what to optimise, and how much to spend."""

    name: str
    profile: str
    fixed: dict[str, Any]
    search: dict[str, spaces.Space]
    metric: str = "env.episode_return"
    direction: str = "maximize"
    cost: str = "steps"
    method: str = "cost-aware"
    trials: int = 20
    seeds: int = 1
    retries: int = 1
    slots: int = 1
    where: str = "local"
    storage: str | None = None
    run_storage: str | None = None
    seed: int = 0
    description: str = ""
    source: str = field(default="", compare=False)

    def overrides(self, params: Mapping[str, Any]) -> dict:
        """The nested config overrides of one trial: the fixed keys, then its searched values."""
        return nest({**self.fixed, **params})

    def sets(self, params: Mapping[str, Any]) -> tuple[str, ...]:
        """The trial as `puffctl train --set` assignments (fixed keys first)."""
        return tuple(f"{key}={json.dumps(value)}" for key, value in {**self.fixed, **params}.items())

    def center(self) -> dict[str, Any]:
        """Trial 1: every searched key at its centre."""
        return {key: space.center for key, space in self.search.items()}


def nest(flat: Mapping[str, Any]) -> dict:
    """{"a.b": v} -> {"a": {"b": v}}."""
    nested: dict = {}
    for key, value in flat.items():
        parts = key.split(".")
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return nested


def _dotted_keys(mapping: Any, where: str, *, nested: bool = False) -> dict[str, Any]:
    """A mapping of dotted config keys (section.key) checked for shape; with `nested`, sections may
    also be written as mappings ({train: {gamma: 0.99}}) and are flattened."""
    if mapping is None:
        return {}
    if not isinstance(mapping, Mapping):
        raise PuffctlError(f"{where}: expected a mapping of dotted keys (e.g. train.learning_rate), got {mapping!r}")
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        if not isinstance(key, str) or not all(key.split(".")):
            raise PuffctlError(f"{where}: bad key {key!r} (expected a dotted key such as train.learning_rate)")
        if "." not in key and nested and isinstance(value, Mapping):
            flat.update({f"{key}.{inner}": item for inner, item in value.items()})
        elif "." not in key:
            raise PuffctlError(f"{where}: {key!r} is a section, not a key (write {key}.NAME)")
        else:
            flat[key] = value
    return flat


def _choice(data: Mapping, key: str, choices: tuple[str, ...], default: str, source: str) -> str:
    value = data.get(key, default)
    if value not in choices:
        raise PuffctlError(f"{source}: {key}: expected one of {', '.join(choices)}, got {value!r}")
    return value


def _count(data: Mapping, key: str, default: int, source: str, minimum: int = 1) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise PuffctlError(f"{source}: {key}: expected an integer >= {minimum}, got {value!r}")
    return value


def from_mapping(data: Any, source: str, default_name: str = "sweep") -> SweepSpec:
    """A validated SweepSpec from parsed YAML; every problem is a one-line error naming `source`."""
    if not isinstance(data, Mapping):
        raise PuffctlError(f"{source}: a sweep spec must be a YAML mapping")
    unknown = sorted(set(map(str, data)) - set(TOP_KEYS))
    if unknown:
        raise PuffctlError(f"{source}: unknown key(s) {', '.join(unknown)} (expected some of {', '.join(TOP_KEYS)})")
    name = str(data.get("name") or default_name)
    if not NAME_PATTERN.match(name):
        raise PuffctlError(f"{source}: name {name!r} must be letters, digits, '.', '_' or '-'")
    profile = data.get("profile")
    if not isinstance(profile, str) or not profile:
        raise PuffctlError(f"{source}: profile: expected a profile name or file (see `puffctl profile list`)")
    fixed = _dotted_keys(data.get("set"), f"{source}: set", nested=True)
    raw_search = _dotted_keys(data.get("search"), f"{source}: search")
    if not raw_search:
        raise PuffctlError(f"{source}: search: name at least one key to search, e.g. train.learning_rate: {{space: log, min: 1e-4, max: 1e-1}}")
    try:
        search = {key: spaces.parse(key, value) for key, value in raw_search.items()}
    except PuffctlError as error:
        raise PuffctlError(f"{source}: {error}") from None
    both = sorted(set(search) & set(fixed))
    if both:
        raise PuffctlError(f"{source}: {', '.join(both)} both fixed (set) and searched")
    metric = data.get("metric", "env.episode_return")
    if not isinstance(metric, str) or not metric or not all(metric.split(".")):
        raise PuffctlError(f"{source}: metric: expected a dotted key of the progress events, e.g. env.episode_return")
    storage = data.get("storage")
    if storage is not None and (not isinstance(storage, str) or "://" not in storage):
        raise PuffctlError(f"{source}: storage: expected a database URL such as sqlite:///study.db or postgresql://host/db")
    where = data.get("where", "local")
    if where != "local" and not (isinstance(where, str) and where.startswith("ray://")):
        raise PuffctlError(f"{source}: where: local or ray://HOST:PORT (a Ray cluster), got {where!r}")
    run_storage = data.get("run_storage")
    if (run_storage is None) != (where == "local"):
        raise PuffctlError(f"{source}: run_storage: a directory every Ray node can reach goes with where: ray://..., and only with it")
    seed = data.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise PuffctlError(f"{source}: seed: expected an integer, got {seed!r}")
    spec = SweepSpec(
        name=name,
        profile=profile,
        fixed=fixed,
        search=search,
        metric=metric,
        direction=_choice(data, "direction", DIRECTIONS, "maximize", source),
        cost=_choice(data, "cost", COSTS, "steps", source),
        method=_choice(data, "method", METHODS, "cost-aware", source),
        trials=_count(data, "trials", 20, source),
        seeds=_count(data, "seeds", 1, source),
        retries=_count(data, "retries", 1, source, minimum=0),
        slots=_count(data, "slots", 1, source),
        where=where,
        storage=storage,
        run_storage=run_storage,
        seed=seed,
        description=str(data.get("description") or ""),
        source=source,
    )
    validate(spec)
    return spec


def validate(spec: SweepSpec) -> None:
    """Resolve the profile with the fixed keys, then each searched key at min, centre and max."""
    try:
        loaded = profiles.load(spec.profile)
    except PuffctlError as error:
        raise PuffctlError(f"{spec.source}: profile: {error}") from None
    base = loaded.overrides
    profiles.resolve(base, f"profile {loaded.name} ({loaded.path})")
    centre = spec.center()
    config = profiles.resolve(profiles.deep_merge(base, spec.overrides(centre)), f"{spec.source} (fixed keys and centres)")
    profiles.check_env(config["env"]["name"])
    for key, space in spec.search.items():
        for label, x in (("min", -1.0), ("max", 1.0)):
            params = {**centre, key: space.decode(x)}
            profiles.resolve(profiles.deep_merge(base, spec.overrides(params)), f"{spec.source}: search.{key} at its {label}")


def load(path: Path) -> SweepSpec:
    """Read and validate a sweep spec file."""
    return from_mapping(profiles.read_yaml(path, "sweep spec"), str(path), default_name=path.stem)
