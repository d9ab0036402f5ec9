"""The live profiling table of a run (DOMAIN.md §5) and its one-line form for non-terminals.

Both are pure functions of a `RunState` (puffctl/events.py), so the same view shows a local
run as it trains, a run on a box, and a finished run. `Dashboard` redraws only when an event
arrives, so its cost is a few milliseconds per progress event, off the trainer's process.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from puffctl.events import RunState

if TYPE_CHECKING:
    from puffctl.curves import Curve

SPARK = "▁▂▃▄▅▆▇█"
LOSS_ORDER = (
    "policy_loss",
    "value_loss",
    "entropy",
    "old_approx_kl",
    "approx_kl",
    "clipfrac",
    "importance",
    "explained_variance",
)
#: The trainer's per-epoch diagnostics (trainer/train.py DIAGNOSTIC_KEYS), shown apart from the losses.
DIAGNOSTIC_ORDER = (
    "grad_norm",
    "advantage_mean",
    "advantage_std",
    "advantage_max_abs",
    "return_mean",
    "return_std",
    "return_max_abs",
)
#: The replay factor's instrumentation (trainer/algorithms/replay.py): keys with this prefix.
REPLAY_PREFIX = "replay_"
EVALUATE_PARTS = ("forward", "env", "copy", "misc")
TRAIN_PARTS = ("forward", "learn", "copy", "misc")
LEVEL_STYLE = {"info": "cyan", "warning": "yellow", "error": "bold red"}
STATUS_STYLE = {"completed": "green", "failed": "bold red", "interrupted": "yellow", "lost": "red"}


#: Width of tables written to a pipe or file, where rich would otherwise assume 80 columns.
PIPE_WIDTH = 200


def fit_width(console: Console) -> Console:
    """Let tables written to a non-terminal use PIPE_WIDTH columns (unless COLUMNS says otherwise)."""
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = PIPE_WIDTH
    return console


def human_count(value: float | int | None) -> str:
    """1234 -> 1.2k, 5600000 -> 5.6M; "-" for unknown."""
    if value is None:
        return "-"
    value = float(value)
    for limit, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            return f"{value / limit:.1f}{suffix}"
    return f"{value:.0f}"


def human_duration(seconds: float | None) -> str:
    """75 -> 1m15s, 3700 -> 1h01m; "-" for unknown."""
    if seconds is None:
        return "-"
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f}s" if seconds >= 10 else f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def human_value(value: object) -> str:
    """A metric for a table cell: 4 significant digits for floats."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "-" if value is None else str(value)
    if isinstance(value, int):
        return human_count(value) if abs(value) >= 10000 else str(value)
    if value != value:
        return "nan"
    return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"


def percent(value: object) -> str:
    """A utilization percentage, or "-" where unknown."""
    return "-" if not isinstance(value, (int, float)) or isinstance(value, bool) else f"{value:.0f}%"


def sparkline(values: Sequence[float], width: int = 32) -> str:
    """The last values as a line of block characters, resampled to at most `width`."""
    if not values:
        return ""
    if len(values) > width:
        step = len(values) / width
        values = [values[min(len(values) - 1, int((index + 1) * step) - 1)] for index in range(width)]
    low, high = min(values), max(values)
    span = high - low
    if span <= 0:
        return SPARK[len(SPARK) // 2] * len(values)
    return "".join(SPARK[min(len(SPARK) - 1, int((value - low) / span * len(SPARK)))] for value in values)


def _section(title: str) -> Table:
    table = Table.grid(padding=(0, 1))
    table.min_width = 28  # an empty section keeps its title readable
    table.title = title
    table.title_style = "bold"
    table.title_justify = "left"
    table.add_column(style="dim", no_wrap=True)
    table.add_column(justify="right", no_wrap=True)
    return table


def _header(state: RunState) -> Text:
    util = state.util
    text = Text()
    text.append(" puffctl ", style="bold black on cyan")
    text.append(f" {state.run_id or 'starting'} ", style="bold")
    for label, key in (("CPU", "cpu_percent"), ("GPU", "gpu_percent"), ("DRAM", "dram_percent"), ("VRAM", "vram_percent")):
        text.append(f"  {label} ", style="dim")
        text.append(percent(util.get(key)))
    if state.status not in ("starting", "running"):
        text.append(f"  {state.status}", style=STATUS_STYLE.get(state.status, ""))
    return text


def _summary(state: RunState) -> Table:
    table = _section("Summary")
    total = state.total_steps
    steps = human_count(state.agent_steps) + (f" / {human_count(total)}" if total else "")
    if total:
        steps += f" ({100 * state.agent_steps / total:.0f}%)"
    rows = (
        ("Env", state.env_name or "-"),
        ("Params", human_count(state.params)),
        ("Steps", steps),
        ("SPS", human_count(state.sps)),
        ("Epoch", str(state.epoch)),
        ("Uptime", human_duration(state.uptime)),
        ("Remaining", human_duration(state.eta) if not state.finished else "-"),
    )
    for label, value in rows:
        table.add_row(label, value)
    return table


def _performance(state: RunState) -> Table:
    table = _section("Performance")
    table.add_column(justify="right", no_wrap=True)
    evaluate = state.perf.get("evaluate") or {}
    train = state.perf.get("train") or {}
    epoch = (evaluate.get("total") or 0.0) + (train.get("total") or 0.0)

    def row(label: str, seconds: object, style: str = "") -> None:
        if not isinstance(seconds, (int, float)):
            table.add_row(Text(label, style=style), "-", "-")
            return
        share = f"{100 * seconds / epoch:.0f}%" if epoch > 0 else "-"
        table.add_row(Text(label, style=style), f"{seconds:.3f}s", share)

    for name, parts, section in (("Evaluate", EVALUATE_PARTS, evaluate), ("Train", TRAIN_PARTS, train)):
        row(name, section.get("total"), "bold")
        for part in parts:
            row(f"  {part.capitalize()}", section.get(part))
    return table


def _metrics(title: str, values: dict, order: Sequence[str] = ()) -> Table:
    table = _section(title)
    keys = [key for key in order if key in values] + sorted(key for key in values if key not in order)
    for key in keys:
        table.add_row(key, human_value(values[key]))
    if not keys:
        table.add_row("-", "")
    return table


def reference_line(state: RunState, reference: Reference) -> Text:
    """This run's metric next to the reference's at the same agent step, and the difference."""
    from puffctl.curves import pick

    mine = pick({"env": state.env, "losses": state.losses, "sps": state.sps}, reference.curve.metric)
    theirs = reference.curve.at(state.agent_steps)
    line = Text(f"vs {reference.name} ", style="dim")
    line.append(f"{reference.curve.metric} {human_value(mine)}")
    if theirs is None:
        line.append(f"  reference: no reading at {human_count(state.agent_steps)} steps "
                    f"(it covers {human_count(reference.curve.steps[0] if reference.curve.steps else 0)}"
                    f"-{human_count(reference.curve.steps[-1] if reference.curve.steps else 0)})", style="dim")
        return line
    line.append(f"  reference {human_value(theirs)} at {human_count(state.agent_steps)} steps")
    if mine is not None:
        delta = mine - theirs
        line.append(f"  ({delta:+.4g})", style="green" if delta >= 0 else "red")
    return line


@dataclass
class Reference:
    """A reference run shown in the live table: its name and its metric curve."""

    name: str
    curve: Curve


def split_losses(losses: dict) -> tuple[dict, dict, dict]:
    """The losses dict as (losses, diagnostics, off-policy instrumentation)."""
    diagnostics = {key: value for key, value in losses.items() if key in DIAGNOSTIC_ORDER}
    replay = {key[len(REPLAY_PREFIX):]: value for key, value in losses.items() if key.startswith(REPLAY_PREFIX)}
    rest = {key: value for key, value in losses.items()
            if key not in diagnostics and not key.startswith(REPLAY_PREFIX)}
    return rest, diagnostics, replay


def render(state: RunState, reference: Reference | None = None) -> RenderableType:
    """The full table: header, summary | performance, losses | env stats, diagnostics | replay,
    sparkline, reference, message."""
    body = Table.grid(padding=(0, 4))
    body.add_column()
    body.add_column()
    body.add_row(_summary(state), _performance(state))
    losses, diagnostics, replay = split_losses(state.losses)
    body.add_row(_metrics("Losses", losses, LOSS_ORDER), _metrics("Env stats", state.env, ("episode_return",)))
    if diagnostics or replay:
        body.add_row(_metrics("Diagnostics", diagnostics, DIAGNOSTIC_ORDER),
                     _metrics("Replay", replay) if replay else Text(""))
    parts: list[RenderableType] = [_header(state), body]
    if state.returns:
        line = Text(f"{state.return_key} ", style="dim")
        line.append(sparkline(state.returns), style="green")
        line.append(f" {human_value(state.returns[-1])} (best {human_value(state.best_return)})")
        parts.append(line)
    if reference is not None:
        parts.append(reference_line(state, reference))
    if state.status not in ("starting", "running") and state.reason:
        parts.append(Text(f"{state.status}: {state.reason}", style=STATUS_STYLE.get(state.status, "")))
    elif state.message:
        level, message = state.message
        parts.append(Text(f"{level}: {message}", style=LEVEL_STYLE.get(level, "")))
    else:
        parts.append(Text("waiting for the trainer..." if state.status == "starting" else "", style="dim"))
    return Group(*parts)


def compact_line(state: RunState) -> str:
    """One line per progress update, for logs and pipes."""
    total = f"/{human_count(state.total_steps)}" if state.total_steps else ""
    pieces = [
        f"[{state.run_id}]",
        f"epoch {state.epoch}",
        f"steps {human_count(state.agent_steps)}{total}",
        f"sps {human_count(state.sps)}",
        f"eta {human_duration(state.eta)}",
    ]
    env = " ".join(f"{key} {human_value(value)}" for key, value in state.env.items())
    if env:
        pieces.append(f"| {env}")
    losses = " ".join(f"{key} {human_value(state.losses[key])}" for key in LOSS_ORDER[:3] if key in state.losses)
    if losses:
        pieces.append(f"| {losses}")
    return " ".join(pieces)


def event_line(state: RunState, event: dict) -> str | None:
    """The compact mode's line for one event (None for events it does not print)."""
    kind = event.get("type")
    if kind == "progress":
        return compact_line(state)
    if kind == "start":
        resumed = f" (resumed at step {human_count(state.agent_steps)})" if state.resumed else ""
        return (
            f"[{state.run_id}] start: env {state.env_name} params {human_count(state.params)} "
            f"device {state.device or '-'} steps {human_count(state.total_steps)}{resumed}"
        )
    if kind in ("message", "checkpoint") and state.message:
        return f"[{state.run_id}] {state.message[0]}: {state.message[1]}"
    if kind == "end":
        best = f" best {state.return_key} {human_value(state.best_return)}" if state.best_return is not None else ""
        reason = f": {state.reason}" if state.reason else ""
        return f"[{state.run_id}] {state.status}{reason} at step {human_count(state.agent_steps)} after {human_duration(state.duration)}{best}"
    return None


class Dashboard:
    """Shows a run's state: a rich.live table on a terminal, else one line per update.

    Redraws happen only in `update` (no refresh thread) and at most every `min_interval`
    seconds, unless the event ends the run.
    """

    def __init__(self, console: Console, *, live: bool | None = None, min_interval: float = 0.1,
                 reference: Reference | None = None) -> None:
        self.console = console
        self.reference = reference
        self.live = console.is_terminal if live is None else live
        self.min_interval = min_interval
        self._live: Live | None = None
        self._drawn = 0.0

    def __enter__(self) -> Dashboard:
        return self

    def start(self, state: RunState) -> None:
        """Put the (possibly empty) table on screen at once."""
        if self.live and self._live is None:
            self._live = Live(render(state, self.reference), console=self.console, auto_refresh=False, transient=False)
            self._live.start(refresh=True)
            self._drawn = time.monotonic()

    def update(self, state: RunState, event: dict) -> None:
        """Show `state` after `event` was folded into it."""
        if not self.live:
            line = event_line(state, event)
            if line is not None and self.reference is not None and event.get("type") == "progress":
                line += f" | {reference_line(state, self.reference).plain}"
            if line is not None:
                self.console.print(line, highlight=False, markup=False, soft_wrap=True)
            return
        if self._live is None:
            self.start(state)
        now = time.monotonic()
        if event.get("type") in ("end", "start", "message", "checkpoint") or now - self._drawn >= self.min_interval:
            assert self._live is not None
            self._live.update(render(state, self.reference), refresh=True)
            self._drawn = now

    def stop(self, state: RunState | None = None) -> None:
        """Leave the final table on screen."""
        if self._live is not None:
            if state is not None:
                self._live.update(render(state, self.reference), refresh=True)
            self._live.stop()
            self._live = None

    def __exit__(self, *exc: object) -> None:
        self.stop()
