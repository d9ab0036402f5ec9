"""The local executor's liveness check and the offset-based event reading the protocol uses."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from puffctl.events import read_from
from puffctl.executors.local import LocalExecutor, owner_alive, start_time


def test_ablate_owner_alive_needs_the_same_pid_start_time_and_host(tmp_path):
    me = {"executor": "local", "host": socket.gethostname(), "pid": os.getpid(), "start_time": start_time(os.getpid()),
          "run_dir": str(tmp_path)}
    assert owner_alive(tmp_path, me) and LocalExecutor(1).adopt(me)
    assert not owner_alive(tmp_path, {**me, "start_time": me["start_time"] + 1})  # a recycled pid
    assert not owner_alive(tmp_path, {**me, "host": "elsewhere"})
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not owner_alive(tmp_path, {**me, "pid": child.pid})
    assert LocalExecutor(3).slots() == ["local:0", "local:1", "local:2"]


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
