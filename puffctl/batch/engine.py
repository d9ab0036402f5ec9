"""The batch engine: schedules cells on an executor's slots, follows their events, settles
each outcome in the state file, and re-adopts cells a previous orchestrator left running.

It never knows where a cell runs: everything goes through `puffctl.executors.base.Executor`.
Outcomes come from the run's own event stream (its `end` event), so a cell that finished
while no orchestrator watched it is still a result:

- `end` completed -> completed; `end` failed with cause `diverged` -> failed (a result,
  rerun only with retry_failed); `end` interrupted -> interrupted (resumed later);
- anything else (no `end` event: killed, lost, crashed at start; or an exception) -> a
  crash: retried up to the spec's `retries`, from its latest checkpoint when it has one.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from puffctl import launch, runs
from puffctl.batch import state as batch_state
from puffctl.batch.spec import Cell, Spec, expand, load
from puffctl.batch.state import Batch, Lock
from puffctl.curves import effective_progress, pick
from puffctl.errors import PuffctlError
from puffctl.events import fold, read_events
from puffctl.executors.base import Executor, Exit, Job
from trainer.config import steps_to_train


#: A dry run's guess per cell, before any cell of the batch has run: `python -m trainer`'s
#: startup (imports, env, policy) and a CartPole cell's SPS on one CPU core.
GUESS_STARTUP, GUESS_SPS = 6.0, 50_000.0


@dataclass
class Live:
    """A cell's latest numbers while it runs (from its progress events)."""

    offset: int = 0
    steps: int = 0
    sps: float | None = None
    eta: float | None = None
    metric: float | None = None
    started: bool = False  # this start's trainer wrote its start event


@dataclass
class Plan:
    """A spec turned into cells, before anything is written or started."""

    spec: Spec
    cells: list[Cell]
    text: str


def plan(spec_path: Path) -> Plan:
    """Parse, expand and validate a spec file (every cell's config resolved)."""
    spec = load(spec_path)
    return Plan(spec, expand(spec), spec_path.read_text(encoding="utf-8"))


def default_slots(cells: list[Cell]) -> int:
    """Local slots: this machine's cores divided by the cells' train.cpu_threads (at least 1)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = max((cell.config["train"].get("cpu_threads") or cores for cell in cells), default=1)
    return max(1, cores // threads)


def create(root: Path, planned: Plan) -> Batch:
    """Write a new batch directory for a planned spec."""
    return batch_state.create(root, planned.spec, planned.cells, planned.text)


def estimate(cells: list[Cell], slots: int, *, startup: float, sps: float) -> float:
    """Rough seconds to run `cells` on `slots`: per cell, startup plus steps at `sps`."""
    seconds = [startup + steps_to_train(cell.config) / sps for cell in cells]
    return sum(seconds) / slots if seconds else 0.0


@dataclass
class Engine:
    """Runs one batch on one executor.

    `on_change(engine, cell_id)` is called after every status change and progress event (the
    live view; a tuner learns results here). `feed(engine)`, when given, is asked for more
    cells whenever a slot is free and nothing is queued (a sweep's next trials); they are
    added to the batch. The run ends when nothing is queued or running and `feed` gives none.
    `fresh_retries`: a resume gives cells that crashed past their retries a new budget (an
    ablation's rule); a sweep keeps them crashed, so `retries` counts across restarts.
    """

    batch: Batch
    executor: Executor
    on_change: Callable[[Engine, str | None], None] | None = None
    feed: Callable[[Engine], list[Cell]] | None = None
    poll: float = 0.2
    retry_failed: bool = False
    fresh_retries: bool = True
    live: dict[str, Live] = field(default_factory=dict)
    active: dict[str, str] = field(default_factory=dict)
    stopping: int = 0
    adopted: set[str] = field(default_factory=set)

    def run(self) -> dict[str, int]:
        """Run every cell that still needs it; returns the status counts. Holds the batch lock."""
        if any(not cell.config for cell in self.batch.cells):
            raise ValueError("this batch was opened with configs=False: it can be shown, not run")
        with Lock(self.batch.path):
            previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                self._loop()
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
                self.executor.close()
        return self.batch.counts()

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.stopping += 1
        for cell_id in list(self.active):
            handle = self.batch.state[cell_id].handle
            if handle:
                self.executor.stop(handle, force=self.stopping > 1)
        self._changed(None)

    def _wanted(self, cell: Cell) -> bool:
        current = self.batch.state[cell.cell_id]
        if current.status == "crashed" and self.fresh_retries:
            current.crashes = 0
            current.status = "pending"
        return current.status in ("pending", "interrupted") or (self.retry_failed and current.status == "failed")

    def _loop(self) -> None:
        slots = self.executor.slots()
        for cell in self.batch.cells:
            current = self.batch.state[cell.cell_id]
            if current.status == "running":
                self._adopt(cell.cell_id)
        free = [slot for slot in slots if slot not in self.active.values()]
        queue = [cell for cell in self.batch.cells if self._wanted(cell)]
        self.batch.save()
        self._changed(None)
        while True:
            if not queue and free and self.feed is not None and not self.stopping:
                queue.extend(self.batch.add(self.feed(self)))
            if not ((queue and not self.stopping) or self.active):
                break
            busy = False
            while queue and free and not self.stopping:
                self._start(queue.pop(0), free.pop(0))
                busy = True
            for cell_id, slot in list(self.active.items()):
                outcome = self._follow(cell_id)
                busy = busy or outcome != "running"
                if outcome == "running":
                    continue
                del self.active[cell_id]
                if slot in slots:
                    free.append(slot)
                if outcome == "pending" and not self.stopping:
                    queue.append(self._cell(cell_id))
            if not busy:
                time.sleep(self.poll)

    def _cell(self, cell_id: str) -> Cell:
        return next(cell for cell in self.batch.cells if cell.cell_id == cell_id)

    def _changed(self, cell_id: str | None) -> None:
        if self.on_change is not None:
            self.on_change(self, cell_id)

    def _adopt(self, cell_id: str) -> None:
        """A cell the state says is running: follow it if its process lives, else settle it."""
        current = self.batch.state[cell_id]
        self.live[cell_id] = Live()
        if current.handle and self.executor.adopt(current.handle):
            self.active[cell_id] = current.slot or "adopted"
            self.adopted.add(cell_id)
            self._changed(cell_id)
            return
        self._settle(cell_id, Exit(None, "the process was lost while no orchestrator watched it"))

    def _start(self, cell: Cell, slot: str) -> None:
        path = self.batch.run_dir(cell.cell_id)
        current = self.batch.state[cell.cell_id]
        handle = self.executor.running(path)
        offset = 0  # an orphan (a trainer the state has no handle for) is followed from its first event
        if handle is not None:
            self.adopted.add(cell.cell_id)
        else:
            resume = current.status != "failed" and path.is_dir() and (path / "config.yaml").is_file() and bool(
                runs.load_run(path).checkpoint_files())
            if not resume:
                if path.is_dir():  # under its lock: a live process's directory is never deleted
                    runs.remove_run(self.batch.runs_root, cell.cell_id)
                record = {"profile": cell.profile, "sets": list(cell.sets), "env": cell.config["env"]["name"],
                          "batch": self.batch.name, "cell": cell.cell_id, "group": cell.group, "seed": cell.seed}
                launch.prepare(self.batch.runs_root, cell.cell_id, cell.config, record, exact=True)
            offset = (path / "events.jsonl").stat().st_size if resume and (path / "events.jsonl").exists() else 0
            handle = self.executor.start(Job(cell.cell_id, path, slot, resume=resume))
        current.status, current.handle, current.slot = "running", handle, slot
        current.starts += 1
        current.started, current.ended, current.reason = time.time(), None, None
        self.live[cell.cell_id] = Live(offset=offset)
        self.active[cell.cell_id] = slot
        self.batch.save()
        self._changed(cell.cell_id)

    def _absorb(self, cell_id: str, events: list[dict]) -> None:
        live = self.live[cell_id]
        for event in events:
            live.started = live.started or event.get("type") == "start"
            if event.get("type") == "progress":
                live.steps = int(event.get("agent_steps") or live.steps)
                live.sps, live.eta = event.get("sps"), event.get("eta")
                value = pick(event, self.batch.spec.metric)
                live.metric = value if value is not None else live.metric

    def _follow(self, cell_id: str) -> str:
        """Read the cell's new events; if its process has gone, settle it. Returns its status."""
        handle = self.batch.state[cell_id].handle or {}
        live = self.live[cell_id]
        exited = self.executor.poll(handle)
        events, live.offset = self.executor.read_events(handle, live.offset, final=exited is not None)
        if events:
            self._absorb(cell_id, events)
            self._changed(cell_id)
        if exited is None:
            return "running"
        return self._settle(cell_id, exited)

    def _settle(self, cell_id: str, exited: Exit) -> str:
        """Record a gone process's outcome from its run's events; returns the new status."""
        current = self.batch.state[cell_id]
        path = self.batch.run_dir(cell_id)
        if current.handle:
            self.executor.collect(current.handle, path)
        events = read_events(path / "events.jsonl")
        final = fold(events)
        if not final.finished and exited.returncode is not None and path.is_dir():
            launch.settle(path, final, exited.returncode, False, self.live.get(cell_id, Live()).started)
        end = last_end(events)
        current.handle, current.ended = None, time.time()
        current.steps = final.agent_steps
        current.metric = final_metric(events, self.batch.spec.metric)
        if current.metric is None:
            current.metric = self.live.get(cell_id, Live()).metric
        if end.get("status") == "completed":
            current.status, current.reason = "completed", None
        elif end.get("status") == "failed" and end.get("cause") == "diverged":
            current.status, current.reason = "failed", end.get("reason")
        elif end.get("status") == "interrupted":
            current.status, current.reason = "interrupted", end.get("reason")
        else:
            current.crashes += 1
            current.reason = (end.get("reason") if end.get("status") == "failed" else None) or exited.detail
            retry = current.crashes <= self.batch.spec.retries
            current.status = "pending" if retry else "crashed"
        self.batch.save()
        self._changed(cell_id)
        return current.status

    def eta(self) -> float | None:
        """Seconds until the batch is done: running cells' own ETAs plus waiting cells at the
        mean wall time of the cells finished so far, spread over the slots."""
        states = self.batch.state
        finished = [s.ended - s.started for s in states.values() if s.status in batch_state.FINISHED and s.ended and s.started]
        waiting = sum(1 for s in states.values() if s.status == "pending")
        running = [self.live[c].eta or 0.0 for c in self.active if c in self.live]
        if waiting and not finished:
            return None
        per_cell = sum(finished) / len(finished) if finished else 0.0
        slots = max(1, len(self.executor.slots()))
        return max(max(running, default=0.0), (sum(running) + waiting * per_cell) / slots)


def last_end(events: list[dict]) -> dict:
    """The last `end` event after the last `start` ({} if the latest attempt has none)."""
    end: dict = {}
    for event in events:
        if event["type"] == "start":
            end = {}
        elif event["type"] == "end":
            end = event
    return end


def final_metric(events: list[dict], metric: str) -> float | None:
    """The last value of `metric` in the run's effective progress (a resumed start supersedes
    the progress past its epoch: puffctl.curves.effective_progress)."""
    values = [pick(event, metric) for event in effective_progress(events)]
    values = [value for value in values if value is not None]
    return values[-1] if values else None


def needs_running(batch: Batch, *, retry_failed: bool = False) -> bool:
    """True if some cell would run or be followed (not every cell has its result)."""
    counts = batch.counts()
    return counts["completed"] + (0 if retry_failed else counts["failed"]) < len(batch.cells)


def resume_check(batch: Batch, *, retry_failed: bool) -> None:
    """A one-line error if resuming would neither run nor follow any cell."""
    if needs_running(batch, retry_failed=retry_failed):
        return
    counts = batch.counts()
    if counts["failed"]:
        raise PuffctlError(f"batch {batch.name!r} is finished ({counts['completed']} completed, {counts['failed']} "
                           "failed by divergence); --retry-failed reruns the failed ones")
    raise PuffctlError(f"batch {batch.name!r} is finished: every cell completed")

