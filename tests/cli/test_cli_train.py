"""`puffctl train` end to end: the real CLI in a subprocess driving the real trainer on short runs."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from puffctl import runs
from puffctl.cli import app
from puffctl.events import fold, read_events

REPO = Path(__file__).resolve().parents[2]
# COLUMNS: puffctl.cli.main prints errors through rich, which wraps at 80 columns in a pipe.
ENV = {**os.environ, "COLUMNS": "500", "PYTHONUNBUFFERED": "1"}


def puffctl(*args: str, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "puffctl", *args], cwd=REPO, capture_output=True, text=True,
                          env={**ENV, **(env or {})}, timeout=timeout)


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "puffctl", *args], cwd=REPO, env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def wait_for(predicate, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def has_progress(run_dir: Path) -> bool:
    return any(event["type"] == "progress" for event in read_events(run_dir / "events.jsonl"))


def kinds(run_dir: Path) -> list[str]:
    return [event["type"] for event in read_events(run_dir / "events.jsonl")]


def test_cli_train_completes_with_compact_lines_and_a_full_run_dir(tmp_path):
    result = puffctl("train", "baseline", "--steps", "30000", "--seed", "3", "--name", "quick",
                     "--set", "train.checkpoint_interval=20", "--runs-dir", str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    # (a first run after the advantage sources changed prints the extension build before this)
    assert any(line.startswith("[quick] start: env gym:CartPole-v1 params") for line in lines)
    progress = [line for line in lines if line.startswith("[quick] epoch ")]
    assert progress and all(" sps " in line and " eta " in line for line in progress)
    assert "/30.0k" in progress[-1] and "episode_return" in progress[-1] and "policy_loss" in progress[-1]
    assert lines[-1].startswith("completed: run quick, ")
    run_dir = tmp_path / "quick"
    found = kinds(run_dir)
    assert found[0] == "start" and found[-1] == "end" and "checkpoint" in found
    assert found.count("progress") == len(progress)
    state = fold(read_events(run_dir / "events.jsonl"))
    assert state.status == "completed" and state.agent_steps >= 30000
    assert state.config["train"]["seed"] == 3 and state.config["train"]["checkpoint_interval"] == 20
    source = json.loads((run_dir / "source.json").read_text())
    assert len(source["commit"]) == 40 and isinstance(source["dirty"], bool)
    assert state.git == source
    assert json.loads((run_dir / "launch.json").read_text())["profile"] == "baseline"
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"
    assert list((run_dir / "checkpoints").glob("*.pt"))
    listed = CliRunner().invoke(app, ["runs", "list", "--runs-dir", str(tmp_path), "--status", "completed"])
    row = next(line for line in listed.output.splitlines() if "quick" in line)
    assert "baseline" in row and "completed" in row and "gym:CartPole-v1" in row


def test_cli_ctrl_c_checkpoints_and_resume_finishes_the_same_run(tmp_path):
    cli = start("train", "baseline", "--steps", "100000", "--name", "stopme", "--runs-dir", str(tmp_path))
    run_dir = tmp_path / "stopme"
    wait_for(lambda: has_progress(run_dir), what="the first progress event")
    cli.send_signal(signal.SIGINT)
    output, _ = cli.communicate(timeout=60)
    assert cli.returncode == 130, output
    assert "interrupted" in output and "puffctl train --resume stopme" in output
    assert json.loads((run_dir / "status.json").read_text())["status"] == "interrupted"
    assert kinds(run_dir)[-2:] == ["checkpoint", "end"]
    checkpoints = list((run_dir / "checkpoints").glob("*.pt"))
    assert checkpoints
    stopped_at = fold(read_events(run_dir / "events.jsonl")).agent_steps
    assert 0 < stopped_at < 100000

    resumed = puffctl("train", "--resume", "stopme", "--runs-dir", str(tmp_path))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"(resumed at step {stopped_at / 1000:.1f}k)" in resumed.stdout
    events = read_events(run_dir / "events.jsonl")
    starts = [event for event in events if event["type"] == "start"]
    assert [start["resumed"] for start in starts] == [False, True]
    assert starts[1]["agent_steps"] == stopped_at and starts[1]["run_id"] == "stopme"
    assert fold(events).status == "completed"

    again = puffctl("train", "--resume", "stopme", "--runs-dir", str(tmp_path))
    assert again.returncode == 2 and "already completed" in again.stderr


def test_cli_second_ctrl_c_stops_at_once(tmp_path):
    cli = start("train", "baseline", "--steps", "5000000", "--name", "hard", "--runs-dir", str(tmp_path))
    run_dir = tmp_path / "hard"
    wait_for(lambda: has_progress(run_dir), what="the first progress event")
    cli.send_signal(signal.SIGINT)
    time.sleep(0.05)
    cli.send_signal(signal.SIGINT)
    output, _ = cli.communicate(timeout=30)
    assert cli.returncode == 130, output
    assert json.loads((run_dir / "status.json").read_text())["status"] == "interrupted"
    assert runs.get_run(tmp_path, "hard").status == "interrupted"


def test_cli_detach_tail_and_a_killed_run_shows_as_lost(tmp_path):
    detached = puffctl("train", "baseline", "--steps", "40000", "--name", "bg", "--detach", "--runs-dir", str(tmp_path))
    assert detached.returncode == 0 and "puffctl runs tail bg -f" in detached.stdout
    tailed = puffctl("runs", "tail", "bg", "-f", "--runs-dir", str(tmp_path))
    assert tailed.returncode == 0
    assert "[bg] completed" in tailed.stdout or "completed" in tailed.stdout
    assert runs.get_run(tmp_path, "bg").status == "completed"

    doomed = puffctl("train", "baseline", "--steps", "10000000", "--name", "doomed", "--detach",
                     "--runs-dir", str(tmp_path))
    assert doomed.returncode == 0
    run_dir = tmp_path / "doomed"
    wait_for(lambda: has_progress(run_dir), what="the first progress event")
    pid = json.loads((run_dir / "status.json").read_text())["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not runs.pid_alive(pid), what="the trainer to die")
    listed = puffctl("runs", "list", "--status", "lost", "--runs-dir", str(tmp_path))
    assert "doomed" in listed.stdout and "bg" not in listed.stdout
    shown = puffctl("runs", "show", "doomed", "--runs-dir", str(tmp_path))
    assert "lost" in shown.stdout and f"pid {pid} is gone" in shown.stdout
    resumed = puffctl("train", "--resume", "doomed", "--runs-dir", str(tmp_path))
    assert resumed.returncode == 2 and "no checkpoint" in resumed.stderr


def test_cli_live_table_in_a_terminal(tmp_path):
    started = time.perf_counter()
    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(REPO)
        os.execve(sys.executable, [sys.executable, "-m", "puffctl", "train", "baseline", "--steps", "20000",
                                   "--name", "tty", "--runs-dir", str(tmp_path)], {**ENV, "COLUMNS": "120", "LINES": "50"})
    output, first_table = b"", None
    while True:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            output += chunk
            if first_table is None and b"Summary" in output:
                first_table = time.perf_counter() - started
    _, status = os.waitpid(pid, 0)
    text = output.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 0, text[-2000:]
    for label in ("CPU", "Summary", "Performance", "Evaluate", "Learn", "Losses", "Env stats", "episode_return", "completed"):
        assert label in text, label
    assert first_table is not None and first_table < 3.0, f"first table after {first_table}s"


def test_cli_neptune_logger_runs_offline_inside_the_run_dir(tmp_path):
    secret_free = {key: value for key, value in ENV.items() if not key.startswith("NEPTUNE_")}
    result = subprocess.run([sys.executable, "-m", "puffctl", "train", "baseline", "--steps", "20000", "--logger", "neptune",
                             "--name", "nep", "--no-dashboard", "--runs-dir", str(tmp_path)],
                            cwd=REPO, capture_output=True, text=True, env=secret_free, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "epoch" not in result.stdout  # --no-dashboard: no per-update lines
    run_dir = tmp_path / "nep"
    messages = [event["text"] for event in read_events(run_dir / "events.jsonl") if event["type"] == "message"]
    assert any("Neptune logging offline" in text and "NEPTUNE_API_TOKEN" in text for text in messages)
    assert list((run_dir / "neptune" / "offline").glob("run__*/data-*.log"))


def bad_input_cases(tmp_path: Path) -> list[tuple[list[str], str]]:
    completed = tmp_path / "runs" / "finished"
    completed.mkdir(parents=True)
    (completed / "status.json").write_text(json.dumps({"status": "completed", "pid": None}))
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    return [
        (["train", "baselin"], "unknown profile 'baselin' (did you mean baseline?)"),
        (["train", "baseline", "--set", "train.learning_rat=0.1"], "unknown key train.learning_rat (did you mean train.learning_rate?)"),
        (["train", "baseline", "--set", "train.learning_rate=[0.1,"], "cannot parse value"),
        (["train", "baseline", "--set", "nonsense"], "expected KEY=VALUE"),
        (["train", "loop-a"], "extends cycle: loop-a -> loop-b -> loop-a"),
        (["train", str(tmp_path / "missing.yaml")], "no such profile file"),
        (["train", "baseline", "--env", "gym:CartPole-v9"], "did you mean gym:CartPole-v1"),
        (["train", "baseline", "--logger", "wandb"], "expected one of local, neptune"),
        (["train", "baseline", "--name", "../escape"], "invalid run id"),
        (["train", "--resume", "../escape"], "invalid run id"),
        (["train", "--resume", "nope"], "no run 'nope'"),
        (["train", "--resume", "finished"], "already completed"),
        (["train", "--resume", "finished", "--set", "train.seed=1"], "drop --set"),
        (["train", "baseline", "--runs-dir", str(blocker / "runs")], "cannot be created"),
        (["train", "baseline", "--runs-dir", str(blocker)], "is not a directory"),
        (["train"], "missing PROFILE"),
    ]


def test_cli_train_bad_input_is_one_line_exit_2_and_creates_nothing(tmp_path):
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "loop-a.yaml").write_text("extends: loop-b\n")
    (tmp_path / "profiles" / "loop-b.yaml").write_text("extends: loop-a\n")
    root = tmp_path / "runs"
    for args, message in bad_input_cases(tmp_path):
        if "--runs-dir" not in args:
            args = [*args, "--runs-dir", str(root)]
        result = puffctl(*args, env={"PUFFCTL_PROFILES_DIR": str(tmp_path / "profiles")}, timeout=30)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert message in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr, result.stderr
        assert sorted(path.name for path in root.iterdir()) == ["finished"], args


@pytest.mark.parametrize("command", [["--help"], ["train", "--help"], ["runs", "--help"], ["profile", "--help"]])
def test_cli_help_does_not_import_torch(command):
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "puffctl", *command], cwd=REPO,
                            capture_output=True, text=True, env=ENV, timeout=30)
    assert result.returncode == 0
    imported = [line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")]
    assert not [name for name in imported if name.split(".")[0] in ("torch", "neptune", "gymnasium")]


def test_cli_failed_run_exits_1_and_keeps_its_reason(tmp_path):
    result = puffctl("train", "baseline", "--steps", "200000", "--name", "boom", "--runs-dir", str(tmp_path),
                     "--set", "train.learning_rate=1e30", "--set", "train.max_grad_norm=1e38")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "failed" in result.stdout.splitlines()[-1] and "non-finite" in result.stdout
    assert json.loads((tmp_path / "boom" / "status.json").read_text())["status"] == "failed"
    shown = CliRunner().invoke(app, ["runs", "show", "boom", "--runs-dir", str(tmp_path)])
    status_line = next(line for line in shown.output.splitlines() if line.startswith("status"))
    assert "failed: non-finite" in status_line
    assert "train.learning_rate=1e30" in shown.output
