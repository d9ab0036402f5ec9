"""Reading a run's event stream (events.jsonl) and folding it into the state a view shows.

Readers accept unknown fields and skip a line that is not (yet) a complete JSON object:
the trainer may be mid-write, or may have died mid-write. A damaged line in the middle (a
killed writer's, continued by a resumed one) is skipped and its number recorded, so views can
warn about it; a malformed event is ignored with a warning. Nothing here raises on content.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The env stats tried, in order, as the run's main return metric (sparkline, best return).
RETURN_KEYS = ("episode_return", "score", "return")
#: How many points of the return metric the state keeps for the sparkline.
HISTORY = 200


def parse_line(line: str) -> dict | None:
    """One event from one line, or None for a blank, truncated or non-object line."""
    line = line.strip()
    if not line:
        return None
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return event if isinstance(event, dict) and "type" in event else None


def read_events(path: Path) -> list[dict]:
    """All complete events in an events.jsonl; [] if the file does not exist."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    return [event for event in map(parse_line, text.splitlines()) if event is not None]


def read_from(path: Path, offset: int, *, final: bool = False) -> tuple[list[dict], int]:
    """The complete events from byte `offset` on, and the offset after the last complete line.

    A last line without its newline waits (the writer may be mid-line) unless `final`.
    """
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            chunk = handle.read()
    except FileNotFoundError:
        return [], offset
    end = len(chunk) if final else chunk.rfind(b"\n") + 1
    lines = chunk[:end].decode("utf-8", errors="replace").split("\n")
    return [event for event in map(parse_line, lines) if event is not None], offset + end


class Tail:
    """Reads the events appended to a file since the last call; a partial last line waits.

    `damaged` lists the numbers (1-based, counted from where reading began) of complete
    lines that were not events.
    """

    def __init__(self, path: Path, offset: int = 0) -> None:
        self.path = path
        self.offset = offset
        self._buffer = ""
        self.lines = 0
        self.damaged: list[int] = []

    def _parse(self, lines: list[str]) -> list[dict]:
        events = []
        for line in lines:
            self.lines += 1
            event = parse_line(line)
            if event is not None:
                events.append(event)
            elif line.strip():
                self.damaged.append(self.lines)
        return events

    def read(self) -> list[dict]:
        """The complete events appended since the last call ([] if none or no file yet)."""
        try:
            with self.path.open("r", encoding="utf-8", errors="replace") as handle:
                handle.seek(self.offset)
                chunk = handle.read()
                self.offset = handle.tell()
        except FileNotFoundError:
            return []
        if not chunk:
            return []
        self._buffer += chunk
        *lines, self._buffer = self._buffer.split("\n")
        return self._parse(lines)

    def finish(self) -> list[dict]:
        """Everything left, the last line included if it parses (the writer has exited)."""
        events = self.read()
        event = parse_line(self._buffer)
        self._buffer = ""
        return [*events, event] if event is not None else events


def follow(tail: Tail, *, stop: Callable[[], bool], poll: float = 0.1, until_end: bool = True) -> Iterator[dict]:
    """Yield the events appended after `tail`'s offset, until an `end` event or `stop()` is true.

    The file may not exist yet. After `stop()` turns true the rest of the file is read once
    more, so no event written before the writer exited is lost.
    """
    while True:
        stopping = stop()
        events = tail.finish() if stopping else tail.read()
        for event in events:
            yield event
            if until_end and event["type"] == "end":
                return
        if stopping:
            return
        if not events:
            time.sleep(poll)


def _number(value: Any) -> float | None:
    """A finite float from an event field, or None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if value == value and abs(value) != float("inf") else None


@dataclass
class RunState:
    """What the dashboard and the run store need from a stream, updated one event at a time."""

    run_id: str = ""
    config: dict = field(default_factory=dict)
    env_name: str = ""
    params: int | None = None
    device: str = ""
    host: str = ""
    git: dict | None = None
    resumed: bool = False
    started: float | None = None
    updated: float | None = None
    epoch: int = 0
    agent_steps: int = 0
    total_steps: int | None = None
    sps: float | None = None
    uptime: float | None = None
    eta: float | None = None
    perf: dict = field(default_factory=dict)
    losses: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)
    util: dict = field(default_factory=dict)
    message: tuple[str, str] | None = None
    return_key: str | None = None
    returns: list[float] = field(default_factory=list)
    best_return: float | None = None
    checkpoints: list[dict] = field(default_factory=list)
    damaged_lines: list[int] = field(default_factory=list)
    progress_count: int = 0
    status: str = "starting"
    reason: str | None = None
    metrics: dict = field(default_factory=dict)
    ended: float | None = None
    active: float = 0.0
    segment_start: float | None = None

    def apply(self, event: dict) -> None:
        """Fold one event in; unknown event types and fields are ignored."""
        kind = event.get("type")
        self.run_id = event.get("run_id") or self.run_id
        handler = getattr(self, f"_on_{kind}", None) if isinstance(kind, str) else None
        if handler is not None:
            try:
                handler(event)
            except (TypeError, ValueError, AttributeError):
                self.message = ("warning", f"ignored a malformed {kind} event")
        stamp = _number(event.get("time"))
        if stamp is not None:
            self.updated = stamp

    def note_damaged(self, lines: list[int]) -> None:
        """Record damaged lines a reader skipped (see Tail.damaged); the newest becomes a warning."""
        new = [line for line in lines if line not in self.damaged_lines]
        if new:
            self.damaged_lines += new
            self.message = ("warning", f"events.jsonl line {new[-1]} is damaged; skipped it")

    def _on_start(self, event: dict) -> None:
        self.config = event.get("config") or self.config
        self.env_name = str((self.config.get("env") or {}).get("name", "")) or self.env_name
        self.params = event.get("params", self.params)
        ranks = event.get("world_size") or 1
        self.device = str(event.get("device") or self.device) + (f" x{ranks} ranks" if ranks > 1 else "")
        self.host = str(event.get("host") or self.host)
        self.git = event.get("git", self.git)
        self.resumed = bool(event.get("resumed", False))
        stamp = _number(event.get("time"))
        if self.started is None:
            self.started = stamp
        if self.segment_start is not None and self.updated is not None:
            self.active += max(0.0, self.updated - self.segment_start)  # a segment that ended without an end event
        self.segment_start = stamp
        self.total_steps = event.get("total_steps", self.total_steps)
        self.epoch = int(event.get("epoch") or self.epoch)
        self.agent_steps = int(event.get("agent_steps") or self.agent_steps)
        self.status = "running"
        self.reason = None
        self.ended = None

    def _on_progress(self, event: dict) -> None:
        self.progress_count += 1
        self.status = "running"
        self.epoch = int(event.get("epoch") or self.epoch)
        self.agent_steps = int(event.get("agent_steps") or self.agent_steps)
        self.total_steps = event.get("total_steps", self.total_steps)
        self.sps = _number(event.get("sps"))
        self.uptime = _number(event.get("uptime"))
        self.eta = _number(event.get("eta"))
        for name in ("perf", "losses", "util"):
            value = event.get(name)
            if isinstance(value, dict):
                setattr(self, name, value)
        env = event.get("env")
        if isinstance(env, dict) and env:
            self.env = env
            self._record_return(env)

    def _record_return(self, env: dict) -> None:
        if self.return_key is None:
            self.return_key = next((key for key in RETURN_KEYS if _number(env.get(key)) is not None), None)
        value = _number(env.get(self.return_key)) if self.return_key else None
        if value is None:
            return
        self.returns.append(value)
        del self.returns[:-HISTORY]
        self.best_return = value if self.best_return is None else max(self.best_return, value)

    def _on_checkpoint(self, event: dict) -> None:
        self.checkpoints.append(
            {"path": event.get("path"), "epoch": event.get("epoch"), "agent_steps": event.get("agent_steps")}
        )
        self.message = ("info", f"checkpoint saved: {event.get('path')} (epoch {event.get('epoch')})")

    def _on_message(self, event: dict) -> None:
        self.message = (str(event.get("level") or "info"), str(event.get("text") or ""))

    def _on_end(self, event: dict) -> None:
        self.status = str(event.get("status") or "failed")
        self.reason = event.get("reason")
        self.epoch = int(event.get("epoch") or self.epoch)
        self.agent_steps = int(event.get("agent_steps") or self.agent_steps)
        metrics = event.get("metrics")
        if isinstance(metrics, dict):
            self.metrics = metrics
        self.ended = _number(event.get("time"))
        if self.segment_start is not None and self.ended is not None:
            self.active += max(0.0, self.ended - self.segment_start)
        self.segment_start = None

    @property
    def finished(self) -> bool:
        """True once an end event arrived."""
        return self.status in ("completed", "failed", "interrupted")

    @property
    def duration(self) -> float | None:
        """Seconds spent training: start to end of each segment (a resumed run has several)."""
        if self.started is None:
            return None
        running = 0.0
        if self.segment_start is not None and self.updated is not None:
            running = max(0.0, self.updated - self.segment_start)
        return self.active + running


def fold(events: list[dict]) -> RunState:
    """The state after all `events`."""
    state = RunState()
    for event in events:
        state.apply(event)
    return state
