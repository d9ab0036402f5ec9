"""The local run store: where runs live, their ids, and what state each one is in.

A run is a directory `<runs root>/<run_id>/` (docs/events.md). Its truth is events.jsonl;
its lock (trainer/runlock.py) says whether a process owns it now. A run whose status says
`running` but whose lock nobody holds (killed, machine rebooted) is reported as `lost`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from puffctl.errors import PuffctlError
from puffctl.events import RunState, Tail, fold
from trainer import runlock

RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
#: The file the launcher writes next to the trainer's own: what was asked for, by whom.
LAUNCH_FILE = "launch.json"
#: A finished run's folded events, keyed by the size and mtime of its events.jsonl (`runs list` speed).
SUMMARY_FILE = ".summary.json"
STATUSES = ("running", "completed", "failed", "interrupted", "lost", "created", "unreachable")


def runs_root(option: Path | None = None) -> Path:
    """The runs root: --runs-dir, else $PUFFCTL_RUNS_DIR, else ./runs."""
    if option is not None:
        return option
    return Path(os.environ.get("PUFFCTL_RUNS_DIR") or "runs")


def check_run_id(run_id: str) -> str:
    """`run_id` if it is safe as one path component, else a PuffctlError."""
    if not RUN_ID.match(run_id) or run_id in (".", ".."):
        raise PuffctlError(
            f"invalid run id {run_id!r}: use letters, digits, '.', '_' and '-' (at most 128, not starting with '.' or '-')"
        )
    return run_id


def slug(text: str) -> str:
    """`text` reduced to run-id characters (for ids made from a profile or file name)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip(".-_")
    return cleaned[:80] or "run"


def ensure_writable(root: Path) -> Path:
    """Create the runs root if needed and check that runs can be written to it."""
    if root.exists() and not root.is_dir():
        raise PuffctlError(f"runs dir {root} is not a directory")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise PuffctlError(f"runs dir {root} cannot be created: {error.strerror or error}") from None
    if not root.is_dir():
        raise PuffctlError(f"runs dir {root} is not a directory")
    if not os.access(root, os.W_OK | os.X_OK):
        raise PuffctlError(f"runs dir {root} is not writable")
    return root


def create_run_dir(root: Path, base: str, *, exact: bool = False) -> Path:
    """Make a fresh run directory under `root`: `base` itself if `exact`, else `<base>-<UTC time>[-N]`."""
    ensure_writable(root)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    stem = check_run_id(base) if exact else check_run_id(f"{base}-{stamp}")
    for attempt in range(1 if exact else 1000):
        run_id = stem if attempt == 0 else f"{stem}-{attempt}"
        path = root / run_id
        try:
            path.mkdir()
        except FileExistsError:
            if exact:
                raise PuffctlError(f"run {run_id!r} already exists in {root}") from None
            continue
        except OSError as error:
            raise PuffctlError(f"runs dir {root} is not writable: {error.strerror or error}") from None
        return path
    raise PuffctlError(f"could not find a free run id for {stem!r} in {root}")


def run_dir(root: Path, run_id: str) -> Path:
    """The directory of an existing run, or a PuffctlError naming the id."""
    check_run_id(run_id)
    path = root / run_id
    if not path.is_dir():
        raise PuffctlError(f"no run {run_id!r} in {root}")
    return path


def read_json(path: Path) -> dict:
    """A JSON object file, or {} if it is missing or unreadable (a reader must not crash)."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def read_jsonl(path: Path) -> list[dict]:
    """The JSON objects of a JSON-lines file, skipping lines that are not one (a reader must not crash)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            found.append(value)
    return found


def write_json(path: Path, value: dict) -> None:
    """Write a JSON object atomically (temp file + rename)."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def pid_alive(pid: object) -> bool:
    """True if a process with this pid exists on this machine (and is not a zombie)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


@dataclass
class Run:
    """One run as the store sees it: its directory, its folded events, status and launch info."""

    run_id: str
    path: Path
    state: RunState
    status: str
    status_file: dict
    launch: dict
    holder: dict | None = None

    @property
    def profile(self) -> str:
        """The profile it was launched from ("" if launched some other way)."""
        return str(self.launch.get("profile") or "")

    @property
    def env_name(self) -> str:
        """The environment's name, from the start event or the launcher's record."""
        return self.state.env_name or str(self.launch.get("env") or "")

    @property
    def reason(self) -> str | None:
        """Why it failed or stopped, if known."""
        return self.state.reason or self.status_file.get("reason")

    def checkpoint_files(self) -> list[Path]:
        """The checkpoint files in its checkpoints/ directory, oldest first."""
        from trainer.checkpoint import all_checkpoints

        return all_checkpoints(self.path)


def derive_status(state: RunState, status_file: dict, launch: dict, holder: dict | None, locked_before: bool) -> str:
    """The run's status: `running` while a process holds its lock, else the end event's, else
    status.json's; a run whose owner died without an end event is `lost`.

    `holder` is runlock.holder(); `locked_before` says whether the run has a lock file at all
    (runs written before the lock existed fall back to checking the recorded pid).
    """
    if holder is not None:
        return "running"
    if state.finished:
        return state.status
    recorded = status_file.get("status")
    if recorded in ("completed", "failed", "interrupted"):
        return str(recorded)
    if isinstance(launch.get("remote"), dict) and recorded is None:
        return "running"  # on its box; `runs list` asks the box (puffctl.remote.remote_statuses)
    owner = status_file if recorded == "running" else launch
    if owner.get("pid") is None:
        return "created"
    if owner.get("host") not in (None, socket.gethostname()):
        return "running"  # another machine's run: its lock cannot be seen from here
    return "lost" if locked_before or not pid_alive(owner.get("pid")) else "running"


def load_state(path: Path) -> RunState:
    """A run's folded events; a finished run's come from its summary cache while events.jsonl is unchanged."""
    events = path / "events.jsonl"
    try:
        stat = events.stat()
    except FileNotFoundError:
        return RunState(run_id=path.name)
    key = [stat.st_size, stat.st_mtime_ns]
    cached = read_json(path / SUMMARY_FILE)
    if cached.get("key") == key and isinstance(cached.get("state"), dict):
        try:
            state = RunState(**cached["state"])
        except TypeError:  # written by another version of RunState
            pass
        else:
            state.message = tuple(state.message) if state.message else None
            return state
    tail = Tail(events)
    state = fold(tail.finish())
    state.note_damaged(tail.damaged)
    if state.finished:
        try:
            write_json(path / SUMMARY_FILE, {"key": key, "state": asdict(state)})
        except OSError:
            pass
    return state


def load_run(path: Path) -> Run:
    """Read one run directory."""
    state = load_state(path)
    status_file = read_json(path / "status.json")
    launch = read_json(path / LAUNCH_FILE)
    holder = runlock.holder(path)
    return Run(
        run_id=path.name,
        path=path,
        state=state,
        status=derive_status(state, status_file, launch, holder, (path / runlock.LOCK_FILE).exists()),
        status_file=status_file,
        launch=launch,
        holder=holder,
    )


def get_run(root: Path, run_id: str) -> Run:
    """An existing run by id (the id checked first)."""
    return load_run(run_dir(root, run_id))


def check_status(status: str) -> str:
    """`status` if it is one of STATUSES, else a one-line error."""
    if status not in STATUSES:
        raise PuffctlError(f"unknown status {status!r} (one of: {', '.join(STATUSES)})")
    return status


def list_runs(root: Path, *, status: str | None = None, profile: str | None = None) -> list[Run]:
    """Every run under `root`, newest first, optionally filtered by status and profile."""
    if status is not None:
        check_status(status)
    if not root.is_dir():
        return []
    runs = [load_run(path) for path in root.iterdir() if path.is_dir() and RUN_ID.match(path.name)]
    runs = [run for run in runs if (status is None or run.status == status) and (profile is None or run.profile == profile)]
    return sorted(runs, key=lambda run: run.state.started or run.launch.get("created") or 0.0, reverse=True)


def remove_run(root: Path, run_id: str) -> Path:
    """Delete a run directory, holding its lock meanwhile; refuses while a process holds it."""
    path = run_dir(root, run_id)
    try:
        lock = runlock.acquire(path, "puffctl runs rm")
    except runlock.RunLocked as error:
        raise PuffctlError(f"{error}; stop it first") from None
    with lock:
        shutil.rmtree(path)
    return path
