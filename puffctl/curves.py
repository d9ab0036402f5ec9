"""A run's metric as a curve over agent steps, pinned reference runs, and runs named any way.

A RUN on the command line is a run id in the store, a pinned name (`puffctl runs pin`), or the
path of a run directory (an ablation's or a fetched remote run's), so compare, eval, checkout
and `train --against` read them alike.
"""

from __future__ import annotations

import bisect
import json
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


def pick(reading: dict, metric: str) -> float | None:
    """`metric` from a progress event: "env.K", "losses.K", "sps", or a bare K (env first, then losses)."""
    section, _, key = metric.rpartition(".")
    if metric == "sps":
        value = reading.get("sps")
    elif section:
        value = (reading.get(section) or {}).get(key)
    else:
        value = (reading.get("env") or {}).get(key, (reading.get("losses") or {}).get(key))
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        return None
    return float(value)


def default_metric(path: Path) -> str:
    """The run's return metric: the first of RETURN_KEYS its progress events carry."""
    for event in _progress(path):
        env = event.get("env") or {}
        for key in RETURN_KEYS:
            if key in env:
                return key
    return RETURN_KEYS[0]


def _progress(path: Path):
    try:
        handle = (path / "events.jsonl").open(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return
    with handle:
        for line in handle:
            if '"progress"' not in line:
                continue
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and event.get("type") == "progress":
                yield event


def read_curve(path: Path, metric: str) -> Curve:
    """The `metric` curve of the run in directory `path` from its progress events."""
    steps, values, sps = [], [], []
    for event in _progress(path):
        step = event.get("agent_steps")
        if not isinstance(step, (int, float)):
            continue
        if isinstance(event.get("sps"), (int, float)):
            sps.append(float(event["sps"]))
        value = pick(event, metric)
        if value is None:
            continue
        if steps and step <= steps[-1]:  # a resumed run repeats steps after its last checkpoint
            while steps and steps[-1] >= step:
                steps.pop()
                values.pop()
        steps.append(float(step))
        values.append(value)
    return Curve(path.name, metric, steps, values, sps)


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
