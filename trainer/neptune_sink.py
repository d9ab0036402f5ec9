"""The optional Neptune sink: mirrors a run's events into a Neptune run, off the training path.

Namespaces: `config` (the resolved config), `environment/` (episode stats), `losses/`,
`performance/` (SPS, the timing tree, utilization), plus `source/` (git, host, device, params),
`messages`, `checkpoints` and `status`. NEPTUNE_PROJECT and NEPTUNE_API_TOKEN come from the
environment and are never written anywhere by this module. Without a token (the hosted service
closed in 2026) Neptune runs in offline mode with its data in RUN_DIR/neptune; `neptune sync`
can upload it later. Everything, the slow `import neptune` included, happens in one background
thread: `handle` only queues, so the first training step never waits, and a Neptune failure
becomes a message event while training goes on.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import re
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: Events queued while Neptune starts or lags; beyond this they are dropped (and that is said once).
QUEUE_SIZE = 100_000
#: Seconds `close` waits for the queue to drain and Neptune to stop (Neptune's own flush gets STOP_TIMEOUT).
CLOSE_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0
_STOP = object()


def brief(error: BaseException) -> str:
    """An exception as one short line: Neptune's messages are long, coloured banners."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
    text = re.sub(r"-{3,}\w*-{3,}", "", text)
    text = " ".join(text.split())
    text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _flatten(prefix: str, values: Any, out: dict[str, float]) -> dict[str, float]:
    """Finite numbers of a nested mapping as {"prefix/a/b": value}; other values are skipped."""
    if isinstance(values, dict):
        for key, value in values.items():
            _flatten(f"{prefix}/{key}", value, out)
    elif isinstance(values, (int, float)) and not isinstance(values, bool) and math.isfinite(values):
        out[prefix] = float(values)
    return out


def series(event: dict) -> dict[str, float]:
    """The numeric series of one progress event, keyed by their Neptune paths."""
    out: dict[str, float] = {}
    _flatten("environment", event.get("env") or {}, out)
    _flatten("losses", event.get("losses") or {}, out)
    performance = {
        "sps": event.get("sps"),
        "epoch": event.get("epoch"),
        "uptime": event.get("uptime"),
        **(event.get("perf") or {}),
        "util": event.get("util") or {},
    }
    _flatten("performance", performance, out)
    return out



def _neptune_logs_to_stderr() -> None:
    """The Neptune client logs to stdout, which `--events-stdout` keeps for JSON lines alone."""
    logger = logging.getLogger("neptune")
    for handler in list(logger.handlers):
        replacement = logging.StreamHandler(sys.stderr)
        replacement.setFormatter(handler.formatter)
        replacement.setLevel(handler.level)
        logger.removeHandler(handler)
        logger.addHandler(replacement)

class NeptuneSink:
    """Queues events for a background thread that owns the Neptune run."""

    def __init__(self, run_dir: Path, config: dict, emit_message: Callable[[str, str], None]) -> None:
        self.run_dir = Path(run_dir)
        self.config = config
        self.emit_message = emit_message
        self.project = os.environ.get("NEPTUNE_PROJECT") or (config.get("logger") or {}).get("neptune_project")
        self._secret = os.environ.get("NEPTUNE_API_TOKEN") or None
        self.mode = "async" if self._secret else "offline"
        self.data_dir = self.run_dir / "neptune"
        # Neptune reads this when a run is created: its offline (and async queue) files go inside the run dir.
        os.environ["NEPTUNE_DATA_DIRECTORY"] = str(self.data_dir)
        self._queue: queue.Queue = queue.Queue(maxsize=QUEUE_SIZE)
        self._dropped = 0
        self._failed = False
        self._thread = threading.Thread(target=self._work, name="neptune-sink", daemon=True)
        self._thread.start()

    def handle(self, event: dict) -> None:
        """Queue one event; never blocks (a full queue drops the event)."""
        if self._failed:
            return
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self._dropped += 1
            if self._dropped == 1:
                self._say("warning", "Neptune is falling behind; dropping events for it (the local run store has them all)")

    def close(self) -> None:
        """Flush what is queued and stop the Neptune run (waits at most CLOSE_TIMEOUT seconds)."""
        try:
            self._queue.put(_STOP, timeout=1.0)
        except queue.Full:
            pass
        self._thread.join(CLOSE_TIMEOUT)

    def _say(self, level: str, text: str) -> None:
        if self._secret:
            text = text.replace(self._secret, "***")
        try:
            self.emit_message(level, " ".join(text.split()))
        except Exception:  # noqa: BLE001 - a logger's message must never break training
            pass

    def _open(self, mode: str) -> Any:
        import neptune

        _neptune_logs_to_stderr()
        return neptune.init_run(
            project=self.project,
            api_token=self._secret if mode != "offline" else None,
            mode=mode,
            custom_run_id=self.run_dir.name,
            name=self.run_dir.name,
            tags=[str((self.config.get("env") or {}).get("name", ""))],
            source_files=[],
            git_ref=False,
            capture_stdout=False,
            capture_stderr=False,
            capture_hardware_metrics=False,
            capture_traceback=False,
        )

    def _start(self) -> Any:
        """The Neptune run: online when a token is set, else (or if that fails) offline."""
        if self.mode == "async":
            try:
                run = self._open("async")
                self._say("info", f"Neptune logging to project {self.project}")
                return run
            except Exception as error:  # noqa: BLE001
                self._say("warning", f"Neptune online start failed ({brief(error)}); logging offline instead")
        run = self._open("offline")
        reason = "no NEPTUNE_API_TOKEN" if self.mode == "offline" else "online start failed"
        self._say("info", f"Neptune logging offline ({reason}) to {self.data_dir}; upload later with `neptune sync`")
        return run

    def _work(self) -> None:
        try:
            run = self._start()
        except Exception as error:  # noqa: BLE001
            self._failed = True
            self._say("warning", f"Neptune disabled, training goes on: {brief(error)}")
            self._drain()
            return
        try:
            while (event := self._queue.get()) is not _STOP:
                self._log(run, event)
        except Exception as error:  # noqa: BLE001
            self._failed = True
            self._say("warning", f"Neptune logging failed, training goes on without it: {brief(error)}")
            self._drain()
        finally:
            try:
                run.stop(seconds=STOP_TIMEOUT)
            except Exception:  # noqa: BLE001
                pass

    def _drain(self) -> None:
        """Discard queued events until close() asks to stop."""
        while self._queue.get() is not _STOP:
            pass

    def _log(self, run: Any, event: dict) -> None:
        from neptune.utils import stringify_unsupported

        kind = event.get("type")
        if kind == "start":
            run["config"] = stringify_unsupported(event.get("config") or self.config)
            run["source"] = stringify_unsupported(
                {key: event.get(key) for key in ("git", "host", "device", "params", "total_steps", "resumed")}
            )
        elif kind == "progress":
            step = float(event.get("agent_steps") or 0)
            for path, value in series(event).items():
                run[path].append(value, step=step)
        elif kind == "checkpoint":
            run["checkpoints"].append(str(event.get("path")))
        elif kind == "message":
            run["messages"].append(f"{event.get('level')}: {event.get('text')}")
        elif kind == "end":
            run["status"] = str(event.get("status"))
            run["reason"] = str(event.get("reason") or "")
            final = _flatten("final", event.get("metrics") or {}, {})
            for path, value in final.items():
                run[path] = value
