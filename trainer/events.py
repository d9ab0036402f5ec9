"""The run's event stream (events.jsonl, optionally stdout and Neptune) and its status.json.

Schema: docs/events.md. Every event carries `type`, `time` and `run_id`.
"""

from __future__ import annotations

import json
import math
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any


def _finite(value: Any) -> Any:
    """JSON has no NaN/inf: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temporary file and os.replace it, so readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    try:
        tmp.write_text(json.dumps(_finite(data), indent=1) + "\n")
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def _recorded_progress(path: Path) -> dict[str, int]:
    """The epoch and agent_steps an earlier process recorded in status.json (zeros if none)."""
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError):
        recorded = {}
    recorded = recorded if isinstance(recorded, dict) else {}
    return {key: recorded[key] if isinstance(recorded.get(key), int) else 0 for key in ("epoch", "agent_steps")}


class EventWriter:
    """Appends events to RUN_DIR/events.jsonl (and stdout, and a Neptune sink) and keeps
    RUN_DIR/status.json current.

    Each event is one unbuffered append of one line. If an append fails (disk full), `emit`
    raises that OSError once and afterwards leaves the file alone (stdout and Neptune still
    get events), so the run can end with its reason in status.json.
    """

    def __init__(self, run_dir: Path, config: dict, to_stdout: bool = False) -> None:
        self.run_dir = Path(run_dir)
        self.run_id = self.run_dir.name
        self.to_stdout = to_stdout
        self.host = socket.gethostname()
        path = self.run_dir / "events.jsonl"
        torn = False
        if path.is_file() and path.stat().st_size:
            with open(path, "rb") as existing:
                existing.seek(-1, os.SEEK_END)
                torn = existing.read(1) != b"\n"
        self.file = open(path, "ab", buffering=0)
        self.broken: OSError | None = None
        if torn:  # a killed run's half-written last line stays a line of its own
            self._append(b"\n")
        self.started = time.time()
        self.status: dict[str, Any] = {
            "run_id": self.run_id, "status": "running", "pid": os.getpid(), "host": self.host,
            "started": self.started, "updated": self.started, **_recorded_progress(self.run_dir / "status.json"),
            "reason": None,
        }
        self.sink = None
        if config["logger"]["backend"] == "neptune":
            self._open_neptune(config)

    def _open_neptune(self, config: dict) -> None:
        try:
            from trainer.neptune_sink import NeptuneSink

            self.sink = NeptuneSink(self.run_dir, config, self.message)
        except Exception as error:  # noqa: BLE001 - a logger must never stop training
            self.sink = None
            self.message("warning", f"Neptune sink disabled: {type(error).__name__}: {error}".splitlines()[0])

    def emit(self, type_: str, **fields: Any) -> dict:
        """Write one event (one JSON line) everywhere it goes; return it."""
        event = {"type": type_, "time": time.time(), "run_id": self.run_id, **fields}
        line = json.dumps(_finite(event), separators=(",", ":"))
        if self.broken is None:
            try:
                self._append((line + "\n").encode())
            except OSError as error:
                self.broken = error
                raise OSError(error.errno, f"events.jsonl not written: {error.strerror or error}") from error
        if self.to_stdout:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
        if self.sink is not None:
            try:
                self.sink.handle(event)
            except Exception as error:  # noqa: BLE001
                self.sink = None
                self.message("warning", f"Neptune sink failed and was disabled: {error}".splitlines()[0])
        return event

    def _append(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[self.file.write(view):]

    def message(self, level: str, text: str) -> None:
        """A `message` event: level info|warning|error and one line of text."""
        self.emit("message", level=level, text=text)

    def update_status(self, **fields: Any) -> None:
        """Rewrite status.json atomically with `fields` changed."""
        self.status.update(fields)
        self.status["updated"] = time.time()
        write_json_atomic(self.run_dir / "status.json", self.status)

    def close(self) -> None:
        if self.sink is not None:
            try:
                self.sink.close()
            except Exception:  # noqa: BLE001
                pass
            self.sink = None
        self.file.close()


class Silent:
    """The event writer of a rank other than 0 in a multi-rank run: rank 0 reports for the group."""

    def __init__(self) -> None:
        self.status: dict[str, Any] = {"epoch": 0, "agent_steps": 0}

    def emit(self, type_: str, **fields: Any) -> dict:
        return {"type": type_, **fields}

    def message(self, level: str, text: str) -> None:
        pass

    def update_status(self, **fields: Any) -> None:
        self.status.update(fields)

    def close(self) -> None:
        pass
