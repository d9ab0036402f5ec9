"""`runs compare`, `runs pin` and `runs checkout` on synthetic runs with known curves."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from puffctl import compare, curves
from puffctl.cli import app
from puffctl.errors import PuffctlError
from trainer import provenance


def make_run(root: Path, run_id: str, slope: float, last: int, *, lr: float = 0.01, host: str = "box-a",
             every: int = 10_000) -> Path:
    """A finished run whose episode_return is slope * steps / 1000, read every `every` steps."""
    path = root / run_id
    path.mkdir(parents=True)
    config = {"env": {"name": "gym:CartPole-v1"}, "train": {"learning_rate": lr, "seed": 1}}
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    git = {"commit": "c" * 40, "dirty": slope > 1, "diff_hash": ("d" * 64) if slope > 1 else None}
    events = [{"type": "start", "time": 1.0, "run_id": run_id, "config": config, "host": host, "device": "cpu", "git": git}]
    for step in range(every, last + 1, every):
        events.append({"type": "progress", "time": 1.0 + step / 1e4, "run_id": run_id, "agent_steps": step, "sps": 1000.0 * slope,
                       "env": {"episode_return": slope * step / 1000}, "losses": {"value_loss": 1.0 / step}})
    events.append({"type": "end", "time": 2.0 + last / 1e4, "run_id": run_id, "status": "completed", "agent_steps": last})
    (path / "events.jsonl").write_text("".join(json.dumps(event) + "\n" for event in events))
    return path


def invoke(*args: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})


def test_values_at_matched_steps_and_what_differs(tmp_path):
    make_run(tmp_path, "base", slope=1.0, last=100_000)
    make_run(tmp_path, "fast", slope=2.0, last=80_000, lr=0.02, host="box-b")
    result = compare.compare(tmp_path, ["base", "fast"])
    assert result.metric == "episode_return"
    assert result.matched_steps == [20_000, 40_000, 60_000, 80_000]
    assert result.values_at_matched() == [[20, 40, 60, 80], [40, 80, 120, 160]]
    assert result.sps() == [1000.0, 2000.0]
    assert result.config_diff == [("train.learning_rate", [0.01, 0.02])]
    assert dict(result.provenance_diff) == {"host": ["box-a", "box-b"], "patch sha256": [None, "d" * 64]}
    between = compare.compare(tmp_path, ["base"], "losses.value_loss")
    assert between.curves[0].at(15_000) == pytest.approx((1 / 10_000 + 1 / 20_000) / 2)


def test_compare_command_prints_the_table_the_plot_and_a_png(tmp_path):
    make_run(tmp_path, "base", slope=1.0, last=100_000)
    make_run(tmp_path / "elsewhere", "fast", slope=2.0, last=80_000, lr=0.02)
    png = tmp_path / "curves.png"
    result = invoke("runs", "compare", "base", str(tmp_path / "elsewhere" / "fast"), "--png", str(png), "--runs-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "80 (+40)" in result.output and "160 (+80)" in result.output
    assert "train.learning_rate" in result.output and "\u2022" in result.output
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size[0] > 400


def test_pin_names_a_reference_for_compare(tmp_path):
    make_run(tmp_path, "good-one", slope=1.0, last=50_000)
    pinned = invoke("runs", "pin", "good-one", "--as", "good", "--runs-dir", str(tmp_path))
    assert pinned.exit_code == 0, pinned.output
    assert curves.resolve(tmp_path, "good") == (tmp_path / "good-one").resolve()
    assert "good-one" in invoke("runs", "pin", "--runs-dir", str(tmp_path)).output
    assert compare.compare(tmp_path, ["good"]).values_at_matched() == [[12.5, 25, 37.5, 50]]
    with pytest.raises(PuffctlError, match="no 'nope' readings"):
        compare.compare(tmp_path, ["good"], "nope")


def test_checkout_command_recreates_a_runs_code(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    run = lambda *a: subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@x.invalid", *a],  # noqa: E731
                                    check=True, capture_output=True)
    (repo / "a.py").write_text("x = 1\n")
    run("init", "-q")
    run("add", ".")
    run("commit", "-qm", "one")
    (repo / "a.py").write_text("x = 2\n")
    (repo / "b.py").write_text("new\n")
    store = tmp_path / "runs"
    provenance.record(make_run(store, "r1", 1.0, 20_000), repo)
    result = invoke("runs", "checkout", "r1", "--repo", str(repo), "--runs-dir", str(store))
    assert result.exit_code == 0, result.output
    code = tmp_path / "repo-r1"
    assert (code / "a.py").read_text() == "x = 2\n" and (code / "b.py").read_text() == "new\n"
    again = invoke("runs", "checkout", "r1", "--repo", str(repo), "--runs-dir", str(store))
    assert again.exit_code != 0 and "already exists" in str(again.exception)


def test_train_against_a_pinned_reference_shows_its_value_at_the_same_step(tmp_path):
    import os
    import re
    import sys

    make_run(tmp_path, "known", slope=1.0, last=200_000, every=1_000)  # reference value = steps / 1000
    assert invoke("runs", "pin", "known", "--as", "good", "--runs-dir", str(tmp_path)).exit_code == 0
    repo = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-m", "puffctl", "train", "baseline", "--steps", "20000", "--name", "live",
                             "--against", "good", "--runs-dir", str(tmp_path)], cwd=repo, capture_output=True, text=True,
                            env={**os.environ, "COLUMNS": "400"}, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    shown = re.findall(r"\| vs good \(known\) episode_return (\S+)\s+reference (\S+) at (\S+)k steps", result.stdout)
    assert shown, result.stdout
    for mine, theirs, steps in shown:
        assert float(theirs) == pytest.approx(float(steps), abs=0.06)
    assert json.loads((tmp_path / "live" / "launch.json").read_text())["against"] == "good"
    assert not re.search(r"watchdog (kl|value_loss|grad_norm)", result.stdout), "a healthy run raises no watchdog"
