"""`python -m trainer` as a real subprocess: event stream schema, status.json, exit codes,
SIGINT -> interrupted, SIGKILL -> exact resume, divergence -> failed, bad input -> exit 2."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[2]

SMALL = {
    "env": {"name": "gym:CartPole-v1", "num_envs": 16},
    "train": {"total_timesteps": 16 * 16 * 12, "bptt_horizon": 16, "minibatch_size": 128,
              "checkpoint_interval": 4, "cpu_threads": 1, "optimizer": "adam", "learning_rate": 0.01},
    "logger": {"progress_interval": 0},
}


def write_config(tmp_path, overrides=None, name="config.yaml"):
    config = {section: dict(values) for section, values in SMALL.items()}
    for section, values in (overrides or {}).items():
        config.setdefault(section, {}).update(values)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path


def trainer_cmd(config, run_dir, *extra):
    return [sys.executable, "-m", "trainer", "--config", str(config), "--run-dir", str(run_dir), *extra]


def run_trainer(config, run_dir, *extra, timeout=120):
    return subprocess.run(trainer_cmd(config, run_dir, *extra), cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def read_events(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "events.jsonl").read_text().splitlines()]


def epoch_losses(events):
    return {e["epoch"]: e["losses"] for e in events if e["type"] == "progress"}


def wait_for(predicate, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError("timed out")


def test_events_stdout_stays_json_with_the_neptune_sink(tmp_path, monkeypatch):
    for name in ("NEPTUNE_API_TOKEN", "NEPTUNE_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    run_dir = tmp_path / "run-n"
    done = run_trainer(write_config(tmp_path, {"logger": {"backend": "neptune"}}), run_dir, "--events-stdout")
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]  # every line is an event
    assert events == read_events(run_dir)
    assert any(e["type"] == "message" and "Neptune logging offline" in e["text"] for e in events)


def test_event_stream_status_and_run_dir_follow_docs_events(tmp_path):
    run_dir = tmp_path / "run-a"
    done = run_trainer(write_config(tmp_path), run_dir, "--events-stdout")
    assert done.returncode == 0, done.stderr
    events = read_events(run_dir)
    assert [json.loads(line) for line in done.stdout.splitlines()] == events
    for event in events:
        assert {"type", "time", "run_id"} <= set(event) and event["run_id"] == "run-a"
    start, end = events[0], events[-1]
    assert start["type"] == "start" and end["type"] == "end"
    assert {"config", "git", "host", "device", "params", "total_steps", "resumed", "epoch", "agent_steps"} <= set(start)
    assert start["resumed"] is False and start["device"] == "cpu" and start["params"] > 0
    assert start["config"] == yaml.safe_load((run_dir / "config.yaml").read_text())
    assert start["config"]["train"]["batch_size"] == 256  # resolved, not "auto"
    progress = [e for e in events if e["type"] == "progress"]
    assert [e["epoch"] for e in progress] == list(range(1, 13))  # progress_interval 0: every epoch
    for event in progress:
        assert {"epoch", "agent_steps", "total_steps", "sps", "uptime", "eta", "perf", "losses", "env", "util"} <= set(event)
        assert set(event["perf"]) == {"evaluate", "train"}
        assert set(event["perf"]["evaluate"]) == {"total", "forward", "env", "copy", "misc"}
        assert set(event["perf"]["train"]) == {"total", "forward", "learn", "copy", "misc"}
        assert {"policy_loss", "value_loss", "entropy", "old_approx_kl", "approx_kl", "clipfrac",
                "importance", "explained_variance"} <= set(event["losses"])
        assert set(event["util"]) == {"cpu_percent", "dram_percent", "gpu_percent", "vram_percent"}
        assert event["sps"] > 0
    assert {"episode_return", "episode_length"} <= set(progress[-1]["env"])
    checkpoints = [e for e in events if e["type"] == "checkpoint"]
    assert [e["epoch"] for e in checkpoints] == [4, 8, 12]
    assert all((run_dir / e["path"]).is_file() for e in checkpoints[-1:])
    assert end["status"] == "completed" and end["reason"] is None and end["agent_steps"] == 16 * 16 * 12
    assert {"losses", "env"} <= set(end["metrics"])
    status = json.loads((run_dir / "status.json").read_text())
    assert {"run_id", "status", "pid", "host", "started", "updated", "epoch", "agent_steps", "reason"} <= set(status)
    assert status["status"] == "completed" and status["epoch"] == 12
    again = run_trainer(write_config(tmp_path), run_dir, "--resume")
    assert again.returncode == 2 and "already completed" in again.stderr


@pytest.mark.parametrize("overrides, words", [
    ({"train": {"minibatch_size": 100}}, "train.minibatch_size=100 must be a multiple"),
    ({"train": {"lerning_rate": 0.1}}, "did you mean train.learning_rate?"),
    ({"env": {"name": "gym:NoSuchEnv-v0"}}, "env.name='gym:NoSuchEnv-v0'"),
])
def test_bad_config_exits_2_with_one_line(tmp_path, overrides, words):
    done = run_trainer(write_config(tmp_path, overrides), tmp_path / "bad")
    assert done.returncode == 2
    assert words in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_checkpoints_and_ends_interrupted(tmp_path, signum):
    run_dir = tmp_path / "int"
    config = write_config(tmp_path, {"train": {"total_timesteps": 10**8, "checkpoint_interval": 0}})
    process = subprocess.Popen(trainer_cmd(config, run_dir), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for(lambda: (run_dir / "events.jsonl").is_file() and '"progress"' in (run_dir / "events.jsonl").read_text())
    process.send_signal(signum)
    assert process.wait(timeout=60) == 130
    events = read_events(run_dir)
    end = events[-1]
    assert end["type"] == "end" and end["status"] == "interrupted" and signum.name in end["reason"]
    checkpoint = [e for e in events if e["type"] == "checkpoint"][-1]
    assert checkpoint["epoch"] == end["epoch"] and (run_dir / checkpoint["path"]).is_file()
    assert json.loads((run_dir / "status.json").read_text())["status"] == "interrupted"
    resumed = run_trainer(write_config(tmp_path, {"train": {"total_timesteps": (end["epoch"] + 2) * 256,
                                                            "checkpoint_interval": 0}}),
                          run_dir, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    start = [e for e in read_events(run_dir) if e["type"] == "start"][-1]
    assert start["resumed"] is True and start["epoch"] == end["epoch"]


@pytest.mark.parametrize("env", ["gym:CartPole-v1", "puffer:memory"])
def test_sigkill_then_resume_reproduces_the_uninterrupted_losses(tmp_path, env):
    overrides = {"env": {"name": env}, "policy": {"lstm": env == "puffer:memory"},
                 "train": {"total_timesteps": 256 * 24, "optimizer": "muon", "learning_rate": 0.01}}
    config = write_config(tmp_path, overrides)
    straight = run_trainer(config, tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr
    run_dir = tmp_path / "killed"
    process = subprocess.Popen(trainer_cmd(config, run_dir), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: (run_dir / "checkpoints" / "epoch_00000008.pt").is_file())
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    killed_at = max(epoch_losses(read_events(run_dir)))
    assert killed_at < 24
    resumed = run_trainer(config, run_dir, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    events = read_events(run_dir)
    starts = [e for e in events if e["type"] == "start"]
    assert len(starts) == 2 and starts[1]["resumed"] is True
    resume_epoch = starts[1]["epoch"]
    assert resume_epoch >= 8
    resumed_losses = {e["epoch"]: e["losses"] for e in events[events.index(starts[1]):] if e["type"] == "progress"}
    expected = epoch_losses(read_events(tmp_path / "straight"))
    assert sorted(resumed_losses) == list(range(resume_epoch + 1, 25))
    for epoch, losses in resumed_losses.items():
        assert losses == expected[epoch], f"epoch {epoch} differs after resume"


def test_divergence_fails_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    run_dir = tmp_path / "nan"
    healthy = write_config(tmp_path, {"train": {"total_timesteps": 10**8, "checkpoint_interval": 1}})
    process = subprocess.Popen(trainer_cmd(healthy, run_dir), cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    wait_for(lambda: (run_dir / "checkpoints" / "epoch_00000002.pt").is_file())
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 130
    good = checkpoint_files(run_dir)
    # resuming with an absurd learning rate (a resume may change it) blows the weights up
    absurd = write_config(tmp_path, {"train": {"total_timesteps": 10**8, "checkpoint_interval": 1,
                                               "learning_rate": 1e30}}, name="absurd.yaml")
    done = run_trainer(absurd, run_dir, "--resume")
    assert done.returncode == 1
    end = read_events(run_dir)[-1]
    assert end["type"] == "end" and end["status"] == "failed" and "non-finite" in end["reason"]
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "failed" and status["reason"] == end["reason"]
    assert checkpoint_files(run_dir) == good  # nothing written after the divergence
    latest = torch.load(run_dir / "checkpoints" / max(name for name in good if name.endswith(".pt")), weights_only=False)
    assert all(torch.isfinite(v).all() for v in latest["policy"].values())
    changed = write_config(tmp_path, {"train": {"total_timesteps": 10**8, "gamma": 0.9}}, name="changed.yaml")
    refused = run_trainer(changed, run_dir, "--resume")
    assert refused.returncode == 2 and "train.gamma" in refused.stderr
    finish = write_config(tmp_path, {"train": {"total_timesteps": (latest["epoch"] + 2) * 256}}, name="finish.yaml")
    resumed = run_trainer(finish, run_dir, "--resume")  # the last good checkpoint carries on
    assert resumed.returncode == 0, resumed.stderr
    assert read_events(run_dir)[-1]["status"] == "completed"


def checkpoint_files(run_dir):
    """{name: bytes} of the run's checkpoint files."""
    return {p.name: p.read_bytes() for p in sorted((run_dir / "checkpoints").iterdir())}


def test_a_second_sigint_stops_at_once(tmp_path):
    run_dir = tmp_path / "twice"
    # big epochs (16 envs x 16 steps x 64 rows) so the second signal lands inside the first's epoch
    config = write_config(tmp_path, {"train": {"total_timesteps": 10**8, "batch_size": 16 * 16 * 64,
                                               "checkpoint_interval": 0}})
    process = subprocess.Popen(trainer_cmd(config, run_dir), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for(lambda: (run_dir / "events.jsonl").is_file() and '"start"' in (run_dir / "events.jsonl").read_text())
    process.send_signal(signal.SIGINT)
    wait_for(lambda: '"message"' in (run_dir / "events.jsonl").read_text())
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=30) == 130
    end = read_events(run_dir)[-1]
    assert end["type"] == "end" and end["status"] == "interrupted"
    assert json.loads((run_dir / "status.json").read_text())["status"] == "interrupted"


EXIT_PROBE = """
import atexit, sys, threading, time
from pathlib import Path
from trainer.__main__ import exit_without_teardown
out = Path(sys.argv[1])
atexit.register(lambda: (out / "handler").write_text("ran"))
threading.Thread(target=lambda: (time.sleep(0.3), (out / "thread").write_text("joined"))).start()
print("buffered, no newline", end="")
exit_without_teardown(3)
"""


def test_the_trainer_exits_without_teardown_but_with_its_handlers_threads_and_output(tmp_path):
    # `python -m trainer` ends through exit_without_teardown: torch's module teardown cost 0.6-1.5 s a run.
    done = subprocess.run([sys.executable, "-c", EXIT_PROBE, str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 3 and done.stdout == "buffered, no newline", done.stderr
    assert (tmp_path / "handler").read_text() == "ran" and (tmp_path / "thread").read_text() == "joined"
