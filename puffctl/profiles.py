"""Named training profiles: YAML files with `extends:` inheritance, deep merge and --set overrides.

A profile is a trainer config (sections env, policy, train, logger) plus two profile-level
keys that the trainer never sees: `extends` (another profile's name, or a YAML path relative to
the extending file) and `description` (one line for `puffctl profile list`). Every value is
validated by `trainer.config.resolve` before anything starts.
"""

from __future__ import annotations

import copy
import difflib
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from puffctl.errors import PuffctlError

PROFILE_KEYS = ("extends", "description", "reference")
BUNDLED_DIR = Path(__file__).resolve().parent.parent / "profiles"


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `3e-4` and `1e6` as floats (YAML 1.2), as researchers write them."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*)?(?:\.\d*)?[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def parse_yaml(text: str, source: str) -> Any:
    """YAML text to data, or a one-line PuffctlError naming `source` and the line."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise PuffctlError(f"{source}: invalid YAML{where}: {problem}") from None


def search_dirs() -> list[Path]:
    """Where named profiles are looked up, first match wins: $PUFFCTL_PROFILES_DIR (an os.pathsep
    list), the profiles/ next to this package (a checkout or editable install), then ./profiles."""
    extra = [Path(part) for part in os.environ.get("PUFFCTL_PROFILES_DIR", "").split(os.pathsep) if part]
    return [*extra, BUNDLED_DIR, Path("profiles")]


def available() -> dict[str, Path]:
    """Every named profile: name -> file (earlier search dirs win)."""
    found: dict[str, Path] = {}
    for directory in search_dirs():
        if directory.is_dir():
            for path in sorted(directory.glob("*.yaml")):
                found.setdefault(path.stem, path)
    return found


def looks_like_path(name: str) -> bool:
    """True if `name` names a YAML file rather than a profile."""
    return name.endswith((".yaml", ".yml")) or os.sep in name or "/" in name


def find(name: str, relative_to: Path | None = None) -> Path:
    """The file of profile `name` (a profile name or a YAML path); unknown names get suggestions."""
    if looks_like_path(name):
        path = Path(name).expanduser()
        if not path.is_absolute() and relative_to is not None:
            path = relative_to / path
        if not path.is_file():
            raise PuffctlError(f"no such profile file: {path}")
        return path
    profiles = available()
    if name in profiles:
        return profiles[name]
    close = difflib.get_close_matches(name, list(profiles), n=3, cutoff=0.5)
    hint = f" (did you mean {', '.join(close)}?)" if close else f" (available: {', '.join(profiles) or 'none'})"
    raise PuffctlError(f"unknown profile {name!r}{hint}")


def read_yaml(path: Path, what: str) -> Any:
    """A YAML file's data; a missing or unreadable file is one line naming `what` it should be
    (a profile file, a spec file, ...)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PuffctlError(f"no such {what}: {path}") from None
    except OSError as error:
        raise PuffctlError(f"cannot read {path}: {error.strerror or error}") from None
    return parse_yaml(text, str(path))


def read_file(path: Path) -> dict:
    """One profile file's own mapping (no inheritance applied)."""
    data = read_yaml(path, "profile file")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise PuffctlError(f"{path}: a profile must be a YAML mapping, not {type(data).__name__}")
    extends = data.get("extends")
    if extends is not None and not isinstance(extends, str):
        raise PuffctlError(f"{path}: extends must be a profile name or a file path, not {extends!r}")
    return data


def deep_merge(base: Mapping, override: Mapping) -> dict:
    """`override` onto `base`: mappings merge key by key, anything else replaces."""
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


@dataclass
class Profile:
    """A profile after inheritance: its name, file, the chain of files, and the merged mapping."""

    name: str
    path: Path
    chain: list[Path]
    own: dict
    merged: dict

    @property
    def extends(self) -> str:
        """What the profile's own file extends ("" if nothing)."""
        return str(self.own.get("extends") or "")

    @property
    def description(self) -> str:
        """The profile's one-line description (inherited if its own file has none)."""
        text = str(self.merged.get("description") or "").strip()
        return text.splitlines()[0] if text else ""

    @property
    def reference(self) -> str:
        """The run the live table compares against (a pinned name or run; "" if none)."""
        return str(self.merged.get("reference") or "")

    @property
    def overrides(self) -> dict:
        """The merged mapping without profile-level keys: what goes to trainer.config.resolve."""
        return {key: value for key, value in self.merged.items() if key not in PROFILE_KEYS}


def load(name: str) -> Profile:
    """A profile by name or path, with its `extends` chain merged (base first); cycles are errors."""
    path = find(name)
    chain: list[Path] = []
    layers: list[dict] = []
    current: Path | None = path
    while current is not None:
        resolved = current.resolve()
        if resolved in chain:
            names = " -> ".join(p.stem for p in [*chain, resolved])
            raise PuffctlError(f"extends cycle: {names}")
        chain.append(resolved)
        data = read_file(current)
        layers.append(data)
        parent = data.get("extends")
        try:
            current = find(parent, relative_to=current.parent) if parent else None
        except PuffctlError as error:
            raise PuffctlError(f"{current}: extends {parent!r}: {error}") from None
    merged: dict = {}
    for layer in reversed(layers):
        merged = deep_merge(merged, layer)
    merged["extends"] = layers[0].get("extends")
    if "description" not in layers[0]:
        merged["description"] = next((layer["description"] for layer in layers if "description" in layer), "")
    return Profile(name=path.stem, path=path, chain=chain, own=layers[0], merged=merged)


def parse_set(assignment: str) -> tuple[list[str], Any]:
    """`a.b=value` -> (["a", "b"], value parsed as YAML); a one-line error for anything else."""
    key, sep, text = assignment.partition("=")
    key = key.strip()
    parts = key.split(".")
    if not sep or not key or not all(parts):
        raise PuffctlError(f"--set {assignment!r}: expected KEY=VALUE with a dotted key, e.g. train.learning_rate=0.001")
    if parts[0] in PROFILE_KEYS:
        raise PuffctlError(f"--set {assignment!r}: {parts[0]} is a profile key, not a config key")
    try:
        value = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError:
        raise PuffctlError(f"--set {key}: cannot parse value {text!r} as YAML") from None
    return parts, value


def overrides_from(assignments: Iterable[str]) -> dict:
    """The nested mapping of many --set assignments (later ones win)."""
    nested: dict = {}
    for assignment in assignments:
        parts, value = parse_set(assignment)
        node = nested
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[parts[-1]] = value
    return nested


def resolve(overrides: Mapping, source: str) -> dict:
    """trainer.config.resolve(overrides), its ConfigError turned into a one-line error from `source`."""
    from trainer import config as trainer_config

    try:
        return trainer_config.resolve(overrides)
    except trainer_config.ConfigError as error:
        raise PuffctlError(f"{source}: {error}") from None


def build_config(
    profile: Profile,
    *,
    sets: Iterable[str] = (),
    env: str | None = None,
    seed: int | None = None,
    steps: int | None = None,
    stop_at_steps: int | None = None,
    logger: str | None = None,
) -> dict:
    """The fully resolved trainer config for a profile and the command line's overrides.

    The profile is validated on its own first, so an error names the file when the file is
    wrong and the flag when a flag is wrong.
    """
    base = profile.overrides
    resolve(base, f"profile {profile.name} ({profile.path})")
    flags: dict = {}
    if env is not None:
        flags = deep_merge(flags, {"env": {"name": env}})
    if seed is not None:
        flags = deep_merge(flags, {"train": {"seed": seed}})
    if steps is not None:
        flags = deep_merge(flags, {"train": {"total_timesteps": steps}})
    if stop_at_steps is not None:
        flags = deep_merge(flags, {"train": {"stop_at_steps": stop_at_steps}})
    if logger is not None:
        flags = deep_merge(flags, {"logger": {"backend": logger}})
    if flags:
        base = deep_merge(base, flags)
        resolve(base, "command-line option")
    sets = list(sets)
    if sets:
        base = deep_merge(base, overrides_from(sets))
        resolve(base, "--set")
    config = resolve(base, "config")
    check_env(config["env"]["name"])
    return config


def check_env(name: str) -> None:
    """A one-line error (with suggestions) for an env name the trainer could not build.

    Gymnasium ids in a namespace ("ALE/Pong-v5") are left to the trainer: their package
    registers them only when imported. An id gymnasium's registration file names is accepted
    without importing gymnasium (a second of a `train` start).
    """
    prefix = name.split(":", 1)[0] + ":"
    if prefix in ("gym:", "minigrid:"):
        env_id = name.removeprefix(prefix)
        if "/" in env_id or (prefix == "gym:" and registered_by_gymnasium(env_id)):
            return
        import gymnasium

        if prefix == "minigrid:":
            try:
                import minigrid  # noqa: F401 - registers the MiniGrid ids
            except ImportError:
                raise PuffctlError(f"env.name={name!r}: the minigrid package is not installed (pip install minigrid)") from None
        known = [key for key in gymnasium.registry if prefix == "gym:" or key.startswith("MiniGrid")]
        if env_id in known:
            return
        close = difflib.get_close_matches(env_id, known, n=3, cutoff=0.6)
        hint = f" (did you mean {', '.join(prefix + match for match in close)}?)" if close else ""
        raise PuffctlError(f"env.name={name!r}: {'gymnasium' if prefix == 'gym:' else 'minigrid'} has no env {env_id!r}{hint}")
    from trainer import envs

    if name not in envs.BUILTINS:
        choices = [*envs.BUILTINS, "gym:CartPole-v1"]
        close = difflib.get_close_matches(name, choices, n=2, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else f"use gym:<gymnasium id> or one of {', '.join(envs.BUILTINS)}"
        raise PuffctlError(f"env.name={name!r}: unknown env ({hint})")


def registered_by_gymnasium(env_id: str) -> bool:
    """True if gymnasium's registration file (gymnasium/envs/__init__.py, read as text) registers `env_id`."""
    import importlib.util

    spec = importlib.util.find_spec("gymnasium")
    if spec is None or not spec.submodule_search_locations:
        return False
    try:
        text = (Path(next(iter(spec.submodule_search_locations))) / "envs" / "__init__.py").read_text(encoding="utf-8")
    except OSError:
        return False
    return f'id="{env_id}"' in text


def algorithm(config: Mapping) -> str:
    """A short name of what a resolved config trains, e.g. "ppo+puff", "ppo+vtrace+e3b"."""
    train = config.get("train") or {}
    parts = ["ppo", str(train.get("advantage") or "puff")]
    if (train.get("replay_factor") or 0) > 0:
        parts.append("replay")
    for extra in ("e3b", "diayn"):
        section = config.get(extra)
        enabled = section.get("enabled", True) if isinstance(section, Mapping) else False
        coef = train.get(f"{extra}_coef")
        if (isinstance(section, Mapping) and enabled and (section.get("coef", 1) or 0) > 0) or (
            isinstance(coef, (int, float)) and coef > 0
        ):
            parts.append(extra)
    return "+".join(parts)


def to_yaml(data: Mapping) -> str:
    """A mapping as block-style YAML, keys in their given order."""
    return yaml.safe_dump(dict(data), sort_keys=False, default_flow_style=False)
