"""`puffctl runs compare`: runs' curves side by side, the metric at matched steps, and what differs.

The first run is the reference: differences are each run's value minus the first's.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

import yaml

from puffctl import runs
from puffctl.curves import Curve, default_metric, read_curve, resolve
from puffctl.errors import PuffctlError

#: Matched points, as fractions of the shortest run's last reading.
FRACTIONS = (0.25, 0.5, 0.75, 1.0)


@dataclass
class Comparison:
    """What the compare table shows: curves, the matched steps, and the keys whose values differ."""

    metric: str
    curves: list[Curve]
    matched_steps: list[float]
    config_diff: list[tuple[str, list]]
    provenance_diff: list[tuple[str, list]]

    def values_at_matched(self) -> list[list[float | None]]:
        """Per run, the metric at each matched step."""
        return [[curve.at(step) for step in self.matched_steps] for curve in self.curves]

    def sps(self) -> list[float | None]:
        """Per run, the median of its SPS readings."""
        return [statistics.median(curve.sps) if curve.sps else None for curve in self.curves]


def flatten(tree: dict, prefix: str = "") -> dict:
    """{"train": {"seed": 1}} -> {"train.seed": 1}."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def differing(rows: list[dict]) -> list[tuple[str, list]]:
    """The keys whose values are not the same in every dict, with the values in order."""
    keys = sorted({key for row in rows for key in row})
    return [(key, [row.get(key) for row in rows]) for key in keys if len({repr(row.get(key)) for row in rows}) > 1]


def provenance_of(path: Path, state) -> dict:
    """The code and the machine a run ran on: commit, dirty patch hash, image, host, device."""
    source = state.git or runs.read_json(path / "source.json") or {}
    launch = runs.read_json(path / runs.LAUNCH_FILE)
    return {"commit": source.get("commit"), "patch sha256": source.get("diff_hash"),
            "image": launch.get("image"), "host": state.host or launch.get("host"), "device": state.device or None}


def config_of(path: Path, state) -> dict:
    """The resolved config the run trained with (config.yaml, else its start event's)."""
    try:
        return yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return state.config or {}


def compare(root: Path, names: list[str], metric: str | None = None) -> Comparison:
    """Compare runs named by id, pin or path: curves, values at matched steps, config and provenance diffs."""
    if not names:
        raise PuffctlError("name at least one RUN to compare")
    paths = [resolve(root, name) for name in names]
    metric = metric or default_metric(paths[0])
    curves, configs, sources = [], [], []
    for path in paths:
        state = runs.load_state(path)
        curve = read_curve(path, metric)
        if not curve.steps:
            raise PuffctlError(f"run {path.name} has no {metric!r} readings yet (try --metric, e.g. losses.value_loss or sps)")
        curves.append(curve)
        configs.append(flatten(config_of(path, state)))
        sources.append(provenance_of(path, state))
    shortest = min(curve.steps[-1] for curve in curves)
    return Comparison(metric, curves, [fraction * shortest for fraction in FRACTIONS],
                      differing(configs), differing(sources))


def text_plot(curves: list[Curve], width: int = 64, height: int = 14) -> tuple[list[list[int | None]], float, float, float]:
    """The curves on a character grid: cell -> index of the curve drawn there (later curves on top);
    with the y range (low, high) and the last step on the x axis."""
    end = max(curve.steps[-1] for curve in curves)
    values = [value for curve in curves for value in curve.values]
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    grid: list[list[int | None]] = [[None] * width for _ in range(height)]
    for index, curve in enumerate(curves):
        for column in range(width):
            value = curve.at(end * column / (width - 1))
            if value is not None:
                row = height - 1 - round((value - low) / span * (height - 1))
                grid[row][column] = index
    return grid, low, high, end


def png_plot(comparison: Comparison, path: Path) -> Path:
    """Write the overlaid curves as a PNG (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 4.5), dpi=120)
    for curve in comparison.curves:
        axes.plot(curve.steps, curve.values, label=curve.run_id, linewidth=1.4)
    for step in comparison.matched_steps:
        axes.axvline(step, color="0.85", linewidth=0.8, zorder=0)
    axes.set_xlabel("agent steps")
    axes.set_ylabel(comparison.metric)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path
