"""Where the time goes: the timing tree of DOMAIN.md §5, SPS over a wall-clock window, and
CPU / DRAM / GPU / VRAM utilization.

Timers are plain perf_counter pairs (well under a microsecond each, a few per env step), so
profiling stays far below 2% of throughput. On CUDA they measure host time; GPU work is
accounted where the host waits for it (the copy of actions to the CPU).
"""

from __future__ import annotations

import collections
import time
from typing import Any

TREE = {
    "evaluate": ("forward", "env", "copy"),
    "train": ("forward", "learn", "copy"),
}


class Timer:
    """Accumulates the seconds spent inside `with timer:` blocks."""

    __slots__ = ("total", "_start")

    def __init__(self) -> None:
        self.total = 0.0
        self._start = 0.0

    def __enter__(self) -> Timer:
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.total += time.perf_counter() - self._start


class NullTimer(Timer):
    """A timer that measures nothing (to measure what the profiler itself costs)."""

    __slots__ = ()

    def __enter__(self) -> Timer:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class Profiler:
    """Timers for each node of the tree (`profiler.evaluate`, `profiler.evaluate_env`, ...)
    and per-epoch snapshots from which SPS and seconds-per-epoch are read over a window.
    `timing=False` keeps the SPS window but makes every timer a no-op."""

    def __init__(self, window: float = 5.0, timing: bool = True) -> None:
        self.window = window
        self.timers: dict[str, Timer] = {}
        make = Timer if timing else NullTimer
        for phase, children in TREE.items():
            self.timers[phase] = make()
            for child in children:
                self.timers[f"{phase}_{child}"] = make()
        for name, timer in self.timers.items():
            setattr(self, name, timer)
        self.start_time = time.time()
        self.snapshots: collections.deque = collections.deque()
        self.mark(epoch=0, agent_steps=0)

    def mark(self, epoch: int, agent_steps: int) -> None:
        """Record the end of an epoch (time, counters, cumulative timers)."""
        now = time.perf_counter()
        self.snapshots.append((now, epoch, agent_steps, {n: t.total for n, t in self.timers.items()}))
        while len(self.snapshots) > 2 and now - self.snapshots[1][0] >= self.window:
            self.snapshots.popleft()

    def sps(self) -> float:
        """Agent steps per second over the window (about `window` seconds, at least one epoch)."""
        (t0, _, s0, _), (t1, _, s1, _) = self.snapshots[0], self.snapshots[-1]
        return (s1 - s0) / (t1 - t0) if t1 > t0 else 0.0

    def perf(self) -> dict[str, dict[str, float]]:
        """Seconds per epoch of each node over the window; misc = total minus the children."""
        (_, e0, _, c0), (_, e1, _, c1) = self.snapshots[0], self.snapshots[-1]
        epochs = max(e1 - e0, 1)
        tree: dict[str, dict[str, float]] = {}
        for phase, children in TREE.items():
            total = (c1[phase] - c0[phase]) / epochs
            node = {"total": total}
            for child in children:
                key = f"{phase}_{child}"
                node[child] = (c1[key] - c0[key]) / epochs
            node["misc"] = max(total - sum(node[c] for c in children), 0.0)
            tree[phase] = node
        return tree

    def uptime(self) -> float:
        return time.time() - self.start_time


class Utilization:
    """CPU %, DRAM %, GPU %, VRAM % (null where unknown)."""

    def __init__(self, device: str) -> None:
        import psutil

        self.psutil = psutil
        self.cuda = device.startswith("cuda")
        psutil.cpu_percent(interval=None)

    def read(self) -> dict[str, Any]:
        util: dict[str, Any] = {
            "cpu_percent": self.psutil.cpu_percent(interval=None),
            "dram_percent": self.psutil.virtual_memory().percent,
            "gpu_percent": None,
            "vram_percent": None,
        }
        if self.cuda:
            import torch

            try:
                free, total = torch.cuda.mem_get_info()
                util["vram_percent"] = 100.0 * (total - free) / total
            except RuntimeError:
                pass
            try:
                util["gpu_percent"] = float(torch.cuda.utilization())
            except Exception:  # noqa: BLE001 - needs pynvml; unknown without it
                pass
        return util
