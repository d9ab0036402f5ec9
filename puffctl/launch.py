"""Starting a local training run: the run directory, provenance, the trainer subprocess, Ctrl-C.

The trainer runs as `python -m trainer` in its own session, so a terminal's Ctrl-C reaches
only the CLI, which forwards it: the first asks the trainer to checkpoint and stop, the second
stops it at once (and a trainer that still does not exit is killed). The CLI follows the run's
events.jsonl, never the trainer's printed output.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from puffctl import runs
from puffctl.errors import PuffctlError
from puffctl.events import RunState, Tail
from trainer import distributed, provenance

#: Seconds the trainer gets after the second Ctrl-C before it is killed.
KILL_GRACE = 3.0


def code_root() -> Path:
    """The directory that holds the `trainer` package this CLI would start (found without importing it)."""
    spec = importlib.util.find_spec("trainer")
    if spec is None or not spec.submodule_search_locations:
        raise PuffctlError("the trainer package is not installed next to puffctl", exit_code=1)
    return Path(next(iter(spec.submodule_search_locations))).resolve().parent


def prepare(root: Path, base_name: str, config: dict, launch: dict, *, exact: bool = False,
            source: provenance.Source | None = None) -> Path:
    """Create a fresh run directory with config.yaml, launch.json and the code's provenance
    (source.json, source.patch: trainer/provenance.py; `source` when the caller has it already).

    The run id is `base_name` itself when `exact`, else `<base_name>-<UTC time>`.
    """
    path = runs.create_run_dir(root, base_name if exact else runs.slug(base_name), exact=exact)
    try:
        (path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        if source is not None:
            provenance.write(path, source)
        else:
            provenance.record(path, code_root())
        runs.write_json(path / runs.LAUNCH_FILE, {**launch, "created": time.time(), "host": socket.gethostname()})
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise
    return path


def check_resumable(run: runs.Run) -> None:
    """A one-line error unless `run` can be resumed: not completed, not held by a process,
    has an intact checkpoint (checked against its sidecar, without torch)."""
    from trainer import checkpoint, runlock

    if run.status == "completed":
        raise PuffctlError(f"run {run.run_id!r} already completed; nothing to resume")
    held = runlock.holder(run.path)
    if held is not None:
        raise PuffctlError(str(runlock.RunLocked(run.path, held)))
    if not (run.path / "config.yaml").is_file():
        raise PuffctlError(f"run {run.run_id!r} has no config.yaml to resume from")
    try:
        checkpoint.newest_intact(run.path)
    except checkpoint.NoIntactCheckpoint as error:
        raise PuffctlError(str(error)) from None


def end_with_newline(path: Path) -> None:
    """Terminate a truncated last line (a killed writer's) so appended events start on their own line."""
    try:
        with path.open("rb+") as handle:
            handle.seek(0, os.SEEK_END)
            if handle.tell() == 0:
                return
            handle.seek(-1, os.SEEK_END)
            if handle.read(1) != b"\n":
                handle.write(b"\n")
    except FileNotFoundError:
        pass


def start(path: Path, *, resume: bool = False) -> subprocess.Popen:
    """Start `python -m trainer` on run directory `path` in its own session; record its pid.

    The run's lock is taken first (a one-line error naming the holder if another process has
    it) and handed to the trainer as an inherited descriptor, so it is never free in between.
    """
    from trainer import runlock

    try:
        lock = runlock.acquire(path, "puffctl train")
    except runlock.RunLocked as error:
        raise PuffctlError(str(error)) from None
    with lock:
        return _start_locked(path, lock.fileno(), resume)


def _start_locked(path: Path, lock_fd: int, resume: bool) -> subprocess.Popen:
    environment = dict(os.environ)
    root = str(code_root())
    environment["PYTHONPATH"] = os.pathsep.join(p for p in (root, environment.get("PYTHONPATH")) if p)
    environment["PYTHONUNBUFFERED"] = "1"
    command = distributed.command(world_size(path), ["--config", str(path / "config.yaml"), "--run-dir", str(path),
                                                     "--lock-fd", str(lock_fd)])
    if resume:
        command.append("--resume")
        end_with_newline(path / "events.jsonl")
    with (path / "stdout.log").open("ab") as log:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=environment,
            pass_fds=(lock_fd,),
        )
    launch = runs.read_json(path / runs.LAUNCH_FILE)
    launch.update(pid=process.pid, host=socket.gethostname(), command=command)
    if resume:
        launch["resumes"] = int(launch.get("resumes") or 0) + 1
    runs.write_json(path / runs.LAUNCH_FILE, launch)
    return process


def world_size(path: Path) -> int:
    """The ranks run `path` trains on (its config's train.world_size)."""
    config = yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8")) or {}
    return int((config.get("train") or {}).get("world_size") or 1)


def set_world_size(path: Path, ranks: int) -> None:
    """Resume run `path` on `ranks` ranks: its config.yaml's train.world_size (docs/scale.md: what changes)."""
    if ranks < 1:
        raise PuffctlError(f"--nproc {ranks} must be >= 1")
    config_path = path / "config.yaml"
    config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    config["train"]["world_size"] = ranks
    config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")


@dataclass
class Outcome:
    """How a watched run ended: the CLI's exit code, the final state, and the trainer's own code."""

    exit_code: int
    state: RunState
    returncode: int | None
    interrupts: int = 0
    notes: list[str] = field(default_factory=list)


def last_line(path: Path) -> str:
    """The last non-empty line of a text file (the trainer's final words in stdout.log)."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1].strip() if lines else ""


def settle(path: Path, state: RunState, returncode: int, interrupted: bool, started: bool) -> None:
    """After the trainer exited: if it left no final status (killed, crashed at start), record one.

    A trainer that refused the run (exit 2, no start event) leaves an existing status.json as
    it was: a refused resume changes nothing.
    """
    status_path = path / "status.json"
    status = runs.read_json(status_path)
    if state.finished or status.get("status") in ("completed", "failed", "interrupted"):
        return
    if returncode == 2 and not started and status:
        return
    if interrupted:
        new, reason = "interrupted", "stopped by Ctrl-C before the trainer could checkpoint"
    elif returncode < 0:
        new, reason = "failed", f"the trainer was killed by {signal.Signals(-returncode).name}"
    else:
        new, reason = "failed", last_line(path / "stdout.log") or f"the trainer exited with code {returncode}"
    status.update(run_id=path.name, status=new, reason=reason, pid=None, updated=time.time())
    runs.write_json(status_path, status)
    state.status, state.reason = new, reason


def watch(
    process: subprocess.Popen,
    path: Path,
    show: Callable[[RunState, dict], None],
    *,
    state: RunState | None = None,
    offset: int = 0,
    poll: float = 0.1,
) -> Outcome:
    """Follow the run's events into `show` until the trainer exits; forward Ctrl-C and SIGTERM.

    `state`/`offset`: what was already folded (a resumed run's history) and where to read on.
    """
    state = state or RunState(run_id=path.name)
    tail = Tail(path / "events.jsonl", offset)
    interrupts = 0
    started = False
    kill_at: float | None = None
    notices: list[str] = []

    def forward(signum: int, _frame: object) -> None:
        nonlocal interrupts, kill_at
        interrupts += 1
        try:
            os.kill(process.pid, signal.SIGINT if signum == signal.SIGINT else signal.SIGTERM)
        except ProcessLookupError:
            return
        if interrupts == 1:
            notices.append("stopping: the trainer checkpoints and exits (Ctrl-C again to stop at once)")
        else:
            kill_at = time.monotonic() + KILL_GRACE
            notices.append("stopping at once")

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while True:
            while notices:
                state.message = ("warning", notices.pop(0))
                show(state, {"type": "message", "level": "warning", "text": state.message[1]})
            exited = process.poll() is not None
            events = tail.finish() if exited else tail.read()
            for event in events:
                started = started or event.get("type") == "start"
                state.apply(event)
                show(state, event)
            if tail.damaged:  # rare: number the lines from the file's start, as `runs show` does
                before = lines_before(tail.path, offset)
                state.note_damaged([before + line for line in tail.damaged])
                tail.damaged = []
                show(state, {"type": "message", "level": "warning", "text": state.message[1]})
            if exited:
                break
            if kill_at is not None and time.monotonic() > kill_at:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                kill_at = None
            if not events:
                time.sleep(poll)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    returncode = process.wait()
    settle(path, state, returncode, interrupts > 0, started)
    if returncode == 2 and not state.progress_count:
        code = 2
    else:
        code = {"completed": 0, "interrupted": 130}.get(state.status, 1)
    return Outcome(exit_code=code, state=state, returncode=returncode, interrupts=interrupts)


def lines_before(path: Path, offset: int) -> int:
    """How many lines end in the first `offset` bytes of a file."""
    with path.open("rb") as handle:
        return handle.read(offset).count(b"\n")


def history(path: Path) -> tuple[RunState, int]:
    """A run's state from its events so far, and the offset where new events will start."""
    tail = Tail(path / "events.jsonl")
    state = RunState(run_id=path.name)
    for event in tail.read():
        state.apply(event)
    state.note_damaged(tail.damaged)
    return state, tail.offset
