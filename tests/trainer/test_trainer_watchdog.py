"""Watchdogs: each fires on a crafted history and stays quiet on a healthy one; halt_on ends a run."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from trainer.config import DEFAULTS, ConfigError, resolve
from trainer.watchdog import Watchdog

ROOT = Path(__file__).resolve().parents[2]


def healthy(epochs: int = 300, seed: int = 0):
    """Noisy but healthy per-epoch diagnostics: kl small, losses and SPS wobbling around a level."""
    rng = random.Random(seed)
    for epoch in range(epochs):
        losses = {"approx_kl": abs(rng.gauss(0.01, 0.01)), "value_loss": 30 * rng.uniform(0.3, 3),
                  "grad_norm": rng.uniform(0.5, 4.0), "policy_loss": rng.gauss(0, 0.05)}
        yield losses, 1000 * rng.uniform(0.7, 1.3) * min(1.0, (epoch + 1) / 10)  # a slow start, then steady


def alarms_over(history, **settings) -> list[tuple[int, str]]:
    watchdog = Watchdog({**DEFAULTS["watchdog"], **settings})
    return [(epoch, alarm.name) for epoch, (losses, sps) in enumerate(history) for alarm in watchdog.check(losses, sps)]


def test_a_healthy_run_raises_nothing():
    assert alarms_over(healthy()) == []


def with_epoch(history, epoch: int, **changes):
    for number, (losses, sps) in enumerate(history):
        if number == epoch:
            sps = changes.pop("sps", sps)
            losses = {**losses, **changes}
        yield losses, sps


def test_kl_fires_once_while_high_and_again_after_recovering():
    rows = list(healthy(60))
    for epoch in (20, 21, 22, 40):
        rows[epoch][0]["approx_kl"] = 0.5
    assert alarms_over(rows) == [(20, "kl"), (40, "kl")]


@pytest.mark.parametrize("name", ["value_loss", "grad_norm"])
def test_a_jump_over_the_recent_median_fires(name):
    rows = list(with_epoch(healthy(60), 30, **{name: 1e4}))
    assert alarms_over(rows) == [(30, name)]
    assert alarms_over(rows, jump_factor=1e6) == []


def test_grad_norm_is_skipped_when_the_losses_do_not_carry_it():
    rows = [({k: v for k, v in losses.items() if k != "grad_norm"}, sps) for losses, sps in healthy(60)]
    rows[30][0]["value_loss"] = 1e5
    assert alarms_over(rows) == [(30, "value_loss")]


def test_sps_collapse_fires_and_a_disabled_watchdog_is_silent():
    rows = list(healthy(80))
    for epoch in range(50, 60):
        rows[epoch] = (rows[epoch][0], 50.0)
    assert alarms_over(rows) == [(50, "sps")]
    assert alarms_over(rows, enabled=False) == []


def test_halt_on_is_a_checked_list():
    assert resolve({"train": {"halt_on": ["kl", "sps"]}})["train"]["halt_on"] == ["kl", "sps"]
    with pytest.raises(ConfigError, match="'kll' is not one of kl, value_loss, grad_norm, sps"):
        resolve({"train": {"halt_on": ["kll"]}})
    with pytest.raises(ConfigError, match="must be a list"):
        resolve({"train": {"halt_on": "kl"}})


def test_halt_on_ends_the_run_failed_with_the_reason_and_a_checkpoint(tmp_path):
    config = {"env": {"name": "gym:CartPole-v1", "num_envs": 16},
              "train": {"total_timesteps": 16 * 16 * 40, "bptt_horizon": 16, "minibatch_size": 128, "checkpoint_interval": 0,
                        "cpu_threads": 1, "optimizer": "adam", "halt_on": ["kl"]},
              "watchdog": {"kl_max": 1e-12},
              "logger": {"progress_interval": 0}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    run_dir = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "trainer", "--config", str(path), "--run-dir", str(run_dir)], cwd=ROOT,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 1, done.stdout + done.stderr
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    end = events[-1]
    assert end["type"] == "end" and end["status"] == "failed" and end["agent_steps"] < 16 * 16 * 40
    assert end["reason"].startswith("halted by watchdog kl (train.halt_on): approx_kl")
    assert json.loads((run_dir / "status.json").read_text())["status"] == "failed"
    assert list((run_dir / "checkpoints").glob("*.pt"))
    assert not [e for e in events if e["type"] == "message" and e["text"].startswith("watchdog kl")]
