"""Reading event streams: tolerance of unknown fields and torn lines, following, the reducer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from puffctl.events import RunState, Tail, fold, follow, parse_line, read_events

DATA = Path(__file__).parent / "data"


def test_cli_read_events_skips_truncated_last_line_and_keeps_unknown_types():
    events = read_events(DATA / "truncated.jsonl")
    assert [event["type"] for event in events] == ["start", "progress", "progress", "checkpoint", "something_new"]
    assert read_events(DATA / "does-not-exist.jsonl") == []


def test_cli_parse_line_rejects_non_events():
    assert parse_line('{"type": "progress"}') == {"type": "progress"}
    for line in ("", "   ", "[1, 2]", '{"no_type": 1}', '{"type": "progr'):
        assert parse_line(line) is None


def test_cli_fold_completed_stream():
    state = fold(read_events(DATA / "completed.jsonl"))
    assert state.status == "completed" and state.finished
    assert state.run_id == "baseline-fixture"
    assert state.env_name == "CartPole-v1"
    assert state.params == 4610
    assert state.agent_steps == 40000 and state.epoch == 20
    assert state.return_key == "episode_return"
    # the window without finished episodes (env == {}) adds no point
    assert state.returns == [21.5, 130.25, 402.0]
    assert state.best_return == 402.0
    assert [c["path"] for c in state.checkpoints] == ["checkpoints/epoch-000010.pt", "checkpoints/epoch-000020.pt"]
    assert state.duration is not None and abs(state.duration - 4.2) < 1e-6
    assert state.git == {"commit": "a" * 40, "dirty": True, "diff_hash": "b" * 64}


def test_cli_fold_stream_without_end_is_still_running():
    state = fold(read_events(DATA / "truncated.jsonl"))
    assert state.status == "running" and not state.finished
    assert state.agent_steps == 20000


def test_cli_resumed_start_reopens_a_finished_state():
    state = fold(read_events(DATA / "completed.jsonl"))
    state.apply({"type": "end", "time": 1.0, "run_id": "r", "status": "interrupted", "reason": "SIGINT"})
    state.apply({"type": "start", "time": 2.0, "run_id": "r", "resumed": True, "epoch": 20, "agent_steps": 40000})
    assert state.status == "running" and state.reason is None and state.resumed
    assert state.returns == [21.5, 130.25, 402.0]


def test_cli_non_finite_and_wrongly_typed_fields_are_ignored():
    state = RunState()
    state.apply({"type": "progress", "time": "soon", "sps": "fast", "env": {"episode_return": "nan"}, "losses": [1]})
    assert state.sps is None and state.returns == [] and state.losses == {}
    state.apply({"type": 7})
    assert state.progress_count == 1


def test_cli_tail_holds_back_a_partial_line(tmp_path):
    path = tmp_path / "events.jsonl"
    tail = Tail(path)
    assert tail.read() == []
    line = json.dumps({"type": "progress", "time": 1.0, "epoch": 3})
    path.write_text(line[:10])
    assert tail.read() == []
    with path.open("a") as handle:
        handle.write(line[10:] + "\n" + line[:5])
    assert [event["epoch"] for event in tail.read()] == [3]
    assert tail.finish() == []


def test_cli_follow_stops_at_end_and_when_told(tmp_path):
    path = tmp_path / "events.jsonl"
    shutil.copy(DATA / "completed.jsonl", path)
    kinds = [event["type"] for event in follow(Tail(path), stop=lambda: False, poll=0.01)]
    assert kinds[0] == "start" and kinds[-1] == "end"
    shutil.copy(DATA / "truncated.jsonl", path)
    calls = iter([False, False, True])
    events = list(follow(Tail(path), stop=lambda: next(calls), poll=0.01))
    assert len(events) == 5


def test_cli_duration_of_a_resumed_run_leaves_out_the_pause():
    state = RunState()
    for event in (
        {"type": "start", "time": 100.0},
        {"type": "progress", "time": 110.0},
        {"type": "end", "time": 112.0, "status": "interrupted"},
        {"type": "start", "time": 1000.0, "resumed": True},
        {"type": "progress", "time": 1005.0},
    ):
        state.apply(event)
    assert state.duration == 17.0
    state.apply({"type": "end", "time": 1010.0, "status": "completed"})
    assert state.duration == 22.0
    # a segment killed without an end event counts up to its last event
    state.apply({"type": "start", "time": 2000.0, "resumed": True})
    state.apply({"type": "progress", "time": 2003.0})
    state.apply({"type": "start", "time": 3000.0, "resumed": True})
    state.apply({"type": "progress", "time": 3001.0})
    assert state.duration == 26.0
