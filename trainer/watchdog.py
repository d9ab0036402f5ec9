"""Watchdogs on the per-epoch diagnostics: the signs of a run going wrong, found as they happen.

Fed once per epoch by trainer/run.py (nothing runs per step):
- `kl`: approx_kl above `watchdog.kl_max`;
- `value_loss`, `grad_norm`: the value above `watchdog.jump_factor` times its median over the
  last `watchdog.window` epochs (grad_norm only when the losses carry it);
- `sps`: SPS below `watchdog.sps_ratio` times its recent median.
An alarm is raised when a check starts failing and again only after it has recovered. The run
warns for each alarm; one whose name is in `train.halt_on` ends the run as failed.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass

#: Every watchdog's name, as `train.halt_on` lists them.
NAMES = ("kl", "value_loss", "grad_norm", "sps")
#: Readings a median needs before a jump or a collapse is judged against it.
MIN_HISTORY = 5


@dataclass(frozen=True)
class Alarm:
    """A watchdog that started failing: its name and one line saying what it saw."""

    name: str
    text: str


class Watchdog:
    """Judges each epoch's losses and SPS; `check` returns the alarms raised by this epoch."""

    def __init__(self, settings: dict) -> None:
        self.enabled = settings["enabled"]
        self.kl_max = settings["kl_max"]
        self.jump_factor = settings["jump_factor"]
        self.sps_ratio = settings["sps_ratio"]
        self.history = {name: deque(maxlen=settings["window"]) for name in ("value_loss", "grad_norm", "sps")}
        self.failing: set[str] = set()

    def check(self, losses: dict, sps: float | None) -> list[Alarm]:
        """This epoch's new alarms (a check already failing does not alarm again until it recovers)."""
        if not self.enabled:
            return []
        seen: dict[str, str | None] = {}
        kl = _number(losses.get("approx_kl"))
        if kl is not None:
            seen["kl"] = f"approx_kl {kl:.3g} > watchdog.kl_max {self.kl_max:g}" if kl > self.kl_max else None
        for name in ("value_loss", "grad_norm"):
            seen[name] = self._jump(name, _number(losses.get(name)))
        seen["sps"] = self._collapse(_number(sps))
        alarms = []
        for name, text in seen.items():
            if text is None:
                self.failing.discard(name)
            elif name not in self.failing:
                self.failing.add(name)
                alarms.append(Alarm(name, text))
        return alarms

    def _jump(self, name: str, value: float | None) -> str | None:
        if value is None:
            return None
        history = self.history[name]
        median = statistics.median(history) if len(history) >= MIN_HISTORY else None
        history.append(value)
        if median is not None and median > 0 and value > self.jump_factor * median:
            return f"{name} {value:.3g} is {value / median:.0f}x its recent median {median:.3g} (watchdog.jump_factor {self.jump_factor:g})"
        return None

    def _collapse(self, sps: float | None) -> str | None:
        if sps is None:
            return None
        history = self.history["sps"]
        median = statistics.median(history) if len(history) >= MIN_HISTORY else None
        history.append(sps)
        if median is not None and sps < self.sps_ratio * median:
            return f"SPS {sps:.0f} fell below {self.sps_ratio:g} x its recent median {median:.0f} (watchdog.sps_ratio)"
        return None


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        return None
    return float(value)
