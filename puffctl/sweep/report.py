"""What a sweep found: the best trials, the Pareto front of cost against score, per-parameter
effect plots (matplotlib, Agg), and the winning trial exported as a ready profile file."""

from __future__ import annotations

import os
from pathlib import Path

from puffctl import profiles
from puffctl.errors import PuffctlError
from puffctl.sweep.runner import Sweep
from puffctl.sweep.tuner import TrialRecord

AXIS_SCALE = {"log": "log", "pow2": "log", "logit": "logit"}


def ranked(sweep: Sweep) -> list[TrialRecord]:
    """Completed trials, best first."""
    done = [record for record in sweep.tuner.trials() if record.state == "completed"]
    return sorted(done, key=lambda record: record.score, reverse=sweep.spec.direction == "maximize")


def trial(sweep: Sweep, number: int | None) -> TrialRecord:
    """Trial `number` (1-based, as shown), or the best completed one."""
    records = sweep.tuner.trials()
    if number is None:
        best = sweep.tuner.best()
        if best is None:
            raise PuffctlError(f"sweep {sweep.spec.name!r} has no completed trial yet")
        return best
    if not 1 <= number <= len(records):
        raise PuffctlError(f"sweep {sweep.spec.name!r} has trials 1 to {len(records)}, not {number}")
    record = records[number - 1]
    if record.state != "completed":
        raise PuffctlError(f"trial {number} is {record.state}, not completed")
    return record


def _figure(columns: int = 1, rows: int = 1, size: tuple[float, float] = (6.0, 4.0)):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    return pyplot, *pyplot.subplots(rows, columns, figsize=(size[0] * columns, size[1] * rows), squeeze=False)


def plot_pareto(sweep: Sweep, path: Path) -> None:
    """Cost (x) against score (y) for every completed trial, the Pareto front as a step line."""
    done = ranked(sweep)
    front = sweep.tuner.pareto()
    pyplot, figure, axes = _figure()
    ax = axes[0][0]
    ax.scatter([r.cost for r in done], [r.score for r in done], s=18, color="tab:blue", alpha=0.6, label="trial")
    if front:
        ax.step([r.cost for r in front], [r.score for r in front], where="post", color="tab:red", label="Pareto front")
        ax.scatter([r.cost for r in front], [r.score for r in front], s=30, color="tab:red")
    if done:
        best = done[0]
        ax.annotate(f"best: trial {best.number + 1}", (best.cost, best.score), textcoords="offset points", xytext=(6, -12))
    if done and min(r.cost for r in done) > 0:
        ax.set_xscale("log")
    ax.set_xlabel("cost (env steps)" if sweep.spec.cost == "steps" else "cost (seconds)")
    ax.set_ylabel(sweep.spec.metric)
    ax.set_title(f"{sweep.spec.name}: cost vs {sweep.spec.metric}")
    ax.legend(loc="best")
    figure.tight_layout()
    _save(pyplot, figure, path)


def plot_effects(sweep: Sweep, path: Path) -> None:
    """One panel per searched key: its value against the score, on the key's own axis."""
    done = ranked(sweep)
    keys = list(sweep.spec.search)
    columns = min(3, len(keys))
    rows = -(-len(keys) // columns)
    pyplot, figure, axes = _figure(columns, rows, size=(4.5, 3.5))
    for index, key in enumerate(keys):
        ax = axes[index // columns][index % columns]
        space = sweep.spec.search[key]
        ax.scatter([r.params[key] for r in done], [r.score for r in done], s=16, alpha=0.7)
        if done:
            ax.scatter([done[0].params[key]], [done[0].score], s=60, marker="*", color="tab:red", label="best")
        scale = AXIS_SCALE.get(space.kind)
        if scale == "logit":
            ax.set_xscale("function", functions=(lambda v: _safe_log(1 - v), lambda u: 1 - 10**u))
        elif scale == "log":
            ax.set_xscale("log", base=2 if space.kind == "pow2" else 10)
        ax.set_xlim(space.min, space.max)
        ax.set_xlabel(f"{key} ({space.kind})")
        ax.set_ylabel(sweep.spec.metric)
    for index in range(len(keys), rows * columns):
        axes[index // columns][index % columns].axis("off")
    figure.suptitle(f"{sweep.spec.name}: per-parameter effect ({len(done)} completed trials)")
    figure.tight_layout()
    _save(pyplot, figure, path)


def _safe_log(values):
    import numpy as np

    return np.log10(np.clip(values, 1e-12, None))


def _save(pyplot, figure, path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=110)
    except OSError as error:
        raise PuffctlError(f"cannot write {path}: {error.strerror or error}") from None
    finally:
        pyplot.close(figure)


def export(sweep: Sweep, record: TrialRecord, path: Path) -> dict:
    """Write `record`'s overrides as a profile extending the sweep's base profile; returns its resolved
    config after loading it back like any profile (so it validates, and matches the trial's)."""
    base = profiles.load(sweep.spec.profile)
    extends = sweep.spec.profile
    if profiles.looks_like_path(extends):
        extends = os.path.relpath(base.path.resolve(), path.resolve().parent)
    score = f"{sweep.spec.metric} {record.score:.4g}"
    document = {
        "description": f"sweep {sweep.spec.name} trial {record.number + 1} ({score})",
        "extends": extends,
        **sweep.spec.overrides(record.params),
    }
    text = f"# Exported by `puffctl sweep report {sweep.spec.name} --export`: trial {record.number + 1}, {score}.\n"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + profiles.to_yaml(document), encoding="utf-8")
    except OSError as error:
        raise PuffctlError(f"cannot write {path}: {error.strerror or error}") from None
    return profiles.build_config(profiles.load(str(path)))
