"""Sweep specs: parsed and validated through the profiles and trainer.config like `puffctl train`."""

from __future__ import annotations

from pathlib import Path

import pytest

from puffctl.errors import PuffctlError
from puffctl.sweep import spec as sweep_spec

GOOD = """
name: cp
profile: baseline
set:
  train.total_timesteps: 50000
  env: {num_envs: 16}
search:
  train.learning_rate: {space: log, min: 1e-4, max: 1e-1, center: 3e-3, scale: 1}
  train.gamma: {space: logit, min: 0.9, max: 0.999}
  train.minibatch_size: {space: pow2, min: 128, max: 512}
metric: env.episode_return
trials: 12
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_sweep_spec_parses_with_defaults_and_builds_trial_overrides(tmp_path):
    spec = sweep_spec.load(write(tmp_path, GOOD))
    assert (spec.name, spec.method, spec.direction, spec.cost, spec.trials, spec.seeds) == ("cp", "cost-aware", "maximize", "steps", 12, 1)
    assert spec.fixed == {"train.total_timesteps": 50000, "env.num_envs": 16}
    assert spec.center()["train.learning_rate"] == pytest.approx(3e-3)
    overrides = spec.overrides(spec.center())
    assert overrides["train"]["total_timesteps"] == 50000 and overrides["env"]["num_envs"] == 16
    assert "train.minibatch_size=" + str(spec.center()["train.minibatch_size"]) in spec.sets(spec.center())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("train.gamma:", "train.gamm:"), "unknown key train.gamm"),
        (("space: log, min: 1e-4, max: 1e-1, center: 3e-3", "space: linear, min: -0.1, max: 1e-1, center: 3e-3"), "train.learning_rate at its min"),
        (("space: pow2, min: 128, max: 512", "space: linear, min: 128, max: 1024"), "must be an integer"),
        (("profile: baseline", "profile: basline"), "unknown profile 'basline'"),
        (("trials: 12", "trials: 0"), "trials"),
        (("metric: env.episode_return", "metric: env..x"), "metric"),
        (("trials: 12", "trials: 12\nmethod: bayes"), "method: expected one of"),
        (("trials: 12", "trials: 12\nwhere: box1"), "where: local or ray://"),
        (("trials: 12", "trials: 12\nwhere: ray://head:8265"), "run_storage"),
        (("trials: 12", "trials: 12\nsed: 3"), "unknown key"),
        (("  env: {num_envs: 16}", "  train.learning_rate: 0.1"), "both fixed"),
    ],
)
def test_sweep_bad_spec_is_one_line_error(tmp_path, change, message):
    old, new = change
    assert old in GOOD
    with pytest.raises(PuffctlError, match=message) as error:
        sweep_spec.load(write(tmp_path, GOOD.replace(old, new)))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("command", [["--help"], ["sweep", "--help"], ["sweep", "run", "--help"]])
def test_sweep_help_imports_neither_optuna_nor_torch(command):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "puffctl", *command], cwd=Path(__file__).resolve().parents[2],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "sweep" in result.stdout
    imported = {line.split("|")[-1].strip().split(".")[0] for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert not imported & {"torch", "optuna", "matplotlib", "sqlalchemy", "numpy"}
