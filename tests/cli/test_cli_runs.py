"""The run store on hand-made run directories: ids, status (lost runs), list/show/tail/rm."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from puffctl import runs
from puffctl.cli import app
from puffctl.errors import PuffctlError
from trainer import runlock

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).resolve().parents[2]


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def make_run(root: Path, run_id: str, stream: str | None, status: dict | None, profile: str = "baseline") -> Path:
    path = root / run_id
    (path / "checkpoints").mkdir(parents=True)
    if stream:
        shutil.copy(DATA / stream, path / "events.jsonl")
    if status is not None:
        (path / "status.json").write_text(json.dumps({"run_id": run_id, "host": socket.gethostname(), **status}))
    (path / "launch.json").write_text(json.dumps({"profile": profile, "sets": [], "created": 1.0}))
    (path / "config.yaml").write_text("env:\n  name: CartPole-v1\n")
    return path


@pytest.fixture
def store(tmp_path):
    root = tmp_path / "runs"
    done = make_run(root, "done", "completed.jsonl", {"status": "completed", "pid": 1})
    (done / "checkpoints" / "epoch_00000020.pt").write_bytes(b"x" * 1000)
    make_run(root, "killed", "truncated.jsonl", {"status": "running", "pid": dead_pid()}, profile="vtrace")
    runlock.acquire(root / "killed", "trainer").release()  # its trainer held the lock, then died
    alive = make_run(root, "alive", "truncated.jsonl", {"status": "running", "pid": os.getpid()})
    with runlock.acquire(alive, "trainer"):  # this process plays the live trainer
        yield root


def invoke(*args: str):
    return CliRunner().invoke(app, list(args), catch_exceptions=True)


def test_cli_run_ids_must_be_safe_path_components(tmp_path):
    for good in ("baseline-20260101-000000", "a", "x.y_z-1"):
        assert runs.check_run_id(good) == good
    for bad in ("", ".", "..", "../etc", "a/b", "-rf", ".hidden", "a b", "x" * 200, "ü"):
        with pytest.raises(PuffctlError):
            runs.check_run_id(bad)


def test_cli_new_run_ids_are_unique(tmp_path):
    first = runs.create_run_dir(tmp_path, "baseline")
    second = runs.create_run_dir(tmp_path, "baseline")
    assert first != second and first.is_dir() and second.is_dir()
    assert second.name.startswith(first.name)
    with pytest.raises(PuffctlError, match="already exists"):
        runs.create_run_dir(tmp_path, first.name, exact=True)


def test_cli_runs_root_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv("PUFFCTL_RUNS_DIR", raising=False)
    assert runs.runs_root(None) == Path("runs")
    monkeypatch.setenv("PUFFCTL_RUNS_DIR", str(tmp_path))
    assert runs.runs_root(None) == tmp_path
    assert runs.runs_root(tmp_path / "x") == tmp_path / "x"


def test_cli_status_of_a_killed_run_is_lost(store):
    statuses = {run.run_id: run.status for run in runs.list_runs(store)}
    assert statuses == {"done": "completed", "killed": "lost", "alive": "running"}
    assert [run.run_id for run in runs.list_runs(store, status="lost")] == ["killed"]
    assert [run.run_id for run in runs.list_runs(store, profile="vtrace")] == ["killed"]
    with pytest.raises(PuffctlError, match="unknown status"):
        runs.list_runs(store, status="exploded")


def test_cli_runs_list_table(store):
    result = invoke("runs", "list", "--runs-dir", str(store))
    assert result.exit_code == 0, result.output
    header = next(line for line in result.output.splitlines() if "profile" in line)
    for column in ("id", "profile", "env", "status", "steps", "SPS", "best", "started", "duration"):
        assert column in header
    row = next(line for line in result.output.splitlines() if "done" in line)
    assert "completed" in row and "CartPole-v1" in row and "40.0k" in row and "402" in row
    assert "lost" in next(line for line in result.output.splitlines() if "killed" in line)
    filtered = invoke("runs", "list", "--runs-dir", str(store), "--status", "running")
    assert "alive" in filtered.output and "done" not in filtered.output


def test_cli_runs_show(store):
    result = invoke("runs", "show", "done", "--runs-dir", str(store))
    assert result.exit_code == 0, result.output
    out = result.output
    assert "completed" in out and "Performance" in out and "episode_return" in out
    assert "a" * 40 in out and "dirty" in out
    assert "checkpoints/epoch_00000020.pt" in out and "checkpoints (1)" in out
    assert "CartPole-v1" in out  # the resolved config
    lost = invoke("runs", "show", "killed", "--runs-dir", str(store)).output
    assert "lost" in lost and "is gone" in lost


def test_cli_runs_tail_of_a_finished_run(store):
    result = invoke("runs", "tail", "done", "-f", "--runs-dir", str(store))
    assert result.exit_code == 0
    assert "Summary" in result.output and "nothing to follow" in result.output


def test_cli_runs_rm_asks_first(store):
    declined = invoke("runs", "rm", "done", "--runs-dir", str(store))
    assert declined.exit_code != 0 and (store / "done").is_dir()
    result = CliRunner().invoke(app, ["runs", "rm", "done", "--runs-dir", str(store)], input="y\n")
    assert result.exit_code == 0 and not (store / "done").exists()
    assert invoke("runs", "rm", "killed", "--yes", "--runs-dir", str(store)).exit_code == 0
    assert not (store / "killed").exists()
    with pytest.raises(PuffctlError, match=r"run alive is in use by trainer pid \d+ on .*; stop it first"):
        runs.remove_run(store, "alive")
    assert (store / "alive" / "events.jsonl").is_file()


def puffctl(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    # COLUMNS: puffctl.cli.main prints errors through rich, which wraps at 80 columns in a pipe.
    return subprocess.run([sys.executable, "-m", "puffctl", *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "500", **(env or {})}, timeout=60)


@pytest.mark.parametrize("args, message", [
    (("runs", "show", "nope"), "no run 'nope'"),
    (("runs", "show", "../done"), "invalid run id"),
    (("runs", "tail", ".."), "invalid run id"),
    (("runs", "rm", "a/b", "--yes"), "invalid run id"),
    (("runs", "list", "--status", "exploded"), "unknown status"),
])
def test_cli_runs_bad_input_is_one_line_exit_2(store, args, message):
    result = puffctl(*args, "--runs-dir", str(store))
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_cli_finished_runs_are_summarised_once_and_refolded_when_events_change(store):
    first = runs.get_run(store, "done").state
    cache = store / "done" / runs.SUMMARY_FILE
    assert cache.is_file() and not (store / "alive" / runs.SUMMARY_FILE).exists()
    cached = runs.get_run(store, "done").state
    assert cached == first and cached.message == first.message
    with (store / "done" / "events.jsonl").open("a") as handle:
        handle.write(json.dumps({"type": "start", "time": 1790000100.0, "run_id": "done", "resumed": True}) + "\n")
    refolded = runs.get_run(store, "done").state
    assert refolded.resumed and refolded.status == "running"
