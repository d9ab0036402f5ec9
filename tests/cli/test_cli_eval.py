"""`puffctl eval`: a trained CartPole checkpoint beats random actions; GIF and ANSI renders."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from puffctl.cli import app
from puffctl.errors import PuffctlError
from trainer import checkpoint, config
from trainer.train import Trainer

CARTPOLE = {"env": {"name": "gym:CartPole-v1", "num_envs": 64},
            "train": {"optimizer": "adam", "learning_rate": 0.04, "bptt_horizon": 32, "minibatch_size": 1024, "gamma": 0.99,
                      "gae_lambda": 0.95, "vf_coef": 0.5, "ent_coef": 0.001, "total_timesteps": 2_000_000}}


def trained_run(path: Path, overrides: dict, epochs: int) -> Path:
    """A run directory with config.yaml and one checkpoint after `epochs` epochs of training."""
    torch.set_num_threads(1)
    resolved = config.resolve(overrides)
    trainer = Trainer(resolved)
    for _ in range(epochs):
        trainer.evaluate()
        trainer.train()
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump(resolved))
    checkpoint.save(path, trainer.epoch, trainer.state_dict(), keep=1)
    trainer.close()
    return path


def evaluate(*args: str):
    result = CliRunner().invoke(app, ["eval", *args], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def mean_and_ci(output: str) -> tuple[float, float, float]:
    found = re.search(r"eval\s+(\S+) \[(\S+), (\S+)\] 95% CI", output)
    assert found, output
    return tuple(float(value) for value in found.groups())


@pytest.fixture(scope="module")
def cartpole(tmp_path_factory) -> Path:
    return trained_run(tmp_path_factory.mktemp("eval") / "cartpole", CARTPOLE, epochs=15)


def test_a_trained_checkpoint_beats_random_actions(cartpole):
    trained, low, _ = mean_and_ci(evaluate(str(cartpole), "--episodes", "16").output)
    chance, _, high = mean_and_ci(evaluate(str(cartpole), "--episodes", "16", "--random").output)
    assert chance < 40  # random actions keep CartPole up for about 22 steps
    assert low > high and trained > 2 * chance
    records = [json.loads(line) for line in (cartpole / "evals.jsonl").read_text().splitlines()]
    assert [r["random"] for r in records] == [False, True] and records[0]["checkpoint"] == "epoch_00000015.pt"
    shown = CliRunner().invoke(app, ["runs", "show", cartpole.name, "--runs-dir", str(cartpole.parent)], env={"COLUMNS": "300"})
    assert "over 16 episodes, random actions" in shown.output and "status   created" in shown.output


def test_gif_is_written_and_readable(cartpole, tmp_path):
    gif = tmp_path / "episode.gif"
    output = evaluate(str(cartpole), "--episodes", "2", "--deterministic", "--render", str(gif)).output
    frames = int(re.search(r"(\d+) frames", output).group(1))
    with Image.open(gif) as image:
        assert image.format == "GIF" and image.size[0] > 100 and image.n_frames > 1
        image.seek(image.n_frames - 1)
    assert frames >= image.n_frames


def test_built_in_envs_render_as_ansi_and_gymnasium_ones_refuse_it(tmp_path, cartpole):
    maze = trained_run(tmp_path / "maze", {"env": {"name": "puffer:maze", "num_envs": 8, "kwargs": {"size": 3}},
                                           "train": {"bptt_horizon": 8, "minibatch_size": 64}}, epochs=1)
    output = evaluate(str(maze), "--episodes", "4", "--render", "ansi").output
    assert "@" in output and "+---+" in output and "rendered episode: return" in output
    refused = CliRunner().invoke(app, ["eval", str(cartpole), "--render", "ansi"])
    assert isinstance(refused.exception, PuffctlError) and "render gymnasium envs to a .gif" in str(refused.exception)
    missing = CliRunner().invoke(app, ["eval", str(cartpole), "--checkpoint", "3"])
    assert "no checkpoint of epoch 3 (it has: 15)" in str(missing.exception)
