"""A sweep on disk and in motion: a batch (puffctl/batch) whose next cells come from the tuner.

`<sweeps root>/<name>/` is a batch directory (`spec.yaml` holds the sweep spec as given,
`cells.json`, `state.json`, `.lock`, `runs/<cell>/`) plus `study.db`, the Optuna study (unless
the spec names another `storage:`). Trial N (0-based in the study, "trial N+1" on screen) runs
as cells `tNNN-sS`, one per seed, through the batch engine: each a fresh `python -m trainer`
process with the engine's crash/retry/resume semantics. When a trial's cells have all settled,
its score (the mean of their metric) and cost (their env steps or seconds) go to the tuner; a
trial whose cells crashed past their retries or diverged is told as failed.

Crash safety: a trial is asked before its cells are written, and told after they settle. On
every start, `reconcile` gives any trial the study has as running but the batch has no cells
for its cells (from the study's stored values), and tells any trial whose cells settled while
no orchestrator watched, so nothing is asked twice and nothing is lost.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from statistics import mean

from puffctl import profiles, runs
from puffctl.batch import spec as batch_spec
from puffctl.batch import state as batch_state
from puffctl.batch.engine import Engine
from puffctl.errors import PuffctlError
from puffctl.executors.base import Executor
from puffctl.sweep import spec as sweep_spec
from puffctl.sweep.tuner import Tuner, TrialRecord, sqlite_url

STUDY_FILE = "study.db"
SETTLED = ("completed", "failed", "crashed")


def sweeps_root(option: Path | None = None) -> Path:
    """The sweeps root: --dir, else $PUFFCTL_SWEEPS_DIR, else ./sweeps."""
    if option is not None:
        return option
    return Path(os.environ.get("PUFFCTL_SWEEPS_DIR") or "sweeps")


def as_batch_spec(spec: sweep_spec.SweepSpec) -> batch_spec.Spec:
    """The engine's view of a sweep: one variant, its seeds, metric, direction and retries."""
    return batch_spec.Spec(
        name=spec.name, variants=[batch_spec.Variant("trial", spec.profile)], seeds=list(range(1, spec.seeds + 1)),
        metric=spec.metric, higher_is_better=spec.direction == "maximize", retries=spec.retries, slots=spec.slots,
        description=spec.description, source=spec.source,
    )


def cell_name(number: int, seed: int) -> str:
    """The cell id (and run directory name) of trial `number`'s seed."""
    return f"t{number:03d}-s{seed}"


def trial_of(cell_id: str) -> int:
    """The study trial number a cell belongs to."""
    return int(cell_id[1:].split("-", 1)[0])


@dataclass
class Sweep:
    """One sweep: its spec, batch (cells and their states) and tuner."""

    spec: sweep_spec.SweepSpec
    batch: batch_state.Batch
    tuner: Tuner

    @property
    def path(self) -> Path:
        """The sweep directory."""
        return self.batch.path

    def cells_for(self, trial: TrialRecord) -> list[batch_spec.Cell]:
        """One cell per seed for `trial`: the config `puffctl train PROFILE --set ... --seed S` would train."""
        loaded = profiles.load(self.spec.profile)
        sets = self.spec.sets(trial.params)
        cells = []
        for seed in range(1, self.spec.seeds + 1):
            config = profiles.build_config(loaded, sets=sets, seed=seed)
            point = tuple(trial.params.items())
            cells.append(batch_spec.Cell(cell_name(trial.number, seed), f"trial {trial.number + 1}", "trial", point, seed,
                                         loaded.name, sets, config))
        return cells

    def engine(self, executor: Executor, on_change: Callable | None = None) -> Engine:
        """The batch engine that runs this sweep's cells as the tuner asks for them. A cell that
        crashed past its retries stays crashed on resume (its trial was failed for the tuner):
        `retries` counts a cell's crashes across every restart (they persist in state.json)."""
        return Engine(self.batch, executor, on_change=on_change, feed=self.feed, fresh_retries=False)

    def feed(self, _engine=None) -> list[batch_spec.Cell]:
        """The next trial's cells, or none once the budget is asked for."""
        if self.tuner.remaining() <= 0:
            return []
        return self.cells_for(self.tuner.ask())

    def settle(self, _engine=None, cell_id: str | None = None) -> None:
        """Tell the tuner about `cell_id`'s trial if all its cells have settled (once)."""
        if cell_id is None or self.batch.state[cell_id].status not in SETTLED:
            return
        self._tell(trial_of(cell_id))

    def _tell(self, number: int) -> None:
        record = self.tuner.trials()[number]
        if record.state != "running":
            return
        states = [self.batch.state[cell.cell_id] for cell in self.batch.cells if trial_of(cell.cell_id) == number]
        if len(states) < self.spec.seeds or any(state.status not in SETTLED for state in states):
            return
        bad = [state for state in states if state.status != "completed" or state.metric is None]
        if bad:
            first = bad[0]
            why = first.reason or (f"no {self.spec.metric} in its events" if first.status == "completed" else first.status)
            self.tuner.fail(number, f"{first.status}: {why}")
            return
        if self.spec.cost == "steps":
            cost = float(sum(state.steps for state in states))
        else:
            cost = float(sum((state.ended or 0.0) - (state.started or 0.0) for state in states))
        self.tuner.tell(number, mean(state.metric for state in states), cost)

    def reconcile(self) -> None:
        """Repair what a killed orchestrator left between the study and the batch (see the module doc)."""
        known = {trial_of(cell.cell_id) for cell in self.batch.cells}
        for record in self.tuner.running():
            if record.number not in known:
                self.batch.add(self.cells_for(record))
            else:
                self._tell(record.number)


def storage_for(spec: sweep_spec.SweepSpec, path: Path) -> str:
    """The study's storage URL: the spec's `storage:`, else SQLite in the sweep directory."""
    return spec.storage or sqlite_url(path / STUDY_FILE)


def _tuner(spec: sweep_spec.SweepSpec, path: Path) -> Tuner:
    return Tuner(spec.search, storage=storage_for(spec, path), name=spec.name, method=spec.method,
                 direction=spec.direction, budget=spec.trials, seed=spec.seed)


def create(root: Path, spec_path: Path) -> Sweep:
    """Validate a spec and create its sweep directory and study (trial 1, the centre, queued)."""
    spec = sweep_spec.load(spec_path)
    batch = batch_state.create(root, as_batch_spec(spec), [], spec_path.read_text(encoding="utf-8"))
    return Sweep(spec, batch, _tuner(spec, batch.path))


def open_sweep(root: Path, name: str) -> Sweep:
    """An existing sweep by name, with its study reopened."""
    path = root / name
    if not (path / batch_state.CELLS_FILE).is_file() or not (path / batch_state.SPEC_FILE).is_file():
        known = batch_state.list_batches(root)
        raise PuffctlError(f"no sweep {name!r} in {root}" + (f" (sweeps: {', '.join(known)})" if known else ""))
    spec_file = path / batch_state.SPEC_FILE
    spec = sweep_spec.from_mapping(profiles.parse_yaml(spec_file.read_text(encoding="utf-8"), str(spec_file)), str(spec_file), default_name=name)
    cells = batch_state.read_cells(path)
    saved = runs.read_json(path / batch_state.STATE_FILE).get("cells") or {}
    state = {cell.cell_id: batch_state.CellState.from_json(saved.get(cell.cell_id) or {}) for cell in cells}
    batch = batch_state.Batch(path, as_batch_spec(spec), cells, state)
    return Sweep(spec, batch, _tuner(spec, path))
