"""The local executor: each cell is a `python -m trainer` subprocess on this machine.

A handle is {"executor": "local", "host", "pid", "start_time"}: the pid with the process's
start time (from /proc), so a recycled pid is never mistaken for the cell's trainer.
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


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22), or None."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] == "Z":
        return None
    return int(fields[19])


def owner_alive(run_dir: Path, handle: Handle) -> bool:
    """True if the trainer the handle names still runs on this host.

    The one liveness check of local cells (pid + start time, like the run store's);
    `run_dir` is here for the run-directory lock that will replace it.
    """
    if handle.get("host") != socket.gethostname():
        return False
    pid = handle.get("pid")
    return isinstance(pid, int) and pid > 0 and start_time(pid) == handle.get("start_time")


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
            "start_time": start_time(process.pid),
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
        if owner_alive(Path(handle["run_dir"]), handle):
            return None
        return Exit(None, "the process has gone")

    def read_events(self, handle: Handle, offset: int, *, final: bool = False) -> tuple[list[dict], int]:
        """From the run directory's events.jsonl, which is on this machine."""
        return read_from(Path(handle["run_dir"]) / "events.jsonl", offset, final=final)

    def stop(self, handle: Handle, *, force: bool = False) -> None:
        """SIGINT (checkpoint and stop) to the trainer, or SIGKILL to its whole session."""
        if not owner_alive(Path(handle["run_dir"]), handle):
            return
        try:
            if force:
                os.killpg(handle["pid"], signal.SIGKILL)
            else:
                os.kill(handle["pid"], signal.SIGINT)
        except ProcessLookupError:
            pass

    def adopt(self, handle: Handle) -> bool:
        """Still running here under the same pid and start time."""
        return handle.get("executor") == self.kind and owner_alive(Path(handle.get("run_dir", "")), handle)
