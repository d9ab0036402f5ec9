"""`ablate report`'s statistics on a fixed synthetic batch, against numpy written out here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from puffctl import curves
from puffctl.batch import engine, report, state
from puffctl.errors import PuffctlError

SEEDS = 8
# Each run's curve is linear in steps: value = slope * steps / 1000 + offset (exact under interpolation).
SLOPES = {"base": [3.0, 3.5, 4.0, 2.0, 5.0, 3.2, 2.8, 4.4], "better": [4.0, 5.5, 3.9, 6.0, 4.8, 4.1, 7.0, 5.2]}
OFFSETS = [0.0, 1.0, -2.0, 0.5, 3.0, -1.0, 2.0, 0.0]
TARGET = 30.0


def write_run(run_dir: Path, slope: float, offset: float, last_step: int, *, resumed_at: int | None = None) -> None:
    events = [{"type": "start", "time": 100.0, "run_id": run_dir.name, "agent_steps": 0}]
    for steps in range(1000, last_step + 1, 1000):
        if resumed_at is not None and steps == resumed_at + 2000:
            events.append({"type": "start", "time": 100.0 + steps / 1000, "resumed": True, "agent_steps": resumed_at})
        value = slope * steps / 1000 + offset
        events.append({"type": "progress", "time": 100.0 + steps / 1000, "agent_steps": steps, "sps": 1000.0,
                       "env": {"episode_return": value}, "losses": {"policy_loss": 0.1}})
    events.append({"type": "end", "time": 100.0 + last_step / 1000, "status": "completed", "agent_steps": last_step})
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "events.jsonl").write_text("".join(json.dumps(event) + "\n" for event in events))


def synthetic(tmp_path: Path, spec_extra: dict | None = None) -> state.Batch:
    spec = {"name": "synthetic", "seeds": SEEDS, "steps": 12000, "target": TARGET, "baseline": "base",
            "variants": [{"label": "base", "profile": "baseline"},
                         {"label": "better", "profile": "baseline", "set": {"train.advantage": "gae"}}],
            **(spec_extra or {})}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    batch = engine.create(tmp_path / "ablations", engine.plan(path))
    for cell in batch.cells:
        index = cell.seed - 1
        last = 10000 if index % 2 else 12000  # the common grid ends at 10000, the fewest steps any run reached
        write_run(batch.run_dir(cell.cell_id), SLOPES[cell.variant][index], OFFSETS[index], last,
                  resumed_at=4000 if index == 3 else None)
        batch.state[cell.cell_id].status = "completed"
    batch.save()
    return batch


def finals_numpy(variant: str) -> np.ndarray:
    grid = np.linspace(0, 10000, 101)
    tail = grid >= 9000  # the last 10%
    return np.array([(slope * grid[tail] / 1000 + offset).mean() for slope, offset in zip(SLOPES[variant], OFFSETS)])


def bootstrap_numpy(statistic, *samples: np.ndarray, resamples: int = 20000) -> tuple[float, float]:
    """Percentile bootstrap written out: resample each sample with replacement, 2.5/97.5 percentiles."""
    rng = np.random.default_rng(1)
    drawn = [sample[rng.integers(0, len(sample), (resamples, len(sample)))] for sample in samples]
    values = statistic(*drawn)
    return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


def mean_numpy(values: np.ndarray) -> np.ndarray:
    return values.mean(axis=-1)


def iqm_numpy(values: np.ndarray) -> np.ndarray:
    """Mean of the middle half of the sorted values (n divisible by 4 here)."""
    ordered = np.sort(values, axis=-1)
    quarter = ordered.shape[-1] // 4
    return ordered[..., quarter:ordered.shape[-1] - quarter].mean(axis=-1)


def p_greater_numpy(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """P(X > Y) + P(X = Y)/2 over every pair."""
    wins = (x[..., :, None] > y[..., None, :]) + 0.5 * (x[..., :, None] == y[..., None, :])
    return wins.mean(axis=(-2, -1))


def steps_numpy(slope: float, offset: float, last: int) -> float:
    for steps in range(1000, last + 1, 1000):
        if slope * steps / 1000 + offset >= TARGET:
            return float(steps)
    return float("inf")


def close(interval: report.Interval, value: float, low: float, high: float, spread: float) -> None:
    assert interval.value == pytest.approx(value, rel=1e-9, abs=1e-9)
    assert interval.low == pytest.approx(low, abs=0.06 * spread) and interval.high == pytest.approx(high, abs=0.06 * spread)


def test_ablate_report_statistics_match_an_independent_computation(tmp_path):
    batch = synthetic(tmp_path)
    result = report.build(batch, resamples=4000)
    assert result.grid[-1] == 10000
    groups = {group.group: group for group in result.groups}
    base, better = finals_numpy("base"), finals_numpy("better")
    for name, finals in (("base", base), ("better", better)):
        group = groups[name]
        assert group.final == pytest.approx(list(finals))
        spread = float(finals.max() - finals.min())
        close(group.mean, finals.mean(), *bootstrap_numpy(mean_numpy, finals), spread)
        close(group.iqm, float(iqm_numpy(finals)), *bootstrap_numpy(iqm_numpy, finals), spread)
        times = np.array([steps_numpy(slope, offset, 10000 if index % 2 else 12000)
                          for index, (slope, offset) in enumerate(zip(SLOPES[name], OFFSETS))])
        reached = times[np.isfinite(times)]
        assert group.target_reached == len(reached)
        assert group.target_steps.value == np.median(reached)
        assert group.sps == 1000.0
    assert groups["base"].p_improvement is None
    p = groups["better"].p_improvement
    close(p, float(p_greater_numpy(better, base)), *bootstrap_numpy(p_greater_numpy, better, base), 1.0)
    assert 0.8 < p.value <= 1.0
    faster = groups["better"].p_faster
    assert faster is not None and faster.value > 0.5
    table = report.to_markdown(result)
    assert "| better | 8 |" in table and "P(better than base)" in table
    rows = report.to_csv(result).splitlines()
    assert rows[0].startswith("group,seeds,failed,mean") and len(rows) == 3
    png = tmp_path / "curves.png"
    report.plot(result, png, resamples=200)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ablate_report_lower_is_better_flips_the_comparison(tmp_path):
    batch = synthetic(tmp_path, {"higher_is_better": False, "target": None})
    groups = {group.group: group for group in report.build(batch, resamples=500).groups}
    base, better = finals_numpy("base"), finals_numpy("better")
    assert groups["better"].p_improvement.value == pytest.approx(float(p_greater_numpy(-better, -base)))
    assert groups["better"].target_steps is None


def test_ablate_report_curve_drops_points_a_resume_replaced():
    events = [{"type": "start"}] + [{"type": "progress", "agent_steps": s, "env": {"r": float(s)}} for s in (1, 2, 3)]
    events += [{"type": "start", "resumed": True, "agent_steps": 1}, {"type": "progress", "agent_steps": 2, "env": {"r": 20.0}}]
    read = curves.curve(events, "env.r")
    assert read.steps == [1, 2] and read.values == [1.0, 20.0]


def progress(epoch: int, value: float | None) -> dict:
    return {"type": "progress", "epoch": epoch, "agent_steps": 1000 * epoch, "sps": 100.0 * epoch,
            "env": {} if value is None else {"episode_return": value}}


def start(epoch: int) -> dict:
    return {"type": "start", "resumed": epoch > 0, "epoch": epoch, "agent_steps": 1000 * epoch}


def test_curves_every_reader_applies_the_resume_rule_of_the_event_stream(tmp_path):
    """docs/reliability.md: a resumed start at epoch E supersedes the earlier progress past E.
    Killed at epoch 4, resumed from epoch 2 (its first progress has no return yet), killed after
    epoch 6 and resumed from epoch 5, which wrote nothing more."""
    events = [start(0), *(progress(epoch, float(epoch)) for epoch in (1, 2, 3, 4)),
              start(2), progress(3, None), progress(4, 40.0), progress(5, 50.0), progress(6, 60.0), start(5)]
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(event) + "\n" for event in events))
    assert [event["epoch"] for event in curves.effective_progress(events)] == [1, 2, 3, 4, 5]
    expected = ([1000.0, 2000.0, 4000.0, 5000.0], [1.0, 2.0, 40.0, 50.0])
    from_file = curves.read_curve(tmp_path, "env.episode_return")  # runs compare, train --against
    from_events = curves.curve(events, "env.episode_return")  # ablate report (load_curves)
    assert (from_file.steps, from_file.values) == (from_events.steps, from_events.values) == expected
    assert from_file.sps == [100.0, 200.0, 300.0, 400.0, 500.0]
    assert curves.default_metric(tmp_path) == "episode_return"
    assert engine.final_metric(events, "env.episode_return") == 50.0  # a cell's metric: ablate status, sweeps


def test_ablate_report_lists_missing_cells_and_names_existing_keys(tmp_path):
    batch = synthetic(tmp_path)
    pending = batch.cells[0]
    batch.state[pending.cell_id].status = "pending"
    result = report.build(batch, resamples=200)
    assert [cell.cell_id for cell, _ in result.missing] == [pending.cell_id]
    assert any(line.startswith("missing 1 cell(s): base seed 1 (pending)") for line in report.notes(result))
    assert {group.group: group.runs for group in result.groups} == {"base": SEEDS - 1, "better": SEEDS}
    batch.spec.metric = "env.score"
    with pytest.raises(PuffctlError, match=r"metric 'env.score' is not in cell .*keys there: .*env.episode_return, losses.policy_loss, sps"):
        report.build(batch)

