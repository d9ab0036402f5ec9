"""Fault injection for the run store: real trainers started, killed at chosen moments, raced,
starved of disk, and the event stream checked for exact continuation.

Used by tests/runstore/ (a few iterations each) and bench/faults.py (hundreds).
"""

from __future__ import annotations

import json
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from puffctl import curves

ROOT = Path(__file__).resolve().parents[2]
#: A small CartPole run: 256 agent steps an epoch, a checkpoint every epoch, progress every epoch.
CARTPOLE = {
    "env": {"name": "gym:CartPole-v1", "num_envs": 16},
    "train": {"total_timesteps": 256 * 40, "bptt_horizon": 16, "minibatch_size": 128, "checkpoint_interval": 1,
              "keep_checkpoints": 2, "cpu_threads": 1, "optimizer": "adam", "learning_rate": 0.01},
    "logger": {"progress_interval": 0},
}
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH")))),
       "COLUMNS": "500"}


def write_config(directory: Path, overrides: dict | None = None, name: str = "config.yaml") -> Path:
    """CARTPOLE with `overrides` ({section: {key: value}}) as a YAML file in `directory`."""
    config = {section: dict(values) for section, values in CARTPOLE.items()}
    for section, values in (overrides or {}).items():
        config.setdefault(section, {}).update(values)
    path = Path(directory) / name
    path.write_text(yaml.safe_dump(config))
    return path


def file_size_limit(limit: int):
    """A preexec_fn that caps every file the child writes at `limit` bytes (RLIMIT_FSIZE): a
    disk that fills up at that size. Python ignores SIGXFSZ, so the write fails with EFBIG."""
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def trainer(config: Path, run_dir: Path, *extra: str, limit: int | None = None) -> subprocess.Popen:
    """`python -m trainer` on `run_dir` (its output to run_dir/../<name>.log)."""
    log = open(Path(run_dir).parent / f"{Path(run_dir).name}.log", "ab")
    with log:
        return subprocess.Popen(
            [sys.executable, "-m", "trainer", "--config", str(config), "--run-dir", str(run_dir), *extra],
            cwd=ROOT, env=ENV, stdout=log, stderr=subprocess.STDOUT,
            preexec_fn=file_size_limit(limit) if limit else None)


def run_trainer(config: Path, run_dir: Path, *extra: str, limit: int | None = None,
                timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `python -m trainer` to its end; output captured."""
    return subprocess.run(
        [sys.executable, "-m", "trainer", "--config", str(config), "--run-dir", str(run_dir), *extra],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout,
        preexec_fn=file_size_limit(limit) if limit else None)


def puffctl(*args: str) -> subprocess.Popen:
    """`python -m puffctl ARGS` started (not waited for), output captured as text."""
    return subprocess.Popen([sys.executable, "-m", "puffctl", *args], cwd=ROOT, env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def read_events(run_dir: Path) -> list[dict]:
    """The complete events of a run (damaged lines skipped)."""
    from puffctl.events import Tail

    return Tail(Path(run_dir) / "events.jsonl").finish()


def wait_for(predicate, timeout: float = 120.0, what: str = "condition", poll: float = 0.01) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(poll)


def count(run_dir: Path, kind: str) -> int:
    """How many events of type `kind` the run's stream holds (0 without a stream)."""
    try:
        return (Path(run_dir) / "events.jsonl").read_text(errors="replace").count(f'"type":"{kind}"')
    except FileNotFoundError:
        return 0


def starts(run_dir: Path) -> int:
    """How many start events the run's stream holds."""
    return count(run_dir, "start")


def writing_checkpoint(run_dir: Path, pid: int) -> bool:
    """Process `pid` is writing a checkpoint (or its sidecar): its temporary file exists
    (a killed writer's stay until the next save prunes them, so the pid must match)."""
    try:
        return any(name.endswith(f".tmp.{pid}") for name in os.listdir(Path(run_dir) / "checkpoints"))
    except FileNotFoundError:
        return False


def newest_intact_epoch(run_dir: Path) -> int | None:
    """The epoch of the checkpoint a resume must continue from (None: there is none)."""
    from trainer import checkpoint

    try:
        path, _, _ = checkpoint.newest_intact(run_dir)
    except checkpoint.NoIntactCheckpoint:
        return None
    return int(re.search(r"epoch_(\d+)", path.name).group(1))


MOMENTS = ("startup", "training", "checkpoint")


def kill_once(config: Path, run_dir: Path, rng: random.Random, moment: str) -> dict:
    """Start (or resume) the trainer and SIGKILL it at `moment`: `startup` (any time in its first
    1.5 s: imports, lock, checkpoint load), `training` (0-3 epochs after its start event, plus
    0-0.1 s) or `checkpoint` (while a checkpoint write's temporary file exists). Returns what
    happened."""
    expected = newest_intact_epoch(run_dir)
    resume = expected is not None
    if not resume:  # killed before its first checkpoint: nothing to resume, start over
        shutil.rmtree(run_dir, ignore_errors=True)
    before, progressed = starts(run_dir), count(run_dir, "progress")
    process = trainer(config, run_dir, *(["--resume"] if resume else []))
    if moment == "startup":
        time.sleep(rng.uniform(0.0, 1.5))
    else:
        wait_for(lambda: starts(run_dir) > before or process.poll() is not None, what="the start event")
        if moment == "training":
            epochs = rng.randint(0, 3)
            wait_for(lambda: count(run_dir, "progress") >= progressed + epochs or process.poll() is not None,
                     what=f"{epochs} epochs")
            time.sleep(rng.uniform(0.0, 0.1))
        else:
            wait_for(lambda: writing_checkpoint(run_dir, process.pid) or process.poll() is not None, timeout=600,
                     what="a checkpoint write", poll=0.0005)
    in_checkpoint = writing_checkpoint(run_dir, process.pid)
    finished = process.poll() is not None
    if not finished:
        process.send_signal(signal.SIGKILL)
    code = process.wait(timeout=60)
    started = [event for event in read_events(run_dir) if event["type"] == "start"][before:]
    return {"moment": moment, "resume": resume, "expected_epoch": expected, "killed": not finished,
            "in_checkpoint_write": in_checkpoint and not finished, "returncode": code,
            "start_epoch": started[-1]["epoch"] if started else None}


def effective_progress(events: list[dict]) -> dict[int, list[dict]]:
    """Progress events by epoch as the stream means them (puffctl.curves.effective_progress: a
    resumed start at epoch E supersedes the earlier progress of epochs after E). More than one
    event under an epoch is a duplicated epoch."""
    history: dict[int, list[dict]] = {}
    for event in curves.effective_progress(events):
        history.setdefault(event["epoch"], []).append(event)
    return history


def check_stream(events: list[dict], reference: dict[int, dict], epochs: int) -> dict:
    """Compare a faulted run's stream with an uninterrupted run's losses per epoch."""
    history = effective_progress(events)
    lost = [epoch for epoch in range(1, epochs + 1) if epoch not in history]
    duplicated = [epoch for epoch, found in history.items() if len(found) > 1]
    differing = [epoch for epoch, found in history.items() if found[0]["losses"] != reference.get(epoch)]
    rerun = sum(event["type"] == "progress" for event in events) - sum(map(len, history.values()))
    return {"lost": lost, "duplicated": duplicated, "differing": differing, "rerun_progress_events": rerun}


def losses_by_epoch(events: list[dict]) -> dict[int, dict]:
    return {event["epoch"]: event["losses"] for event in events if event["type"] == "progress"}


def status(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "status.json").read_text())
