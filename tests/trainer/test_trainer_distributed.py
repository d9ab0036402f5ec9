"""One run on two ranks through torchrun (gloo, 2 CPU processes), real parts: `puffctl train --nproc 2`
learns CartPole with both ranks' parameters identical after every update and one event stream;
a killed rank ends the run, which resumes on one process; the box command; bad world sizes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from puffctl.events import read_events

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "COLUMNS": "500", "PYTHONUNBUFFERED": "1"}
SMALL = {
    "env": {"name": "gym:CartPole-v1", "num_envs": 16},
    "train": {"total_timesteps": 16 * 16 * 2 * 40, "bptt_horizon": 16, "minibatch_size": 128,
              "checkpoint_interval": 2, "cpu_threads": 1, "optimizer": "adam", "learning_rate": 0.01,
              "world_size": 2},
    "logger": {"progress_interval": 0},
}


def of_type(events: list[dict], kind: str) -> list[dict]:
    return [event for event in events if event["type"] == kind]


def test_two_ranks_learn_cartpole_in_step_with_one_event_stream(tmp_path):
    hashes = tmp_path / "hashes"
    result = subprocess.run(
        [sys.executable, "-m", "puffctl", "train", "baseline", "--nproc", "2", "--steps", "61440", "--seed", "1",
         "--name", "ddp", "--no-dashboard", "--runs-dir", str(tmp_path / "runs"),
         "--set", "logger.progress_interval=0"],  # a progress event every epoch, however fast the machine
        cwd=REPO, capture_output=True, text=True, env={**ENV, "PUFFCTL_PARAM_HASHES": str(hashes)}, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    run_dir = tmp_path / "runs" / "ddp"
    assert [path.relative_to(run_dir) for path in run_dir.rglob("events.jsonl")] == [Path("events.jsonl")]
    events = read_events(run_dir / "events.jsonl")
    (start,), (end,) = of_type(events, "start"), of_type(events, "end")
    assert start["world_size"] == 2 and start["config"]["train"]["world_size"] == 2
    assert end["status"] == "completed" and end["agent_steps"] == 61440  # 30 epochs of 2 ranks x 1024 steps
    returns = [event["env"]["episode_return"] for event in of_type(events, "progress") if event["env"]]
    assert returns[0] < 40 and max(returns[-3:]) > 100, returns
    rank0, rank1 = ((hashes / f"rank{rank}.txt").read_text().splitlines() for rank in (0, 1))
    assert len(rank0) == 30 * 2  # one line per update: 30 epochs of 2 minibatches
    assert rank0 == rank1
    assert len({line.split()[1] for line in rank0}) == len(rank0)  # and the parameters did move
    assert json.loads((run_dir / "launch.json").read_text())["command"][1:3] == ["-m", "trainer.distributed"]


def rank_pid(launcher: int, rank: int) -> int | None:
    """The pid of the rank `rank` child of torchrun's process `launcher`."""
    children = Path(f"/proc/{launcher}/task/{launcher}/children")
    for pid in children.read_text().split() if children.exists() else []:
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ:
            return int(pid)
    return None


def test_a_killed_rank_ends_the_run_and_it_resumes_on_one_process(tmp_path):
    config, run_dir = tmp_path / "config.yaml", tmp_path / "run"
    config.write_text(yaml.safe_dump(SMALL))
    group = subprocess.Popen([sys.executable, "-m", "trainer.distributed", "--nproc", "2", "--config", str(config),
                              "--run-dir", str(run_dir)], cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (run_dir / "events.jsonl").exists() or not of_type(read_events(run_dir / "events.jsonl"), "checkpoint"):
        assert time.monotonic() < deadline and group.poll() is None, "no checkpoint"
        time.sleep(0.05)
    os.kill(rank_pid(group.pid, 1), signal.SIGKILL)
    assert group.wait(timeout=90) == 1, group.stderr.read()
    events = read_events(run_dir / "events.jsonl")
    (end,) = of_type(events, "end")
    assert end["status"] == "failed" and end["cause"] == "error" and events[-1] == end  # torchrun's SIGTERM comes after
    assert json.loads((run_dir / "status.json").read_text())["status"] == "failed"
    saved = of_type(events, "checkpoint")[-1]

    resumed = subprocess.run([sys.executable, "-m", "trainer", "--resume", "--run-dir", str(run_dir)], cwd=REPO,
                             env=ENV, capture_output=True, text=True, timeout=180)
    assert resumed.returncode == 0, resumed.stderr
    events = read_events(run_dir / "events.jsonl")
    start = of_type(events, "start")[-1]
    assert start["resumed"] and start["world_size"] == 1 and start["epoch"] == saved["epoch"]
    texts = [event["text"] for event in of_type(events, "message")]
    assert not [text for text in texts if "fresh episodes" in text]  # rank 0's envs came back
    assert "resumed on 1 rank(s) from a checkpoint of 2 (rank 1: episodes dropped; docs/scale.md)" in texts
    end = of_type(events, "end")[-1]
    assert end["status"] == "completed" and end["agent_steps"] == SMALL["train"]["total_timesteps"]
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["world_size"] == 1
    # half the steps per epoch on one rank: the epochs after the checkpoint count 256 steps each
    assert end["epoch"] == saved["epoch"] + (end["agent_steps"] - saved["agent_steps"]) // 256


def test_a_world_size_needs_as_many_ranks(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(SMALL))
    done = subprocess.run([sys.executable, "-m", "trainer", "--config", str(config), "--run-dir", str(tmp_path / "r")],
                          cwd=REPO, env=ENV, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: train.world_size=2 but this trainer is 1 process(es): start it with "
        "`python -m trainer.distributed --nproc 2 ...` (puffctl train does)"]


def test_the_box_command_starts_torchrun_and_needs_a_gpu_per_rank(tmp_path):
    from puffctl import launch, remote

    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"train": {"world_size": 4}}))
    assert remote.trainer_args(tmp_path) == ["-m", "trainer.distributed", "--nproc", "4", "--config", "config.yaml",
                                             "--run-dir", "."]
    launch.set_world_size(tmp_path, 1)
    assert remote.trainer_args(tmp_path) == ["-m", "trainer", "--config", "config.yaml", "--run-dir", "."]
    done = subprocess.run([sys.executable, "-m", "puffctl", "train", "baseline", "--box", "b", "--gpu", "0,1",
                           "--nproc", "4", "--runs-dir", str(tmp_path)], cwd=REPO, env=ENV, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip() == "error: --nproc 4 needs a GPU per rank: --gpu 0,1 lists 2"


def _agree_rank(rank: int, port: int, out: str) -> None:
    """Rank `rank` of a 2-rank gloo group: 300 'epochs' of one gradient exchange and `Group.agree`;
    rank 1 raises a stop flag at epoch 37, rank 0 raises a report flag from epoch 100 until a report
    is agreed (as the run's clock does), both raise stop on the last epoch (with `now`). Writes what
    it saw, its averaged gradients and how many collectives it made."""
    import torch
    import torch.distributed as dist

    from trainer.distributed import Group

    os.environ.update(RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    group = Group.start("cpu")
    calls = []
    for name in ("all_gather_single", "all_reduce", "broadcast", "gather_object"):
        collective = getattr(dist, name)
        setattr(dist, name, lambda *args, _collective=collective, **kwargs: calls.append(1) or _collective(*args, **kwargs))
    layer = torch.nn.Linear(3, 2)
    seen, averaged, reported = [], set(), False
    for epoch in range(300):
        for param in layer.parameters():
            param.grad = torch.full_like(param, rank + 1.0)
        group.average_gradients(layer)
        averaged |= {value for param in layer.parameters() for value in param.grad.flatten().tolist()}
        last = epoch == 299
        flags = group.agree((rank == 1 and epoch == 37) or last, rank == 0 and epoch >= 100 and not reported, now=last)
        reported = reported or flags[1]
        if any(flags):
            seen.append([epoch, *flags])
    group.close()
    Path(out, f"{rank}.json").write_text(json.dumps({"seen": seen, "calls": len(calls), "averaged": sorted(averaged)}))


def test_ranks_agree_on_flags_carried_by_the_gradient_exchange(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(_agree_rank, args=(port, str(tmp_path)), nprocs=2)
    rank0, rank1 = (json.loads((tmp_path / f"{rank}.json").read_text()) for rank in (0, 1))
    assert rank0["seen"] == rank1["seen"]  # the same flags at the same epochs on both ranks
    # raised after an epoch's exchange, agreed after the next one's; a report answers its repeated raises once
    assert rank0["seen"] == [[38, True, False], [101, False, True], [299, True, False]]  # `now` agrees at once
    assert rank0["averaged"] == rank1["averaged"] == [1.5]  # the mean of 1 and 2, on both ranks
    assert rank0["calls"] == rank1["calls"] == 300 + 1  # one per gradient exchange, one for `now`


def test_cpu_ranks_each_bind_to_their_own_share_of_the_cpus():
    probe = ("import os, sys; from trainer.distributed import bind_to_cpu_share; "
             "os.sched_setaffinity(0, {0, 1}); bind_to_cpu_share(int(sys.argv[1]), int(sys.argv[2])); "
             "print(sorted(os.sched_getaffinity(0)))")
    shares = [subprocess.run([sys.executable, "-c", probe, str(rank), str(ranks)], cwd=REPO, capture_output=True,
                             text=True, check=True).stdout.strip() for rank, ranks in ((0, 2), (1, 2), (0, 1), (2, 3))]
    assert shares == ["[0]", "[1]", "[0, 1]", "[0, 1]"]  # more ranks than CPUs: left where they were
