"""A run's metric as a curve over agent steps, pinned reference runs, and runs named any way.

A RUN on the command line is a run id in the store, a pinned name (`puffctl runs pin`), or the
path of a run directory (an ablation's or a fetched remote run's), so compare, eval, checkout
and `train --against` read them alike.
"""

from __future__ import annotations

import bisect
import json
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from puffctl import runs
from puffctl.errors import PuffctlError
from puffctl.events import RETURN_KEYS

PINS_FILE = ".pins.json"


@dataclass
class Curve:
    """One run's metric: `steps` ascending with its `values`, and the run's SPS readings."""

    run_id: str
    metric: str
    steps: list[float]
    values: list[float]
    sps: list[float]

    def at(self, step: float) -> float | None:
        """The metric at `step` (linear between readings); None outside the curve."""
        steps, values = self.steps, self.values
        if not steps or step < steps[0] or step > steps[-1]:
            return None
        right = bisect.bisect_left(steps, step)
        if steps[right] == step:
            return values[right]
        left = right - 1
        share = (step - steps[left]) / (steps[right] - steps[left])
        return values[left] + share * (values[right] - values[left])


def pick(reading: Mapping, metric: str) -> float | None:
    """`metric` from a progress event: a dotted key ("env.episode_return", "losses.policy_loss",
    "sps"), or a bare key of `env`, else of `losses`; None unless it is a finite number."""
    if "." in metric or metric in reading:
        value: object = reading
        for part in metric.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
    else:
        value = (reading.get("env") or {}).get(metric, (reading.get("losses") or {}).get(metric))
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def default_metric(path: Path) -> str:
    """The run's return metric: the first of RETURN_KEYS its progress events carry."""
    for event in effective_progress(_events(path)):
        env = event.get("env") or {}
        for key in RETURN_KEYS:
            if key in env:
                return key
    return RETURN_KEYS[0]


def _events(path: Path) -> Iterator[dict]:
    """The run's start and progress events (the lines a curve needs; others are not parsed)."""
    try:
        handle = (path / "events.jsonl").open(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return
    with handle:
        for line in handle:
            if '"progress"' not in line and '"start"' not in line:
                continue
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and event.get("type") in ("start", "progress"):
                yield event


def effective_progress(events: Iterable[dict]) -> list[dict]:
    """A run's progress events as its stream means them (docs/reliability.md): a start at epoch E
    supersedes the earlier progress of epochs after E, which died with their process and were
    run again. (Streams without epochs compare agent_steps.)"""
    kept: list[dict] = []
    for event in events:
        if event.get("type") == "start":
            kept = [progress for progress in kept if not _superseded(progress, event)]
        elif event.get("type") == "progress":
            kept.append(event)
    return kept


def _superseded(progress: dict, start: dict) -> bool:
    if isinstance(progress.get("epoch"), int) and isinstance(start.get("epoch"), int):
        return progress["epoch"] > start["epoch"]
    return _number(progress.get("agent_steps"), 0.0) > _number(start.get("agent_steps"), 0.0)


def _number(value: object, default: float) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default


def curve(events: Iterable[dict], metric: str, run_id: str = "") -> Curve:
    """The `metric` curve of a run's events: its effective progress (above) that carries the
    metric, strictly ascending in agent steps (every reader of curves goes through here)."""
    steps: list[float] = []
    values: list[float] = []
    sps: list[float] = []
    for event in effective_progress(events):
        step = event.get("agent_steps")
        if isinstance(step, bool) or not isinstance(step, (int, float)):
            continue
        if pick(event, "sps") is not None:
            sps.append(float(event["sps"]))
        value = pick(event, metric)
        if value is not None and (not steps or step > steps[-1]):
            steps.append(float(step))
            values.append(value)
    return Curve(run_id, metric, steps, values, sps)


def read_curve(path: Path, metric: str) -> Curve:
    """The `metric` curve of the run in directory `path` from its events."""
    return curve(_events(path), metric, path.name)


def pins(root: Path) -> dict[str, str]:
    """Pinned name -> run directory, from the runs root's .pins.json."""
    data = runs.read_json(root / PINS_FILE)
    return {str(name): str(target) for name, target in data.items()} if isinstance(data, dict) else {}


def pin(root: Path, run: str, name: str) -> Path:
    """Pin `run` (id, name or path) as `name`; returns the run directory pinned."""
    runs.check_run_id(name)
    path = resolve(root, run)
    table = pins(root)
    table[name] = str(path.resolve())
    runs.ensure_writable(root)
    runs.write_json(root / PINS_FILE, table)
    return path


def resolve(root: Path, run: str) -> Path:
    """The directory of RUN: a run id in `root`, a pinned name, or a run directory's path."""
    if (root / run).is_dir() and runs.RUN_ID.match(run):
        return root / run
    pinned = pins(root).get(run)
    if pinned is not None:
        if not Path(pinned).is_dir():
            raise PuffctlError(f"pin {run!r} points at {pinned}, which is gone (pin another run with `puffctl runs pin RUN --as {run}`)")
        return Path(pinned)
    candidate = Path(run).expanduser()
    if (candidate / "events.jsonl").is_file() or (candidate / "config.yaml").is_file():
        return candidate
    if "/" in run or candidate.exists():
        raise PuffctlError(f"{run} is not a run directory (no events.jsonl or config.yaml in it)")
    return runs.run_dir(root, run)
