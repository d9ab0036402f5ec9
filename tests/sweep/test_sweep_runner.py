"""A sweep as a batch fed by the tuner: failed trials, crash windows repaired on resume, export;
and `puffctl sweep` end to end with the real trainer, the orchestrator killed and resumed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from puffctl import profiles
from puffctl.sweep import report, runner

REPO = Path(__file__).resolve().parents[2]
SPEC = """
name: {name}
profile: baseline
set:
  train.total_timesteps: 4096
  env.num_envs: 8
  logger.progress_interval: 0.2
search:
  train.learning_rate: {{space: log, min: 0.001, max: 0.1}}
  train.minibatch_size: {{space: pow2, min: 64, max: 256}}
  train.gamma: {{space: logit, min: 0.9, max: 0.999}}
trials: {trials}
slots: 2
method: {method}
"""


def make(tmp_path: Path, name: str = "s", trials: int = 4, method: str = "random") -> runner.Sweep:
    spec_file = tmp_path / f"{name}.yaml"
    spec_file.write_text(SPEC.format(name=name, trials=trials, method=method), encoding="utf-8")
    return runner.create(tmp_path / "sweeps", spec_file)


def finish(sweep: runner.Sweep, cell_id: str, status: str, metric: float | None = None, reason: str | None = None) -> None:
    current = sweep.batch.state[cell_id]
    current.status, current.metric, current.reason, current.steps = status, metric, reason, 4096
    current.started, current.ended = 100.0, 130.0
    sweep.batch.save()


def test_sweep_crashed_trial_is_failed_for_the_tuner_and_the_sweep_goes_on(tmp_path):
    sweep = make(tmp_path)
    (cell,) = sweep.batch.add(sweep.feed())
    assert cell.cell_id == "t000-s1" and dict(cell.point) == sweep.spec.center()
    assert cell.config["train"]["minibatch_size"] == sweep.spec.center()["train.minibatch_size"] and cell.config["train"]["seed"] == 1
    finish(sweep, cell.cell_id, "crashed", reason="exit code 1")
    sweep.settle(None, cell.cell_id)
    sweep.settle(None, cell.cell_id)  # told once
    first = sweep.tuner.trials()[0]
    assert (first.state, first.reason) == ("failed", "crashed: exit code 1")
    (following,) = sweep.batch.add(sweep.feed())
    assert following.cell_id == "t001-s1"
    assert sweep.tuner.remaining() == 2


def test_sweep_resume_keeps_a_cell_crashed_past_its_retries_crashed(tmp_path):
    """`retries` counts across restarts: a resume neither reruns a failed trial's crashed cell
    nor gives it a fresh budget (no trainer starts here; before, one did)."""
    from puffctl.executors.local import LocalExecutor

    sweep = make(tmp_path, trials=1)
    (cell,) = sweep.batch.add(sweep.feed())
    finish(sweep, cell.cell_id, "crashed", reason="exit code 1")
    sweep.batch.state[cell.cell_id].crashes = sweep.spec.retries + 1
    sweep.batch.save()
    resumed = runner.open_sweep(tmp_path / "sweeps", "s")
    resumed.reconcile()
    assert resumed.tuner.trials()[0].state == "failed"
    counts = resumed.engine(LocalExecutor(1)).run()
    current = runner.open_sweep(tmp_path / "sweeps", "s").batch.state[cell.cell_id]
    assert counts["crashed"] == 1 and (current.status, current.starts, current.crashes) == ("crashed", 0, sweep.spec.retries + 1)
    assert not resumed.batch.run_dir(cell.cell_id).exists()


def test_sweep_reconcile_repairs_both_crash_windows_and_export_reproduces_the_trial(tmp_path):
    sweep = make(tmp_path)
    asked = sweep.tuner.ask()  # the orchestrator died after asking, before writing the cells
    reopened = runner.open_sweep(tmp_path / "sweeps", "s")
    reopened.reconcile()
    assert [cell.cell_id for cell in reopened.batch.cells] == ["t000-s1"]
    finish(reopened, "t000-s1", "completed", metric=42.0)  # settled while nobody watched
    again = runner.open_sweep(tmp_path / "sweeps", "s")
    again.reconcile()
    record = again.tuner.trials()[0]
    assert (record.number, record.state, record.score, record.cost) == (asked.number, "completed", 42.0, 4096.0)
    again.reconcile()
    assert len(again.tuner.trials()) == 1 and len(again.batch.cells) == 1

    exported = tmp_path / "profiles" / "tuned.yaml"
    config = report.export(again, report.trial(again, None), exported)
    cell = again.batch.cells[0]
    assert profiles.build_config(profiles.load(str(exported)), seed=1) == cell.config
    assert config["train"]["learning_rate"] == pytest.approx(cell.config["train"]["learning_rate"])
    report.plot_pareto(again, tmp_path / "pareto.png")
    report.plot_effects(again, tmp_path / "effects.png")
    assert (tmp_path / "pareto.png").stat().st_size > 1000 and (tmp_path / "effects.png").stat().st_size > 1000


@pytest.mark.slow
def test_sweep_cli_killed_orchestrator_resumes_without_duplicated_or_lost_trials(tmp_path):
    spec_file = tmp_path / "cli.yaml"
    spec_file.write_text(SPEC.format(name="cli", trials=3, method="cost-aware"), encoding="utf-8")
    env = {**os.environ, "COLUMNS": "200", "PYTHONPATH": str(REPO), "PUFFCTL_SWEEPS_DIR": str(tmp_path / "sweeps")}
    first = subprocess.Popen([sys.executable, "-m", "puffctl", "sweep", "run", str(spec_file)], cwd=REPO, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    runs_dir = tmp_path / "sweeps" / "cli" / "runs"
    deadline = time.monotonic() + 240
    while not (runs_dir / "t001-s1" / "events.jsonl").is_file():
        assert time.monotonic() < deadline and first.poll() is None, first.stdout.read() if first.poll() is not None else "timeout"
        time.sleep(0.1)
    first.send_signal(signal.SIGKILL)  # the orchestrator only: its trainers run on in their own sessions
    first.wait(timeout=30)
    second = subprocess.run([sys.executable, "-m", "puffctl", "sweep", "resume", "cli"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=400)
    assert second.returncode == 0, second.stdout + second.stderr
    assert sorted(path.name for path in runs_dir.iterdir()) == ["t000-s1", "t001-s1", "t002-s1"]
    sweep = runner.open_sweep(tmp_path / "sweeps", "cli")
    assert [(r.number, r.state) for r in sweep.tuner.trials()] == [(0, "completed"), (1, "completed"), (2, "completed")]
    assert all(r.cost == 4096 and r.score is not None for r in sweep.tuner.trials())
    status = subprocess.run([sys.executable, "-m", "puffctl", "sweep", "report", "cli", "--export", str(tmp_path / "best.yaml")],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert status.returncode == 0, status.stderr
    assert "best 3 of 3" in status.stdout and (tmp_path / "best.yaml").is_file()
    assert (tmp_path / "sweeps" / "cli" / "pareto.png").is_file()
