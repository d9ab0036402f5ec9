"""The local executor's liveness check and the offset-based event reading the protocol uses."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from puffctl.events import read_from
from puffctl.executors.local import LocalExecutor, owner


def test_ablate_a_cell_is_alive_while_a_process_holds_its_run_lock(tmp_path):
    handle = {"executor": "local", "host": socket.gethostname(), "pid": os.getpid(), "run_dir": str(tmp_path)}
    assert owner(tmp_path) is None and not LocalExecutor(1).adopt(handle)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert owner(tmp_path)["pid"] == holder.pid and LocalExecutor(1).adopt(handle)
        assert not LocalExecutor(1).adopt({**handle, "executor": "boxes"})
    finally:
        holder.kill()
        holder.wait()
    assert owner(tmp_path) is None and LocalExecutor(1).poll(handle) is not None  # the OS dropped the lock
    assert LocalExecutor(3).slots() == ["local:0", "local:1", "local:2"]


HOLD = """
import sys, time
from pathlib import Path
from trainer import runlock
lock = runlock.acquire(Path(sys.argv[1]), "trainer")
print("held", flush=True)
time.sleep(60)
"""


def test_ablate_read_from_waits_for_a_partial_last_line(tmp_path):
    path = tmp_path / "events.jsonl"
    assert read_from(path, 0) == ([], 0)
    path.write_text('{"type": "start"}\n{"type": "progress", "agent_')
    events, offset = read_from(path, 0)
    assert [event["type"] for event in events] == ["start"] and offset == len('{"type": "start"}\n')
    with path.open("a") as handle:
        handle.write('steps": 5}')
    assert read_from(path, offset) == ([], offset)
    events, end = read_from(path, offset, final=True)
    assert events == [{"type": "progress", "agent_steps": 5}] and end == path.stat().st_size
