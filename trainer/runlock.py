"""One owner per run directory: an advisory lock on RUN_DIR/run.lock (flock), without torch.

Whoever writes a run directory (the trainer, a launcher about to start one, `runs rm`, a batch
engine re-adopting a cell) holds the lock first; a second one gets `RunLocked`, whose message
names the holder. The lock belongs to the open file, so the OS drops it when its last holder
dies, however it dies: a stale lock never blocks. The holder's pid, host and role are written
into the lock file for the message and for `holder()`.

    with runlock.acquire(run_dir, "trainer"):      # RunLocked if someone else holds it
        ...
    runlock.holder(run_dir)                        # None, or {"pid", "host", "role", "since"}

Handover from a launcher to the process it starts: the launcher acquires, passes
`lock.fileno()` to the child (`subprocess.Popen(pass_fds=...)`), the child calls `adopt(fd,
run_dir, role)`, and the launcher closes its copy; both refer to one open file, so the lock is
never free in between. Details and the tests that hold this: docs/reliability.md.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

LOCK_FILE = "run.lock"
#: How long an acquire waits out readers' brief shared probes (never a real holder).
PROBE_WAIT = 1.0
#: Seconds a refused process waits for a new holder to write its record.
RECORD_WAIT = 1.0


class RunLocked(Exception):
    """The run directory is held by another process; `holder` says which (may be {})."""

    def __init__(self, run_dir: Path, holder: dict, message: str | None = None) -> None:
        self.run_dir, self.holder = Path(run_dir), holder
        super().__init__(message or f"run {self.run_dir.name} is in use by {describe(holder)}")


def describe(holder: dict) -> str:
    """'trainer pid 123 on box1' from a holder record (what is known of it)."""
    if not holder.get("pid"):
        return "another process"
    return f"{holder.get('role') or 'a process'} pid {holder['pid']} on {holder.get('host') or 'an unknown host'}"


class RunLock:
    """A held run-directory lock; released by `release()`, `with`, or the process's death."""

    def __init__(self, run_dir: Path, fd: int) -> None:
        self.run_dir, self.fd = Path(run_dir), fd

    def fileno(self) -> int:
        return self.fd

    def record(self, role: str) -> None:
        """Write this process as the holder (pid, host, role, since) into the lock file."""
        info = {"pid": os.getpid(), "host": socket.gethostname(), "role": role, "since": time.time()}
        data = json.dumps(info).encode()
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)

    def release(self) -> None:
        """Give the lock up (closing the file releases it)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read(fd: int) -> dict:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _recorded_holder(fd: int) -> dict:
    """The holder's record, waiting up to RECORD_WAIT for one that has just taken the lock and
    not yet written it (so a refusal can name the pid)."""
    deadline = time.monotonic() + RECORD_WAIT
    while not (info := _read(fd)).get("pid") and time.monotonic() < deadline:
        time.sleep(0.01)
    return info


def _lock(fd: int, run_dir: Path) -> None:
    """Take the exclusive lock on `fd`, waiting out shared probes; RunLocked if a holder has it."""
    deadline = time.monotonic() + PROBE_WAIT
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        try:  # only readers' shared probes in the way, or an exclusive holder?
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLocked(run_dir, _recorded_holder(fd)) from None
        fcntl.flock(fd, fcntl.LOCK_UN)
        if time.monotonic() > deadline:
            raise RunLocked(run_dir, {})
        time.sleep(0.005)


def _check_same_file(fd: int, run_dir: Path) -> None:
    """The lock file we hold is still the run's (not one `runs rm` deleted while we waited)."""
    try:
        same = os.stat(Path(run_dir) / LOCK_FILE).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        same = False
    if not same:
        raise RunLocked(run_dir, {}, f"run {Path(run_dir).name} was removed while it was being locked")


def acquire(run_dir: Path, role: str) -> RunLock:
    """Take the run directory's lock (the directory must exist) and record this process as
    its holder. Raises RunLocked naming the holder if another process has it."""
    fd = os.open(Path(run_dir) / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        _lock(fd, run_dir)
        _check_same_file(fd, run_dir)
        lock = RunLock(run_dir, fd)
        lock.record(role)
    except BaseException:
        os.close(fd)
        raise
    return lock


def adopt(fd: int, run_dir: Path, role: str) -> RunLock:
    """Take over the lock a launcher passed down as `fd` (same open file, so no gap), or take
    it here if that fd does not hold it. Raises RunLocked if another process holds it."""
    _check_same_file(fd, run_dir)
    os.set_inheritable(fd, False)
    _lock(fd, run_dir)
    lock = RunLock(run_dir, fd)
    lock.record(role)
    return lock


def holder(run_dir: Path) -> dict | None:
    """Who holds the run directory's lock ({"pid", "host", "role", "since"}; {} if a new holder
    has not written it within RECORD_WAIT), or None if nobody does."""
    try:
        fd = os.open(Path(run_dir) / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        info = _recorded_holder(fd)
        os.close(fd)
        return info
    os.close(fd)
    return None
