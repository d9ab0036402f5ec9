"""The profiling table and its compact form, rendered from fixture event streams."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from puffctl.dashboard import Dashboard, compact_line, human_count, human_duration, render, sparkline
from puffctl.events import RunState, fold, read_events

DATA = Path(__file__).parent / "data"


def text_of(renderable) -> str:
    console = Console(width=120, record=True, file=io.StringIO(), color_system=None)
    console.print(renderable)
    return console.export_text()


def test_cli_table_has_every_section_of_the_spec():
    text = text_of(render(fold(read_events(DATA / "completed.jsonl"))))
    for label in ("CPU", "GPU", "DRAM", "VRAM", "Env", "Params", "Steps", "SPS", "Epoch", "Uptime", "Remaining",
                  "Evaluate", "Forward", "Copy", "Misc", "Train", "Learn", "Losses", "policy_loss", "explained_variance",
                  "Env stats", "episode_return", "completed"):
        assert label in text, label
    assert "CartPole-v1" in text and "4.6k" in text and "40.0k / 40.0k (100%)" in text
    assert "95%" in text and "12%" in text  # CPU and DRAM; GPU and VRAM unknown
    assert "0.060s" in text and "60%" in text and "0.025s" in text and "25%" in text
    assert "checkpoint saved: checkpoints/epoch-000020.pt" in text
    assert "▁" in text and "█" in text and "best 402" in text


def test_cli_table_shows_diagnostics_and_replay_apart_from_the_losses():
    state = fold(read_events(DATA / "completed.jsonl"))
    state.losses = {"policy_loss": 0.01, "grad_norm": 3.5, "advantage_max_abs": 7.25, "return_std": 2.0,
                    "replay_offpolicy_frac": 0.33, "replay_age_max": 4.0}
    text = text_of(render(state))
    assert "Diagnostics" in text and "grad_norm" in text and "3.5" in text and "advantage_max_abs" in text
    assert "Replay" in text and "offpolicy_frac" in text and "0.33" in text and "age_max" in text
    assert "replay_offpolicy_frac" not in text  # shown once, under Replay, without the prefix
    assert "Replay" not in text_of(render(fold(read_events(DATA / "completed.jsonl"))))


def test_cli_table_before_any_event_says_it_waits():
    text = text_of(render(RunState(run_id="fresh")))
    assert "fresh" in text and "waiting for the trainer" in text and "Summary" in text


def test_cli_failed_run_shows_its_reason():
    state = fold(read_events(DATA / "truncated.jsonl"))
    state.apply({"type": "end", "time": 0, "status": "failed", "reason": "NaN in value_loss at epoch 12"})
    assert "failed: NaN in value_loss at epoch 12" in text_of(render(state))


def test_cli_compact_mode_prints_one_line_per_progress_event():
    out = io.StringIO()
    console = Console(file=out, width=300, color_system=None)
    state = RunState()
    events = read_events(DATA / "completed.jsonl")
    with Dashboard(console) as board:
        assert not board.live
        for event in events:
            state.apply(event)
            board.update(state, event)
    lines = out.getvalue().splitlines()
    progress = [line for line in lines if " epoch " in line and "sps" in line]
    assert len(progress) == sum(event["type"] == "progress" for event in events) == 4
    assert progress[-1].startswith("[baseline-fixture] epoch 20 steps 40.0k/40.0k sps 10.0k")
    assert "episode_return 402" in progress[-1] and "policy_loss -0.04" in progress[-1]
    assert lines[0].startswith("[baseline-fixture] start: env CartPole-v1 params 4.6k device cpu")
    assert any("warning: compiled advantage ops unavailable" in line for line in lines)
    assert lines[-1].startswith("[baseline-fixture] completed at step 40.0k after 4.2s best episode_return 402")


def test_cli_live_mode_draws_into_a_terminal():
    out = io.StringIO()
    console = Console(file=out, width=120, force_terminal=True, color_system=None)
    state = RunState(run_id="live")
    with Dashboard(console) as board:
        assert board.live
        board.start(state)
        for event in read_events(DATA / "completed.jsonl"):
            state.apply(event)
            board.update(state, event)
        board.stop(state)
    assert "Performance" in out.getvalue() and "completed" in out.getvalue()


def test_cli_formatting_helpers():
    assert sparkline([]) == ""
    assert sparkline([1.0, 1.0]) == "▅▅"
    assert sparkline([0.0, 1.0, 2.0]) == "▁▅█"
    assert len(sparkline(list(range(500)), width=32)) == 32
    assert human_count(999) == "999" and human_count(1234) == "1.2k" and human_count(5.6e6) == "5.6M"
    assert human_duration(5) == "5.0s" and human_duration(75) == "1m15s" and human_duration(3700) == "1h01m"
    assert compact_line(RunState(run_id="x")).startswith("[x] epoch 0 steps 0")
