"""Profiles: extends chains, deep merge, --set parsing, validation through trainer.config."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from puffctl import profiles
from puffctl.cli import app
from puffctl.errors import PuffctlError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def lab(tmp_path, monkeypatch):
    """A user profiles dir searched before the bundled one."""
    (tmp_path / "small.yaml").write_text(
        "extends: baseline\ndescription: baseline with a smaller encoder\npolicy:\n  hidden_size: 32\n"
        "train:\n  learning_rate: 3e-3\n")
    (tmp_path / "smaller.yaml").write_text("extends: small\ntrain:\n  total_timesteps: 1000\n")
    (tmp_path / "vt.yaml").write_text("extends: baseline\ndescription: V-trace\ntrain:\n  advantage: vtrace\n")
    (tmp_path / "loop-a.yaml").write_text("extends: loop-b\n")
    (tmp_path / "loop-b.yaml").write_text("extends: loop-a\n")
    (tmp_path / "typo.yaml").write_text("train:\n  learning_rat: 0.1\n")
    (tmp_path / "broken.yaml").write_text("train: [1,\n")
    monkeypatch.setenv("PUFFCTL_PROFILES_DIR", str(tmp_path))
    return tmp_path


def test_cli_bundled_baseline_resolves():
    profile = profiles.load("baseline")
    config = profiles.build_config(profile)
    assert config["env"]["name"] == "gym:CartPole-v1"
    assert profiles.algorithm(config) == "ppo+puff"
    assert profile.description and "\n" not in profile.description


def test_cli_extends_chain_merges_deep(lab):
    profile = profiles.load("smaller")
    assert [path.stem for path in profile.chain] == ["smaller", "small", "baseline"]
    config = profiles.build_config(profile)
    base = profiles.build_config(profiles.load("baseline"))
    assert config["train"]["total_timesteps"] == 1000           # own
    assert config["policy"]["hidden_size"] == 32               # parent
    assert config["train"]["learning_rate"] == 0.003           # parent, 3e-3 read as a float
    assert config["env"] == base["env"]                        # grandparent, untouched by the deep merge
    assert config["train"]["minibatch_size"] == base["train"]["minibatch_size"]
    assert profile.description == "baseline with a smaller encoder"  # inherited


def test_cli_set_overrides_are_yaml_scalars_with_dotted_keys(lab):
    config = profiles.build_config(
        profiles.load("baseline"),
        sets=["train.learning_rate=1e-3", "train.anneal_lr=false", "train.cpu_threads=null",
              "env.kwargs={max_episode_steps: 100}", "train.seed=1", "train.seed=7"],
        steps=5000, env="gym:Acrobot-v1", logger="neptune")
    assert config["train"]["learning_rate"] == 0.001
    assert config["train"]["anneal_lr"] is False and config["train"]["cpu_threads"] is None
    assert config["env"]["kwargs"] == {"max_episode_steps": 100}
    assert config["train"]["seed"] == 7 and config["train"]["total_timesteps"] == 5000
    assert config["env"]["name"] == "gym:Acrobot-v1" and config["logger"]["backend"] == "neptune"


@pytest.mark.parametrize("name, sets, message", [
    ("baselin", [], "unknown profile 'baselin' (did you mean baseline"),
    ("loop-a", [], "extends cycle: loop-a -> loop-b -> loop-a"),
    ("typo", [], "unknown key train.learning_rat (did you mean train.learning_rate?)"),
    ("broken", [], "invalid YAML (line 2"),
    ("missing/file.yaml", [], "no such profile file"),
    ("baseline", ["train.learning_rat=0.1"], "--set: unknown key train.learning_rat (did you mean train.learning_rate?)"),
    ("baseline", ["train.learning_rate=[0.1,"], "--set train.learning_rate: cannot parse value"),
    ("baseline", ["train.learning_rate"], "expected KEY=VALUE"),
    ("baseline", ["=3"], "expected KEY=VALUE"),
    ("baseline", ["train.bptt_horizon=64", "train.minibatch_size=100"],
     "train.minibatch_size=100 must be a multiple of train.bptt_horizon=64"),
    ("baseline", ["train.update_epochs=two"], "train.update_epochs='two' must be an integer"),
    ("baseline", ["env.name=gym:CartPole-v9"], "gymnasium has no env 'CartPole-v9' (did you mean gym:CartPole-v1"),
    ("baseline", ["env.name=CartPole-v1"], "unknown env (did you mean gym:CartPole-v1?)"),
    ("baseline", ["env.name=minigrid:MiniGrid-Empty-5x5-v9"],
     "minigrid has no env 'MiniGrid-Empty-5x5-v9' (did you mean minigrid:MiniGrid-Empty-5x5-v0"),
    ("baseline", ["env.name=minigrid:CartPole-v1"], "minigrid has no env 'CartPole-v1'"),
])
def test_cli_profile_errors(lab, name, sets, message):
    with pytest.raises(PuffctlError) as error:
        profiles.build_config(profiles.load(name), sets=sets)
    assert message in str(error.value)
    assert "\n" not in str(error.value) and error.value.exit_code == 2


def test_cli_profile_list_table(lab):
    result = CliRunner().invoke(app, ["profile", "list"])
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): line for line in result.output.splitlines() if line.startswith("│")}
    assert "gym:CartPole-v1" in rows["baseline"] and "ppo+puff" in rows["baseline"]
    assert "baseline" in rows["small"] and "smaller encoder" in rows["small"]
    assert "ppo+vtrace" in rows["vt"] and "V-trace" in rows["vt"]
    assert "invalid" in rows["typo"] and "invalid" in rows["loop-a"]


def test_cli_profile_show_and_resolved(lab):
    plain = CliRunner().invoke(app, ["profile", "show", "small"])
    assert plain.exit_code == 0 and "hidden_size: 32" in plain.output and "small <- baseline" in plain.output
    assert "vf_clip_coef" not in plain.output
    resolved = CliRunner().invoke(app, ["profile", "show", "small", "--resolved"])
    assert resolved.exit_code == 0 and "vf_clip_coef: 0.2" in resolved.output and "ppo+puff" in resolved.output


def test_cli_profile_validate(lab, tmp_path):
    ok = CliRunner().invoke(app, ["profile", "validate", str(lab / "small.yaml")])
    assert ok.exit_code == 0 and "ok" in ok.output and "ppo+puff" in ok.output
    for path, message in ((lab / "typo.yaml", "did you mean train.learning_rate"),
                          (tmp_path / "nope.yaml", "no such profile file")):
        result = subprocess.run([sys.executable, "-m", "puffctl", "profile", "validate", str(path)], cwd=REPO,
                                capture_output=True, text=True, env={**os.environ, "COLUMNS": "500"})
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_a_gymnasium_id_is_accepted_without_importing_gymnasium():
    # gymnasium's import is a second of every `train` start; its registration file says enough
    code = ("import sys; from puffctl import profiles; profiles.check_env('gym:CartPole-v1'); "
            "assert 'gymnasium' not in sys.modules and 'trainer.envs' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert profiles.registered_by_gymnasium("CartPole-v1") and not profiles.registered_by_gymnasium("CartPole-v9")
