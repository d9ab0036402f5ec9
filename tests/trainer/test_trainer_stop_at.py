"""train.stop_at_steps: a run stops early (completed) on the schedule of its total_timesteps,
so its first epochs are the long run's, which a shorter total_timesteps would not give."""

from test_trainer_run import epoch_losses, read_events, run_trainer, write_config

EPOCH = 16 * 16  # SMALL's agent steps per epoch


def test_stop_at_steps_stops_early_on_the_long_runs_schedule(tmp_path):
    runs = {
        "stopped": {"total_timesteps": EPOCH * 8, "stop_at_steps": EPOCH * 2},
        "long": {"total_timesteps": EPOCH * 8},
        "short": {"total_timesteps": EPOCH * 2},  # what `steps` in an ablation spec does
    }
    losses = {}
    for name, train in runs.items():
        config = write_config(tmp_path, {"train": {**train, "checkpoint_interval": 0}}, name=f"{name}.yaml")
        done = run_trainer(config, tmp_path / name)
        assert done.returncode == 0, done.stderr
        losses[name] = epoch_losses(read_events(tmp_path / name))
    events = read_events(tmp_path / "stopped")
    end = events[-1]
    assert (end["type"], end["status"], end["agent_steps"]) == ("end", "completed", EPOCH * 2)
    assert {event["total_steps"] for event in events if event["type"] in ("start", "progress")} == {EPOCH * 2}
    assert sorted(losses["stopped"]) == [1, 2]
    assert all(losses["stopped"][epoch] == losses["long"][epoch] for epoch in range(1, 3))
    assert any(losses["short"][epoch] != losses["long"][epoch] for epoch in range(1, 3))
