"""A batch's results: learning curves on a common step grid, seed-aggregated statistics with
bootstrap confidence intervals, probability of improvement, steps to target; as a rich
table, Markdown, CSV and a PNG of the curves with CI bands.

Statistics (docs/ablate.md):
- every finished run's metric curve (its progress events) is interpolated onto one grid of
  env steps, from 0 to the fewest steps any completed run reached, so variants are compared
  at equal env steps;
- a run's final metric is the mean of its interpolated curve over the last K% of the grid;
- per group: mean and IQM (scipy.stats.trim_mean, 25% cut each side) over seeds, each with a
  95% percentile bootstrap CI (scipy.stats.bootstrap);
- probability of improvement over the baseline: P(X > Y) + P(X = Y)/2 for a random seed of
  each, the Mann-Whitney U statistic over n*m (scipy.stats.mannwhitneyu), with a bootstrap CI;
- steps to target: the first progress event whose metric reached the target; median over the
  seeds that reached it, how many did, and P(reaching it sooner than the baseline), never
  reaching it counting as slowest.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from puffctl.batch.spec import Cell, baseline_group
from puffctl.batch.state import FINISHED, Batch
from puffctl.curves import curve as run_curve
from puffctl.errors import PuffctlError
from puffctl.events import RunState, read_events

#: Default K: a run's final metric is its mean over the last K% of the common step grid.
LAST_PERCENT = 10.0
GRID_POINTS = 101
CONFIDENCE = 0.95


@dataclass
class RunCurve:
    """One finished cell's metric curve (raw points), speed and time."""

    cell: Cell
    steps: np.ndarray
    values: np.ndarray
    sps: float | None
    wall: float | None
    status: str


@dataclass
class Interval:
    """A point estimate with its confidence interval (NaN bounds when it cannot have one)."""

    value: float
    low: float = float("nan")
    high: float = float("nan")


@dataclass
class GroupResult:
    """One group's (variant at a grid point) statistics over its seeds."""

    group: str
    runs: int
    failed: int
    final: list[float]
    mean: Interval
    iqm: Interval
    p_improvement: Interval | None
    target_steps: Interval | None
    target_reached: int
    p_faster: Interval | None
    sps: float | None
    wall: float | None


@dataclass
class Report:
    """Everything `ablate report` shows."""

    name: str
    metric: str
    higher_is_better: bool
    baseline: str
    target: float | None
    last_percent: float
    grid: np.ndarray
    groups: list[GroupResult]
    curves: dict[str, np.ndarray] = field(default_factory=dict)
    missing: list[tuple[Cell, str]] = field(default_factory=list)


def metric_keys(events: list[dict]) -> list[str]:
    """The dotted numeric keys the progress events carry (for a "no such metric" error)."""
    found: set[str] = set()

    def walk(prefix: str, value: object) -> None:
        if isinstance(value, Mapping):
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), item)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            found.add(prefix)

    for event in events:
        if event["type"] == "progress":
            walk("", {key: item for key, item in event.items() if key not in ("type", "time", "run_id")})
    return sorted(found)


def load_curves(batch: Batch, metric: str) -> tuple[list[RunCurve], list[tuple[Cell, str]]]:
    """The finished cells' curves, and the cells still missing with their status."""
    found, missing = [], []
    for cell in batch.cells:
        status = batch.state[cell.cell_id].status
        if status not in FINISHED:
            missing.append((cell, status))
            continue
        events = read_events(batch.run_dir(cell.cell_id) / "events.jsonl")
        read = run_curve(events, metric)  # a resumed start supersedes the progress past its epoch
        steps, values = np.asarray(read.steps, dtype=float), np.asarray(read.values, dtype=float)
        if not len(steps) and status == "completed":
            keys = metric_keys(events)
            raise PuffctlError(f"metric {metric!r} is not in cell {cell.cell_id} ({cell.group} seed {cell.seed})'s events; "
                               f"keys there: {', '.join(keys) or 'none'}")
        state = RunState()  # only its segment timing: start and end events, and the last event's time
        for event in events:
            if event["type"] in ("start", "end"):
                state.apply(event)
        if events:
            state.apply({"type": "", "time": events[-1].get("time")})
        found.append(RunCurve(cell, steps, values, float(np.mean(read.sps)) if read.sps else None, state.duration, status))
    return found, missing


def bootstrap(samples: tuple[np.ndarray, ...], statistic, *, resamples: int, seed: int, axis: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """The 95% percentile-bootstrap CI of a vectorized `statistic(*samples, axis=)`."""
    from scipy import stats

    if any(sample.shape[axis] < 2 for sample in samples):
        shape = np.asarray(statistic(*samples, axis=axis)).shape
        return np.full(shape, np.nan), np.full(shape, np.nan)
    result = stats.bootstrap(samples, statistic, n_resamples=resamples, confidence_level=CONFIDENCE, method="percentile",
                             vectorized=True, axis=axis, random_state=np.random.default_rng(seed))
    return result.confidence_interval.low, result.confidence_interval.high


def iqm(values: np.ndarray, axis: int = -1) -> np.ndarray:
    """The interquartile mean: the mean of the middle 50% (scipy.stats.trim_mean, 25% cut)."""
    from scipy import stats

    return stats.trim_mean(values, 0.25, axis=axis)


def prob_greater(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """P(X > Y) + P(X = Y)/2 for independent draws: Mann-Whitney U of x over n*m."""
    from scipy import stats

    return stats.mannwhitneyu(x, y, axis=axis, method="asymptotic").statistic / (x.shape[axis] * y.shape[axis])


def estimate(samples: tuple[np.ndarray, ...], statistic, *, resamples: int, seed: int) -> Interval:
    """A statistic of 1-D samples with its bootstrap CI."""
    low, high = bootstrap(samples, statistic, resamples=resamples, seed=seed)
    return Interval(float(statistic(*samples, axis=-1)), float(low), float(high))


def steps_to_target(run: RunCurve, target: float, higher_is_better: bool) -> float:
    """The first step whose metric reached `target` (inf if never)."""
    reached = run.values >= target if higher_is_better else run.values <= target
    return float(run.steps[np.argmax(reached)]) if reached.any() else float("inf")


def build(batch: Batch, *, last_percent: float = LAST_PERCENT, resamples: int = 2000, seed: int = 0) -> Report:
    """The report of a batch's finished cells (unfinished ones listed as missing)."""
    spec = batch.spec
    if not 0 < last_percent <= 100:
        raise PuffctlError(f"--last {last_percent}: expected a percentage in (0, 100]")
    runs_found, missing = load_curves(batch, spec.metric)
    missing += [(run.cell, f"{run.status} before any {spec.metric}") for run in runs_found if not len(run.steps)]
    runs_found = [run for run in runs_found if len(run.steps)]
    ends = [run.steps[-1] for run in runs_found if run.status == "completed"] or [run.steps[-1] for run in runs_found]
    grid = np.linspace(0.0, min(ends), GRID_POINTS) if ends else np.zeros(0)
    tail = grid >= grid[-1] * (1 - last_percent / 100) if len(grid) else grid.astype(bool)
    by_group: dict[str, list[RunCurve]] = {}
    for cell in batch.cells:
        by_group.setdefault(cell.group, [])
    for run in runs_found:
        by_group[run.cell.group].append(run)
    curves = {group: np.array([np.interp(grid, run.steps, run.values) for run in members]).reshape(len(members), len(grid))
              for group, members in by_group.items()}
    finals = {group: values[:, tail].mean(axis=1) if len(values) else np.zeros(0) for group, values in curves.items()}
    times = {group: np.array([steps_to_target(run, spec.target, spec.higher_is_better) for run in members])
             for group, members in by_group.items()} if spec.target is not None else {}
    sign = 1.0 if spec.higher_is_better else -1.0
    results = []
    for index, (group, members) in enumerate(by_group.items()):
        final = finals[group]
        base = baseline_group(spec, next(cell for cell in batch.cells if cell.group == group))
        compare = base != group and len(final) and len(finals.get(base, []))
        step = seed + 7 * index
        result = GroupResult(
            group=group, runs=len(members), failed=sum(run.status == "failed" for run in members),
            final=[float(value) for value in final],
            mean=estimate((final,), np.mean, resamples=resamples, seed=step) if len(final) else Interval(float("nan")),
            iqm=estimate((final,), iqm, resamples=resamples, seed=step + 1) if len(final) else Interval(float("nan")),
            p_improvement=estimate((sign * final, sign * finals[base]), prob_greater, resamples=resamples, seed=step + 2) if compare else None,
            target_steps=None, target_reached=0, p_faster=None,
            sps=float(np.mean([run.sps for run in members if run.sps is not None])) if any(run.sps for run in members) else None,
            wall=float(np.mean([run.wall for run in members if run.wall is not None])) if any(run.wall for run in members) else None,
        )
        if spec.target is not None and len(members):
            reached = times[group][np.isfinite(times[group])]
            result.target_reached = len(reached)
            if len(reached):
                result.target_steps = estimate((reached,), np.median, resamples=resamples, seed=step + 3)
            if compare:
                # capped just above every observed step: "never" ranks as slowest without inf arithmetic
                cap = max(float(grid[-1]), *(run.steps[-1] for run in runs_found)) + 1.0
                mine, theirs = np.minimum(times[group], cap), np.minimum(times[base], cap)
                result.p_faster = estimate((-mine, -theirs), prob_greater, resamples=resamples, seed=step + 4)
        results.append(result)
    return Report(batch.name, spec.metric, spec.higher_is_better, spec.baseline or "", spec.target, last_percent, grid,
                  results, curves, missing)


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None or value != value:
        return "-"
    return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:,.0f}"


def interval_text(interval: Interval | None, digits: int = 3) -> str:
    """"12.3 [10.1, 14.0]" (the CI omitted when there is none)."""
    if interval is None:
        return "-"
    if interval.low != interval.low:
        return _fmt(interval.value, digits)
    return f"{_fmt(interval.value, digits)} [{_fmt(interval.low, digits)}, {_fmt(interval.high, digits)}]"


def columns(report: Report) -> list[str]:
    """The table's column names."""
    names = ["group", "seeds", f"final {report.metric} mean [95% CI]", "IQM [95% CI]", f"P(better than {report.baseline})"]
    if report.target is not None:
        names += [f"steps to {_fmt(report.target)} (median [CI])", "reached", "P(sooner)"]
    return [*names, "SPS", "wall s"]


def rows(report: Report) -> list[list[str]]:
    """The table's rows as text, one per group."""
    table = []
    for result in report.groups:
        row = [result.group, f"{result.runs}" + (f" ({result.failed} diverged)" if result.failed else ""),
               interval_text(result.mean), interval_text(result.iqm), interval_text(result.p_improvement, 2)]
        if report.target is not None:
            row += [interval_text(result.target_steps), f"{result.target_reached}/{result.runs}", interval_text(result.p_faster, 2)]
        table.append([*row, _fmt(result.sps), _fmt(result.wall)])
    return table


def notes(report: Report) -> list[str]:
    """Lines under the table: what was compared, and which cells are missing."""
    lines = [f"final = mean over the last {report.last_percent:g}% of a common grid of {_fmt(report.grid[-1] if len(report.grid) else 0)} "
             f"env steps; CIs: {CONFIDENCE:.0%} percentile bootstrap over seeds"]
    if report.missing:
        listed = ", ".join(f"{cell.group} seed {cell.seed} ({status})" for cell, status in report.missing[:10])
        more = f" and {len(report.missing) - 10} more" if len(report.missing) > 10 else ""
        lines.append(f"missing {len(report.missing)} cell(s): {listed}{more}")
    return lines


def to_markdown(report: Report) -> str:
    """The report as a Markdown table with its notes."""
    header = columns(report)
    lines = [f"# Ablation {report.name}: {report.metric} ({'higher' if report.higher_is_better else 'lower'} is better)", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows(report)]
    return "\n".join([*lines, "", *(f"- {line}" for line in notes(report))]) + "\n"


def to_csv(report: Report) -> str:
    """One row per group with numeric columns (bounds apart)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["group", "seeds", "failed", "mean", "mean_low", "mean_high", "iqm", "iqm_low", "iqm_high", "p_improvement",
                     "p_low", "p_high", "target_steps", "target_low", "target_high", "target_reached", "p_sooner",
                     "p_sooner_low", "p_sooner_high", "sps", "wall_s"])
    for result in report.groups:
        def parts(interval: Interval | None) -> list:
            return ["", "", ""] if interval is None else [interval.value, interval.low, interval.high]

        writer.writerow([result.group, result.runs, result.failed, *parts(result.mean), *parts(result.iqm),
                         *parts(result.p_improvement), *parts(result.target_steps), result.target_reached,
                         *parts(result.p_faster), result.sps if result.sps is not None else "",
                         result.wall if result.wall is not None else ""])
    return out.getvalue()


def plot(report: Report, path: Path, *, resamples: int = 1000, seed: int = 0) -> None:
    """Learning curves: each group's mean over seeds with its 95% bootstrap band (PNG, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(8, 5), dpi=120)
    for index, (group, values) in enumerate(report.curves.items()):
        if not len(values):
            continue
        mean = values.mean(axis=0)
        (line,) = axes.plot(report.grid, mean, label=f"{group} (n={len(values)})")
        low, high = bootstrap((values,), np.mean, resamples=resamples, seed=seed + index, axis=0)
        if not np.isnan(low).all():
            axes.fill_between(report.grid, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    if report.target is not None:
        axes.axhline(report.target, color="grey", linestyle="--", linewidth=1, label=f"target {_fmt(report.target)}")
    axes.set_xlabel("env steps")
    axes.set_ylabel(report.metric)
    axes.set_title(f"{report.name}: mean over seeds, {CONFIDENCE:.0%} bootstrap CI")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    try:
        figure.savefig(path)
    except OSError as error:
        raise PuffctlError(f"cannot write {path}: {error.strerror or error}") from None
    finally:
        pyplot.close(figure)
