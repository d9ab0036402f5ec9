"""The local executor: each cell is a `python -m trainer` subprocess on this machine.

A handle is {"executor": "local", "host", "pid", "run_dir"}; whether the cell still runs is
whether a process holds its run directory's lock (trainer/runlock.py), never a pid check.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

from puffctl import launch
from puffctl.events import read_from
from puffctl.executors.base import Executor, Exit, Handle, Job


def owner(run_dir: Path) -> dict | None:
    """The process on this host that holds the cell's run-directory lock (trainer/runlock.py),
    or None: the one liveness check of local cells. A lock dies with its holder, so a recycled
    pid or a trainer started by an orchestrator that was killed before it saved the handle
    can never be mistaken."""
    from trainer import runlock

    held = runlock.holder(run_dir)
    if held is None or held.get("host", socket.gethostname()) != socket.gethostname():
        return None
    return held


class LocalExecutor(Executor):
    """Cells as subprocesses in their own sessions, `count` at a time."""

    kind = "local"

    def __init__(self, count: int) -> None:
        self.count = count
        self.children: dict[int, subprocess.Popen] = {}

    def slots(self) -> list[str]:
        """local:0 .. local:N-1."""
        return [f"local:{index}" for index in range(self.count)]

    def start(self, job: Job) -> Handle:
        """launch.start on the run directory (the same start as `puffctl train`)."""
        process = launch.start(job.run_dir, resume=job.resume)
        self.children[process.pid] = process
        return {
            "executor": self.kind,
            "host": socket.gethostname(),
            "pid": process.pid,
            "run_dir": str(job.run_dir),
        }

    def poll(self, handle: Handle) -> Exit | None:
        """A child's exit code, or for an adopted process whether it still runs."""
        child = self.children.get(handle["pid"])
        if child is not None:
            code = child.poll()
            if code is None:
                return None
            del self.children[handle["pid"]]
            return Exit(code, f"exit code {code}" if code >= 0 else f"killed by {signal.Signals(-code).name}")
        if owner(Path(handle["run_dir"])) is not None:
            return None
        return Exit(None, "the process has gone")

    def read_events(self, handle: Handle, offset: int, *, final: bool = False) -> tuple[list[dict], int]:
        """From the run directory's events.jsonl, which is on this machine."""
        return read_from(Path(handle["run_dir"]) / "events.jsonl", offset, final=final)

    def stop(self, handle: Handle, *, force: bool = False) -> None:
        """SIGINT (checkpoint and stop) to the trainer, or SIGKILL to its whole session."""
        held = owner(Path(handle["run_dir"]))
        if held is None:
            return
        pid = held.get("pid") if held.get("role") == "trainer" else handle["pid"]
        try:
            if force:
                os.killpg(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGINT)
        except ProcessLookupError:
            pass

    def running(self, run_dir: Path) -> Handle | None:
        """The process on this host that holds `run_dir`'s lock, as a handle."""
        held = owner(run_dir)
        if not held or not held.get("pid"):
            return None
        return {"executor": self.kind, "host": socket.gethostname(), "pid": held["pid"], "run_dir": str(run_dir)}

    def adopt(self, handle: Handle) -> bool:
        """Still running here: a process on this host holds the cell's run directory."""
        return handle.get("executor") == self.kind and owner(Path(handle.get("run_dir", ""))) is not None
