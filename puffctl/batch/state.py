"""A batch on disk: its directory, cells, state file (atomic writes) and orchestrator lock.

`<ablations root>/<name>/` holds `spec.yaml` (the spec as given), `cells.json` (every cell:
group, variant, seed, overrides), `configs.json` (each cell's resolved config, read only to
start cells, so `status` and `report` stay fast on big batches), `state.json` (each cell's status, attempts and
executor handle, rewritten atomically on every change), `.lock` (held by the one
orchestrator running the batch) and `runs/<cell id>/`, each an ordinary run directory.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from puffctl import runs
from puffctl.batch.spec import Cell, Spec, parse
from puffctl.errors import PuffctlError

#: pending: to run; running: a process owns it; completed/failed: results (failed = the run
#: diverged); crashed: out of retries; interrupted: stopped on purpose, resumable.
STATUSES = ("pending", "running", "completed", "failed", "crashed", "interrupted")
FINISHED = ("completed", "failed")
STATE_FILE, CELLS_FILE, CONFIGS_FILE, SPEC_FILE, LOCK_FILE = "state.json", "cells.json", "configs.json", "spec.yaml", ".lock"


def ablations_root(option: Path | None = None) -> Path:
    """The ablations root: --dir, else $PUFFCTL_ABLATIONS_DIR, else ./ablations."""
    if option is not None:
        return option
    return Path(os.environ.get("PUFFCTL_ABLATIONS_DIR") or "ablations")


@dataclass
class CellState:
    """What the engine knows about one cell beyond its run directory."""

    status: str = "pending"
    starts: int = 0
    crashes: int = 0
    handle: dict | None = None
    slot: str | None = None
    reason: str | None = None
    started: float | None = None
    ended: float | None = None
    steps: int = 0
    metric: float | None = None

    @classmethod
    def from_json(cls, data: dict) -> CellState:
        """Tolerates fields written by another version."""
        known = {item.name for item in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})


@dataclass
class Batch:
    """A batch's directory, spec, cells and state."""

    path: Path
    spec: Spec
    cells: list[Cell]
    state: dict[str, CellState] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The batch name (its directory's)."""
        return self.path.name

    @property
    def runs_root(self) -> Path:
        """Where the cells' run directories live."""
        return self.path / "runs"

    def run_dir(self, cell_id: str) -> Path:
        """A cell's run directory."""
        return self.runs_root / cell_id

    def save(self) -> None:
        """Write state.json atomically (a reader never sees half a file)."""
        runs.write_json(self.path / STATE_FILE, {"updated": time.time(), "cells": {key: asdict(value) for key, value in self.state.items()}})

    def add(self, cells: list[Cell]) -> list[Cell]:
        """Append cells (a sweep's next trials) and write cells.json; returns the ones that were new."""
        new: list[Cell] = []
        known = {cell.cell_id for cell in self.cells}
        for cell in cells:
            if cell.cell_id not in known:
                known.add(cell.cell_id)
                new.append(cell)
        self.cells.extend(new)
        self.state.update({cell.cell_id: CellState() for cell in new})
        write_cells(self.path, self.cells)
        self.save()
        return new

    def counts(self) -> dict[str, int]:
        """How many cells are in each status."""
        totals = dict.fromkeys(STATUSES, 0)
        for cell in self.cells:
            totals[self.state[cell.cell_id].status] += 1
        return totals


def create(root: Path, spec: Spec, cells: list[Cell], spec_text: str) -> Batch:
    """A new batch directory; refuses if one of that name exists."""
    runs.ensure_writable(root)
    path = root / spec.name
    try:
        path.mkdir()
    except FileExistsError:
        raise PuffctlError(f"batch {spec.name!r} already exists in {root}: `puffctl ablate resume {spec.name}` "
                           "continues it; rename the spec's name for a new one") from None
    (path / SPEC_FILE).write_text(spec_text, encoding="utf-8")
    (path / "runs").mkdir()
    batch = Batch(path, spec, cells, {cell.cell_id: CellState() for cell in cells})
    write_cells(path, cells)
    batch.save()
    return batch


def write_cells(path: Path, cells: list[Cell]) -> None:
    """Write a batch's cells.json and configs.json atomically (configs first: cells.json marks a batch)."""
    runs.write_json(path / CONFIGS_FILE, {cell.cell_id: cell.config for cell in cells})
    runs.write_json(path / CELLS_FILE, {"cells": [cell.to_json() for cell in cells]})


def list_batches(root: Path) -> list[str]:
    """The names of the batches under `root`."""
    if not root.is_dir():
        return []
    return sorted(path.name for path in root.iterdir() if (path / CELLS_FILE).is_file())


def read_cells(path: Path, *, configs: bool = True) -> list[Cell]:
    """The batch's cells from cells.json, with their resolved configs from configs.json
    unless `configs=False`."""
    resolved = runs.read_json(path / CONFIGS_FILE) if configs else {}
    listed = json.loads((path / CELLS_FILE).read_text(encoding="utf-8"))["cells"]
    # a batch written before configs.json existed kept each config in cells.json
    return [Cell.from_json(item, resolved.get(item["id"]) or (item.get("config") if configs else None)) for item in listed]


def open_batch(root: Path, name: str, *, configs: bool = True) -> Batch:
    """An existing batch by name: spec, cells and state as last written; `configs=False`
    skips the cells' configs (views that do not start cells: status, report, ls)."""
    runs.check_run_id(name)
    path = root / name
    if not (path / CELLS_FILE).is_file():
        known = list_batches(root)
        raise PuffctlError(f"no batch {name!r} in {root}" + (f" (batches: {', '.join(known)})" if known else ""))
    from puffctl import profiles

    spec = parse(profiles.parse_yaml((path / SPEC_FILE).read_text(encoding="utf-8"), str(path / SPEC_FILE)), str(path / SPEC_FILE))
    cells = read_cells(path, configs=configs)
    saved = runs.read_json(path / STATE_FILE).get("cells") or {}
    state = {cell.cell_id: CellState.from_json(saved.get(cell.cell_id) or {}) for cell in cells}
    return Batch(path, spec, cells, state)


class Lock:
    """The orchestrator lock: an flock on `<batch>/.lock`, released by the kernel when its
    holder dies (SIGKILL included), so a crashed orchestrator never blocks a resume."""

    def __init__(self, batch_path: Path) -> None:
        self.path = batch_path / LOCK_FILE
        self.handle = None

    def __enter__(self) -> Lock:
        handle = self.path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise PuffctlError(f"batch {self.path.parent.name!r} is already being run by {holder}; "
                               f"watch it with `puffctl ablate status {self.path.parent.name}`") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        self.handle = handle
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None
