"""The executor protocol: how the batch engine starts, follows, stops and re-adopts a cell.

The engine knows cells, slots and events; an executor knows where a process runs. A cell
is an ordinary run directory prepared on this machine (config.yaml, launch.json); the
executor runs `python -m trainer` on it somewhere and makes that directory's files current
here by the time `collect` returns. Everything the engine must remember about a started
cell is its `Handle`, a JSON object persisted in the batch state, so a later orchestrator
(after a crash, on `ablate resume`) can re-adopt the process instead of starting a second.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

#: A started cell as the executor needs to find it again: JSON-safe, with an "executor" key.
Handle = dict


@dataclass(frozen=True)
class Job:
    """One start of one cell: its id, its prepared run directory, the slot it got, and
    whether to continue its run from the latest checkpoint (`--resume`) or start fresh."""

    cell_id: str
    run_dir: Path
    slot: str
    resume: bool = False


@dataclass(frozen=True)
class Exit:
    """A cell's process has gone: its exit code when the executor knows it (a child it
    started), None when it does not (a re-adopted process, a lost container)."""

    returncode: int | None
    detail: str = ""


class Executor(ABC):
    """Runs cells somewhere. Implementations must be safe to call from one thread."""

    #: The name stored in every handle this executor makes.
    kind: str = ""

    @abstractmethod
    def slots(self) -> list[str]:
        """The places a cell can run at once, by name (e.g. "local:0", "box1/gpu3")."""

    @abstractmethod
    def start(self, job: Job) -> Handle:
        """Start the trainer on `job.run_dir` in `job.slot`; return the handle to persist."""

    @abstractmethod
    def poll(self, handle: Handle) -> Exit | None:
        """None while the cell's process runs; its Exit once it has gone."""

    @abstractmethod
    def read_events(self, handle: Handle, offset: int, *, final: bool = False) -> tuple[list[dict], int]:
        """The complete events in the cell's events.jsonl from byte `offset`, and the offset
        to read on from. `final` (the process has gone): a last line without a newline counts."""

    @abstractmethod
    def stop(self, handle: Handle, *, force: bool = False) -> None:
        """Ask the cell to checkpoint and stop (it ends `interrupted`); `force` kills it."""

    @abstractmethod
    def adopt(self, handle: Handle) -> bool:
        """Take over a cell started by an earlier orchestrator: True if its process still
        runs (the engine then follows it like its own), False if it has gone."""

    def running(self, run_dir: Path) -> Handle | None:
        """The handle of a process already running the cell in `run_dir` that the batch state
        does not know of (its orchestrator died between starting it and saving the handle),
        or None. The engine adopts it instead of starting a second one."""
        return None

    def collect(self, handle: Handle, run_dir: Path) -> None:
        """Bring the finished cell's run directory to `run_dir` (nothing to do locally)."""

    def close(self) -> None:
        """Release connections; running cells keep running."""
