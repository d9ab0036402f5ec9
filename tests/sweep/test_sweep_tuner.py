"""The tuner on Optuna: trial 1 at the centre, failures recorded as such, a killed study resumed
without duplicated or lost trials, and the cost-aware method's Pareto bookkeeping."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from puffctl.sweep import spaces
from puffctl.sweep.tuner import Tuner, sqlite_url

REPO = Path(__file__).resolve().parents[2]
SPACES = {
    "train.learning_rate": spaces.parse("train.learning_rate", {"space": "log", "min": 1e-4, "max": 1e-1, "center": 3e-3}),
    "train.gamma": spaces.parse("train.gamma", {"space": "logit", "min": 0.9, "max": 0.999}),
    "train.minibatch_size": spaces.parse("train.minibatch_size", {"space": "pow2", "min": 128, "max": 2048}),
    "train.update_epochs": spaces.parse("train.update_epochs", {"space": "int", "min": 1, "max": 8}),
}


def score(params: dict) -> float:
    """A smooth objective with its maximum (0) inside the box."""
    return -sum((SPACES[key].normalize(value) - 0.3) ** 2 for key, value in params.items())


def cost(params: dict) -> float:
    return float(params["train.minibatch_size"] * params["train.update_epochs"])


def tuner(tmp_path: Path, method: str, budget: int = 20, name: str = "s") -> Tuner:
    return Tuner(SPACES, storage=sqlite_url(tmp_path / "study.db"), name=name, method=method, direction="maximize", budget=budget)


@pytest.mark.parametrize("method", ["random", "default", "cost-aware"])
def test_sweep_trial_one_is_the_centre_and_values_are_decoded(tmp_path, method):
    tune = tuner(tmp_path, method)
    first = tune.ask()
    assert first.number == 0
    assert first.params == {key: space.center for key, space in SPACES.items()}
    tune.tell(first.number, score(first.params), cost(first.params))
    second = tune.ask()
    assert isinstance(second.params["train.minibatch_size"], int) and second.params != first.params
    assert [record.state for record in tune.trials()] == ["completed", "running"]


def test_sweep_failed_trial_is_recorded_as_failed_and_the_tuner_goes_on(tmp_path):
    tune = tuner(tmp_path, "cost-aware", budget=16)
    for _ in range(7):
        trial = tune.ask()
        tune.tell(trial.number, score(trial.params), cost(trial.params))
    broken = tune.ask()
    tune.fail(broken.number, "crashed: exit code 1")
    tune.tell(tune.ask().number, float("nan"), 1.0)
    for _ in range(tune.remaining()):  # past the start-up trials: the GP fits only completed ones
        trial = tune.ask()
        tune.tell(trial.number, score(trial.params), cost(trial.params))
    records = tune.trials()
    assert [r.state for r in records].count("failed") == 2 and len(records) == 16
    assert records[broken.number].reason == "crashed: exit code 1" and records[broken.number].score is None
    assert tune.study.trials[broken.number].state.name == "FAIL"
    assert tune.remaining() == 0
    front = tune.pareto()
    assert front and all(a.cost <= b.cost and a.score < b.score for a, b in zip(front, front[1:]))
    best = tune.best()
    assert best.score == max(r.score for r in records if r.state == "completed") and best.score > -0.3


def test_sweep_reopening_a_study_with_other_spaces_is_refused(tmp_path):
    tuner(tmp_path, "random")
    from puffctl.errors import PuffctlError

    with pytest.raises(PuffctlError, match="other search spaces"):
        tuner(tmp_path, "cost-aware")


WORKER = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {tests!r})
    from test_sweep_tuner import tuner, score, cost
    from pathlib import Path
    tune = tuner(Path({path!r}), "cost-aware", budget=14)
    for record in tune.running():          # a resumed sweep reruns what was in flight
        tune.tell(record.number, score(record.params), cost(record.params))
        print("rerun", record.number, flush=True)
    while tune.remaining():
        trial = tune.ask()
        print("asked", trial.number, flush=True)
        if {slow} and trial.number == 9:
            time.sleep(60)                  # killed here, trial 9 in flight
        tune.tell(trial.number, score(trial.params), cost(trial.params))
    """
)


def test_sweep_killed_study_resumes_without_duplicated_or_lost_trials(tmp_path):
    def worker(slow: bool) -> subprocess.Popen:
        code = WORKER.format(tests=str(Path(__file__).parent), path=str(tmp_path), slow=slow)
        return subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONPATH": str(REPO)}, start_new_session=True)

    first = worker(slow=True)
    for line in first.stdout:
        if line.strip() == "asked 9":
            break
    time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=30)
    second = worker(slow=False)
    output = second.communicate(timeout=300)[0].split("\n")
    assert second.returncode == 0
    assert "rerun 9" in output and "asked 10" in output and "asked 9" not in output
    records = tuner(tmp_path, "cost-aware", budget=14).trials()
    assert [r.number for r in records] == list(range(14))
    assert all(r.state == "completed" for r in records)


def test_sweep_cost_aware_parallel_asks_differ_and_in_memory_storage_works():
    tune = Tuner(SPACES, storage=None, name="m", method="cost-aware", direction="maximize", budget=12)
    for _ in range(6):
        trial = tune.ask()
        tune.tell(trial.number, score(trial.params), cost(trial.params))
    in_flight = [tune.ask() for _ in range(3)]  # three slots asking before any result comes back
    assert len({tuple(sorted(trial.params.items())) for trial in in_flight}) == 3
    assert [r.state for r in tune.trials()].count("running") == 3
