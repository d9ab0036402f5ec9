"""The box executor: batch cells on (box, GPU) slots of healthy boxes, through puffctl.remote.

Slots are `BOX/gpuI` (one per GPU, or `#K` suffixed with several per GPU) and `BOX/cpuK` on
CPU-only boxes. Before a batch each box is checked (reachable, your dev container running, its
Python answering, the last `box check` not failed); an unhealthy box is skipped with a line
saying why. A GPU busy with someone else's process (memory or utilization in use, or a dev
container of another owner holding it) is not used.

A cell runs as a remote run (remote.start) whose events are mirrored byte for byte into the
local run directory, and whose directory is copied back when it ends. A box that goes away:
its cells are re-attached when it returns. With `reassign_after`, a cell whose box has been
unreachable that long is given up here (the engine restarts it elsewhere), and it never runs
twice at once: its trainer holds a lease the executor renews on every poll, and stops itself
(checkpoint first) after half of `reassign_after` without one, before the restart can happen.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from puffctl import remote
from puffctl.errors import PuffctlError
from puffctl.events import read_from
from puffctl.executors.base import Executor, Exit, Handle, Job

#: Seconds between two questions to a box about one cell (the engine polls faster).
POLL_EVERY = 1.0


@dataclass
class _Box:
    """What the executor keeps per box: its connection, when it went away, whether the code is synced."""

    name: str
    engine: object | None = None
    down_since: float | None = None
    source: dict | None = None


class BoxExecutor(Executor):
    """Cells on the GPUs (or CPU slots) of the named boxes, every registered one by default."""

    kind = "boxes"

    def __init__(self, names: list[str] | None = None, *, per_gpu: int = 1, cpu_slots: int = 1,
                 container: str = "dev", reassign_after: float | None = None, repo: Path | None = None,
                 on_line: Callable[[str], None] = print) -> None:
        from puffctl import boxes

        self.names = names or sorted(boxes.load_registry())
        self.per_gpu, self.cpu_slots, self.container = per_gpu, cpu_slots, container
        self.reassign_after, self.repo, self.on_line = reassign_after, repo, on_line
        self._boxes: dict[str, _Box] = {}
        self._asked: dict[str, tuple[float, Exit | None]] = {}
        self._slots: list[str] | None = None

    # ---- connections ----

    def _engine(self, name: str):
        """The box's open connection, (re)connecting if needed; PuffctlError if it cannot be reached."""
        from puffctl import boxes
        from puffctl.engine import connect

        box = self._boxes.setdefault(name, _Box(name))
        if box.engine is None:
            try:
                registered = boxes.get_box(name)
                box.engine = connect(registered.name, registered.host)
            except PuffctlError:
                box.down_since = box.down_since or time.monotonic()
                raise
            box.down_since = None
        return box.engine

    def _lost(self, name: str) -> None:
        box = self._boxes[name]
        if box.engine is not None:
            box.engine.close()
        box.engine = None
        box.down_since = box.down_since or time.monotonic()

    def _call(self, name: str, action: Callable):
        """action(engine) on the box; a broken connection marks it down and raises PuffctlError."""
        import requests

        engine = self._engine(name)
        try:
            return action(engine)
        except (PuffctlError, requests.exceptions.RequestException, OSError) as error:
            self._lost(name)
            raise PuffctlError(f"box {name}: {error}", exit_code=1) from None

    # ---- slots: health check and busy GPUs ----

    def _box_slots(self, name: str) -> list[str]:
        from puffctl import boxes, fleet

        box = boxes.get_box(name)
        if (box.health or {}).get("status") == "unhealthy":
            raise PuffctlError(f"failed its last check ({', '.join(box.health.get('failed', []))})")
        engine = self._engine(name)
        if not remote.python_runs(engine, self.container):
            raise PuffctlError(f"python does not run in your container {self.container} there")
        if box.cpu_only:
            return [f"{name}/cpu{k}" for k in range(self.cpu_slots)]
        found = fleet.box_gpus(engine, box, [])
        if not found.slots:
            raise PuffctlError(found.error or "no GPU visible")
        me = boxes.owner()
        slots = []
        for gpu in found.slots:
            others = [h for h in gpu.holders if h.startswith("container ") and not h.startswith(f"container {me}/")]
            if not gpu.idle or others:
                why = ", ".join(others) or f"{gpu.memory_used_mib} MiB used, {gpu.utilization}% busy"
                self.on_line(f"box {name}: GPU {gpu.index} skipped: busy ({why})")
                continue
            slots += [f"{name}/gpu{gpu.index}" + (f"#{k}" if self.per_gpu > 1 else "") for k in range(self.per_gpu)]
        return slots

    def slots(self) -> list[str]:
        """Every slot of every healthy box; a line for each box skipped and why (checked once)."""
        if self._slots is None:
            self._slots = []
            for name in self.names:
                try:
                    self._slots += self._box_slots(name)
                except PuffctlError as error:
                    self.on_line(f"box {name} skipped: {str(error).removeprefix(f'box {name}: ')}")
            if not self._slots:
                raise PuffctlError("no healthy box with a free slot: see the lines above and `puffctl box list --gpus`")
        return self._slots

    # ---- the protocol ----

    def start(self, job: Job) -> Handle:
        """Sync the code to the slot's box once, then start the cell there as a remote run."""
        from puffctl import archive, launch

        name, place = job.slot.split("/", 1)
        gpus = place[3:].split("#")[0] if place.startswith("gpu") else None
        box = self._boxes.setdefault(name, _Box(name))

        def begin(engine) -> remote.Remote:
            if box.source is None:
                repo = self.repo or archive.repo_root(launch.code_root())
                box.source, _ = remote.synced_source(engine, self.container, repo)
            lease = self.reassign_after / 2 if self.reassign_after else None
            return remote.start(engine, job.run_dir, self.container, gpus, box.source, resume=job.resume,
                                remote_name=f"{job.run_dir.parent.parent.name}--{job.cell_id}", lease=lease)

        where = self._call(name, begin)
        return {"executor": self.kind, "box": name, "slot": job.slot, "run_dir": str(job.run_dir),
                "remote": where.__dict__}

    def _remote(self, handle: Handle) -> remote.Remote:
        return remote.Remote(**handle["remote"])

    def poll(self, handle: Handle) -> Exit | None:
        """Ask the box (at most every POLL_EVERY s): None while the trainer runs or the box is away."""
        key = handle["remote"]["dir"] + handle["box"]
        asked, answer = self._asked.get(key, (0.0, None))
        if time.monotonic() - asked < POLL_EVERY:
            return answer
        name = handle["box"]
        try:
            facts = self._call(name, lambda engine: remote.probe(engine, self._remote(handle)))
        except PuffctlError:
            down = time.monotonic() - (self._boxes[name].down_since or time.monotonic())
            answer = None
            if self.reassign_after is not None and down >= self.reassign_after:
                answer = Exit(None, f"box {name} unreachable for {down:.0f} s: reassigned")
            self._asked[key] = (time.monotonic(), answer)
            return answer
        answer = None if facts["alive"] else Exit(facts["exit"], f"exit code {facts['exit']}"
                                                  if facts["exit"] is not None else "the trainer has gone")
        self._asked[key] = (time.monotonic(), answer)
        return answer

    def read_events(self, handle: Handle, offset: int, *, final: bool = False) -> tuple[list[dict], int]:
        """Mirror the box's new event bytes into the local events.jsonl, then read it from `offset`."""
        local = Path(handle["run_dir"]) / "events.jsonl"
        size = local.stat().st_size if local.exists() else 0
        try:
            data = self._call(handle["box"], lambda engine: remote.read_new(engine, self._remote(handle), size))
        except PuffctlError:
            data = b""
        if data:
            with local.open("ab") as out:
                out.write(data)
        return read_from(local, offset, final=final)

    def stop(self, handle: Handle, *, force: bool = False) -> None:
        """SIGINT (checkpoint and stop) or SIGKILL to the remote trainer; nothing if its box is away."""
        try:
            self._call(handle["box"], lambda engine: remote.stop(engine, self._remote(handle), at_once=force))
        except PuffctlError:
            pass

    def adopt(self, handle: Handle) -> bool:
        """A cell an earlier orchestrator started: True while its trainer still runs on its box."""
        if handle.get("executor") != self.kind:
            return False
        try:
            return bool(self._call(handle["box"], lambda engine: remote.probe(engine, self._remote(handle)))["alive"])
        except PuffctlError:
            return False

    def collect(self, handle: Handle, run_dir: Path) -> None:
        """Copy the finished cell's directory back (skipped, with a line, if its box is away)."""
        try:
            self._call(handle["box"], lambda engine: remote.copy_back(engine, run_dir, self._remote(handle)))
        except PuffctlError as error:
            self.on_line(f"cell {run_dir.name}: not copied back ({error})")

    def close(self) -> None:
        """Close every box connection; running cells keep running."""
        for name in list(self._boxes):
            if self._boxes[name].engine is not None:
                self._lost(name)


def parse_where(value: object) -> list[str] | None:
    """A spec's or --where's `where`: "local" -> None; "boxes" -> every registered box ([]); names -> them."""
    from puffctl import boxes

    if value in (None, "local"):
        return None
    if value == "boxes":
        return []
    names = value.split(",") if isinstance(value, str) else value
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise PuffctlError(f"where={value!r}: use local, boxes, or a list of box names")
    for name in names:
        boxes.get_box(name.strip())
    return [name.strip() for name in names]


def parse_duration(text: str | None) -> float | None:
    """'90s', '10m', '2h' or plain seconds -> seconds; a one-line error otherwise."""
    import re

    if text is None:
        return None
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([smh]?)\s*", text)
    if not match or float(match.group(1)) <= 0:
        raise PuffctlError(f"bad duration {text!r}: use e.g. 90s, 10m or 2h")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]
