"""The run store under faults (docs/reliability.md): real trainers SIGKILLed at random moments,
raced, given damaged checkpoints and event lines, and starved of disk."""

from __future__ import annotations

import fcntl
import json
import os
import random
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tooling"))

import faults  # noqa: E402

from puffctl import runs  # noqa: E402
from puffctl.events import RunState, Tail  # noqa: E402
from trainer import checkpoint, runlock  # noqa: E402

EPOCHS = 60
LONG = {"train": {"total_timesteps": 256 * EPOCHS}}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[int, dict]:
    """Losses per epoch of the uninterrupted run every faulted run must reproduce."""
    directory = tmp_path_factory.mktemp("reference")
    done = faults.run_trainer(faults.write_config(directory, LONG), directory / "straight")
    assert done.returncode == 0, done.stderr
    return faults.losses_by_epoch(faults.read_events(directory / "straight"))


def killed_run(tmp_path: Path, name: str = "run", overrides: dict | None = None) -> tuple[Path, Path]:
    """A run SIGKILLed after its 3rd checkpoint (status.json still says running)."""
    config = faults.write_config(tmp_path, {"train": {"keep_checkpoints": 3}, **(overrides or {})})
    run_dir = tmp_path / name
    process = faults.trainer(config, run_dir)
    faults.wait_for(lambda: (run_dir / "checkpoints" / "epoch_00000003.pt").is_file() or process.poll() is not None,
                    what="the 3rd checkpoint")
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    return config, run_dir


def test_runstore_sigkill_at_random_moments_then_resume_continues_exactly(tmp_path, reference):
    config = faults.write_config(tmp_path, LONG)
    run_dir = tmp_path / "run"
    rng = random.Random(16)
    kills = [faults.kill_once(config, run_dir, rng, moment)
             for moment in ("training", "checkpoint", "startup", "checkpoint", "training", "checkpoint")]
    assert all(kill["killed"] for kill in kills), kills
    assert any(kill["in_checkpoint_write"] for kill in kills), "no kill landed inside a checkpoint write"
    expected = faults.newest_intact_epoch(run_dir)
    done = faults.run_trainer(config, run_dir, "--resume")
    assert done.returncode == 0, done.stderr
    events = faults.read_events(run_dir)
    resumed = [event for event in events if event["type"] == "start" and event["resumed"]]
    assert resumed[-1]["epoch"] == expected  # the newest intact checkpoint, every time
    for kill in kills[1:]:
        assert kill["start_epoch"] in (None, kill["expected_epoch"]), kills
    checked = faults.check_stream(events, reference, EPOCHS)
    assert checked["lost"] == [] and checked["duplicated"] == [] and checked["differing"] == [], checked
    assert events[-1]["type"] == "end" and events[-1]["status"] == "completed"
    assert not [name for name in (run_dir / "checkpoints").iterdir() if ".tmp." in name.name]


def test_runstore_double_resume_starts_exactly_one_trainer_and_rm_is_refused_while_it_runs(tmp_path):
    _, run_dir = killed_run(tmp_path, overrides={"train": {"total_timesteps": 256 * 100_000}})
    assert runs.get_run(tmp_path, "run").status == "lost"
    args = ("train", "--resume", "run", "--detach", "--runs-dir", str(tmp_path))
    racers = [faults.puffctl(*args) for _ in range(2)]
    outputs = [(racer.wait(timeout=120), *racer.communicate()) for racer in racers]
    started = [out for out in outputs if out[0] == 0]
    refused = [out for out in outputs if out[0] != 0]
    assert len(started) == 1 and "started run" in started[0][1], outputs
    code, _, stderr = refused[0]
    assert code == 2 and len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr, stderr
    assert "run run is in use by" in stderr and " pid " in stderr, stderr
    faults.wait_for(lambda: faults.starts(run_dir) == 2, what="the resumed trainer's start event")
    held = runlock.holder(run_dir)
    assert held["role"] == "trainer" and held["pid"] == faults.status(run_dir)["pid"]
    trainer = json.loads((run_dir / "launch.json").read_text())["pid"]
    assert held["pid"] == trainer and json.loads((run_dir / "launch.json").read_text())["resumes"] == 1

    direct = faults.run_trainer(run_dir / "config.yaml", run_dir, "--resume")  # bypassing puffctl
    assert direct.returncode == 2 and f"in use by trainer pid {trainer}" in direct.stderr
    removed = subprocess.run([sys.executable, "-m", "puffctl", "runs", "rm", "run", "--yes", "--runs-dir", str(tmp_path)],
                             cwd=faults.ROOT, env=faults.ENV, capture_output=True, text=True, timeout=120)
    assert removed.returncode == 2 and f"in use by trainer pid {trainer}" in removed.stderr
    assert (run_dir / "events.jsonl").is_file() and runs.get_run(tmp_path, "run").status == "running"

    os.kill(trainer, signal.SIGKILL)
    faults.wait_for(lambda: runlock.holder(run_dir) is None, what="the OS to drop the dead trainer's lock")
    assert runs.get_run(tmp_path, "run").status == "lost"
    runs.remove_run(tmp_path, "run")
    assert not run_dir.exists()


def test_runstore_a_refusal_names_a_holder_that_has_not_yet_written_its_record(tmp_path):
    """The gap between a holder's flock and its record: the refused process waits for the pid."""
    fd = os.open(tmp_path / runlock.LOCK_FILE, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    writer = threading.Timer(0.2, lambda: runlock.RunLock(tmp_path, fd).record("launcher"))
    writer.start()
    try:
        with pytest.raises(runlock.RunLocked, match=rf"in use by launcher pid {os.getpid()} on "):
            runlock.acquire(tmp_path, "trainer")
        os.ftruncate(fd, 0)
        later = threading.Timer(0.2, lambda: runlock.RunLock(tmp_path, fd).record("trainer"))
        later.start()
        assert runlock.holder(tmp_path)["pid"] == os.getpid(), "a reader (resume's check, runs list) waits too"
        later.join()
    finally:
        writer.join()
        os.close(fd)


def test_runstore_damaged_checkpoints_fall_back_to_the_newest_intact_one(tmp_path):
    config, run_dir = killed_run(tmp_path)
    recorded = [event for event in faults.read_events(run_dir) if event["type"] == "checkpoint"]
    for event in recorded:  # each checkpoint event and sidecar records the file's size and sha256
        path = run_dir / event["path"]
        if path.exists():
            assert checkpoint.sha256_of(path) == (event["size"], event["sha256"])
            assert json.loads(checkpoint.sidecar_of(path).read_text())["sha256"] == event["sha256"]
    files = checkpoint.all_checkpoints(run_dir)
    flipped = bytearray(files[-1].read_bytes())
    flipped[len(flipped) // 2] ^= 0xFF
    files[-1].write_bytes(bytes(flipped))
    assert "sha256 differs" in checkpoint.damage(files[-1])
    newest, second, oldest = files[-1], files[-2], files[-3]
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # truncated, sidecar disagrees
    second.write_bytes(b"garbage")
    checkpoint.sidecar_of(second).unlink()  # no sidecar (an older run's): only loading finds it bad
    done = faults.run_trainer(config, run_dir, "--resume")
    assert done.returncode == 0, done.stderr
    events = faults.read_events(run_dir)
    warnings = [event["text"] for event in events if event["type"] == "message" and event["level"] == "warning"]
    assert any(newest.name in text and "truncated" in text and oldest.name in text for text in warnings), warnings
    assert any(second.name in text and "does not load" in text for text in warnings), warnings
    start = [event for event in events if event["type"] == "start"][-1]
    assert start["epoch"] == int(oldest.stem.split("_")[1])
    assert events[-1]["status"] == "completed"


def test_runstore_no_intact_checkpoint_is_one_line_exit_2_and_touches_nothing(tmp_path):
    config, run_dir = killed_run(tmp_path)
    for path in checkpoint.all_checkpoints(run_dir):
        path.write_bytes(path.read_bytes()[:100])
    launch = {"profile": "", "created": 1.0}
    (run_dir / "launch.json").write_text(json.dumps(launch))
    before = {name: (run_dir / name).read_bytes() for name in ("status.json", "events.jsonl", "config.yaml")}
    assert json.loads(before["status.json"])["epoch"] >= 3
    done = faults.run_trainer(config, run_dir, "--resume")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "no intact checkpoint" in done.stderr and "truncated" in done.stderr
    via_cli = subprocess.run([sys.executable, "-m", "puffctl", "train", "--resume", "run", "--runs-dir", str(tmp_path)],
                             cwd=faults.ROOT, env=faults.ENV, capture_output=True, text=True, timeout=120)
    assert via_cli.returncode == 2 and "no intact checkpoint" in via_cli.stderr, via_cli.stderr
    assert len(via_cli.stderr.strip().splitlines()) == 1
    assert {name: (run_dir / name).read_bytes() for name in before} == before


def test_runstore_a_failed_start_keeps_the_progress_status_json_had(tmp_path):
    config, run_dir = killed_run(tmp_path)
    before = faults.status(run_dir)
    broken = faults.write_config(tmp_path, {"train": {"keep_checkpoints": 3},
                                            "env": {"name": "gym:CartPole-v1", "kwargs": {"no_such_arg": 1}}},
                                 name="broken.yaml")
    (run_dir / "config.yaml").write_text(broken.read_text())  # the env now fails to build on resume
    done = faults.run_trainer(broken, run_dir, "--resume")
    assert done.returncode != 0
    after = faults.status(run_dir)
    assert after["status"] == "failed" and after["reason"]
    assert (after["epoch"], after["agent_steps"]) == (before["epoch"], before["agent_steps"])


def test_runstore_truncated_middle_event_line_is_skipped_with_a_warning(tmp_path):
    config, run_dir = killed_run(tmp_path)
    events = run_dir / "events.jsonl"
    with events.open("ab") as handle:  # a writer killed mid-line
        handle.write(b'{"type":"progress","epoch":4,"agent_st')
    done = faults.run_trainer(config, run_dir, "--resume")
    assert done.returncode == 0, done.stderr
    lines = events.read_text().splitlines()
    damaged = next(number for number, line in enumerate(lines, 1) if line.endswith('"agent_st'))
    assert damaged < len(lines)  # now a middle line
    tail = Tail(events)
    read = tail.finish()
    assert tail.damaged == [damaged] and read[-1]["status"] == "completed"
    run = runs.get_run(tmp_path, "run")
    assert run.status == "completed" and run.state.damaged_lines == [damaged]
    shown = subprocess.run([sys.executable, "-m", "puffctl", "runs", "show", "run", "--runs-dir", str(tmp_path)],
                           cwd=faults.ROOT, env=faults.ENV, capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0 and f"line(s) {damaged} are damaged" in shown.stdout
    state = RunState()
    state.apply({"type": "progress", "epoch": "not a number", "time": 1.0})  # malformed, not fatal
    assert state.message == ("warning", "ignored a malformed progress event")


def disk_full_then_resume(tmp_path: Path, limit_of, overrides: dict) -> tuple[Path, Path, dict, dict]:
    """A killed run resumed with file sizes capped at `limit_of(run_dir)` bytes; returns
    (config, run_dir, the capped trainer's final events/status, checkpoint bytes before)."""
    config, run_dir = killed_run(tmp_path)
    kept = {path.name: path.read_bytes() for path in checkpoint.all_checkpoints(run_dir)}
    capped_config = faults.write_config(tmp_path, {"train": {"keep_checkpoints": 3, **overrides}}, name="capped.yaml")
    capped = faults.run_trainer(capped_config, run_dir, "--resume", limit=limit_of(run_dir))
    assert capped.returncode == 1, capped.stderr
    return config, run_dir, faults.status(run_dir), kept


@pytest.mark.parametrize("where", ["checkpoint", "events"])
def test_runstore_disk_full_fails_the_run_with_the_reason_and_resume_completes_it(tmp_path, where):
    if where == "checkpoint":  # files stop growing below a checkpoint's size
        limit_of = lambda run_dir: checkpoint.all_checkpoints(run_dir)[-1].stat().st_size // 2  # noqa: E731
        overrides = {}
    else:  # events.jsonl fills up a few events on; no checkpoint is due before that
        limit_of = lambda run_dir: (run_dir / "events.jsonl").stat().st_size + 3000  # noqa: E731
        overrides = {"checkpoint_interval": 0}
    config, run_dir, status, kept = disk_full_then_resume(tmp_path, limit_of, overrides)
    assert status["status"] == "failed"
    assert ("checkpoint epoch_" if where == "checkpoint" else "events.jsonl") in status["reason"]
    assert "File too large" in status["reason"]
    if where == "checkpoint":
        end = faults.read_events(run_dir)[-1]
        assert end["type"] == "end" and end["status"] == "failed" and end["reason"] == status["reason"]
    for name, data in kept.items():  # the earlier checkpoints are intact (pruning waits for a good save)
        assert (run_dir / "checkpoints" / name).read_bytes() == data
    assert not [path for path in (run_dir / "checkpoints").iterdir() if ".tmp." in path.name]
    done = faults.run_trainer(config, run_dir, "--resume")
    assert done.returncode == 0, done.stderr
    assert faults.read_events(run_dir)[-1]["status"] == "completed"
    assert runs.get_run(run_dir.parent, run_dir.name).status == "completed"
