"""The event writer and status.json on their own, and the profiler's window."""

import json
import math

from trainer import config
from trainer.events import EventWriter
from trainer.profiler import Profiler


def test_events_are_json_lines_with_common_fields_and_no_nan(tmp_path):
    run_dir = tmp_path / "run-x"
    run_dir.mkdir()
    writer = EventWriter(run_dir, config.resolve({}))
    writer.emit("progress", losses={"explained_variance": math.nan}, sps=1.0)
    writer.message("info", "hello")
    writer.close()
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert [e["type"] for e in events] == ["progress", "message"]
    assert all(e["run_id"] == "run-x" and isinstance(e["time"], float) for e in events)
    assert events[0]["losses"]["explained_variance"] is None  # JSON has no NaN
    assert events[1]["level"] == "info" and events[1]["text"] == "hello"


def test_a_torn_last_line_is_closed_before_appending(tmp_path):
    run_dir = tmp_path / "run-y"
    run_dir.mkdir()
    (run_dir / "events.jsonl").write_text('{"type":"start"}\n{"type":"progr')
    writer = EventWriter(run_dir, config.resolve({}))
    writer.emit("start", resumed=True)
    writer.close()
    lines = (run_dir / "events.jsonl").read_text().splitlines()
    assert lines[1] == '{"type":"progr'
    assert json.loads(lines[2])["resumed"] is True


def test_status_json_is_rewritten_whole(tmp_path):
    run_dir = tmp_path / "run-z"
    run_dir.mkdir()
    writer = EventWriter(run_dir, config.resolve({}))
    writer.update_status(status="running", epoch=3, agent_steps=300)
    writer.update_status(status="failed", reason="boom")
    writer.close()
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "failed" and status["epoch"] == 3 and status["reason"] == "boom"
    assert status["run_id"] == "run-z" and status["updated"] >= status["started"]
    assert [p.name for p in run_dir.iterdir() if p.name.startswith(".")] == []


def test_profiler_reports_sps_and_seconds_per_epoch_over_its_window():
    profiler = Profiler(window=1000.0)
    for epoch in range(1, 4):
        profiler.evaluate.total += 0.3
        profiler.evaluate_env.total += 0.1
        profiler.train.total += 0.2
        profiler.train_learn.total += 0.15
        profiler.mark(epoch, epoch * 100)
    perf = profiler.perf()
    assert abs(perf["evaluate"]["total"] - 0.3) < 1e-9 and abs(perf["evaluate"]["env"] - 0.1) < 1e-9
    assert abs(perf["evaluate"]["misc"] - 0.2) < 1e-9
    assert abs(perf["train"]["misc"] - 0.05) < 1e-9
    assert profiler.sps() > 0
