"""Runs on a box: the real trainer inside a container on the test engine, reached over ssh://."""

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from puffctl import boxes, remote, runs
from puffctl.errors import PuffctlError
from boxes_realparts import ssh_masters  # tests/tooling, on the path through conftest.py

pytestmark = [pytest.mark.docker, pytest.mark.ssh]
REPO = Path(__file__).resolve().parents[2]


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return value


def remote_file(docker_client, run_id: str, name: str) -> bytes:
    container = docker_client.containers.get("puffctl-alice-dev")
    stream, _ = container.get_archive(f"{remote.REMOTE_ROOT}/{run_id}/{name}")
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
        return tar.extractfile(tar.next()).read()


@pytest.fixture(scope="module")
def dev_container(docker_engine, python_image, tmp_path_factory):
    """alice's dev container from the Python image, made once for this module (an image copy costs seconds)."""
    from puffctl import containers

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PUFFCTL_CONFIG_DIR", str(tmp_path_factory.mktemp("config")))
        patch.setenv("PUFFCTL_OWNER", "alice")
        boxes.add_box("lab", docker_engine.url, cpu_only=True)
        with boxes.open_box("lab") as engine:
            made, _ = containers.up(engine, boxes.get_box("lab"), image=python_image, network="none")
        yield made
    import docker

    slow = docker.DockerClient(base_url=docker_engine.url, version="auto", timeout=900)  # vfs removes file by file
    slow.containers.get(made.engine_name).remove(force=True)
    slow.volumes.get(containers.volume_name("dev", "alice")).remove(force=True)
    slow.close()


@pytest.fixture
def ssh_box(config_dir, dev_container, sshd, monkeypatch, tmp_path):
    """Box 'lab' over ssh:// holding alice's dev container; the CLI's environment and runs root."""
    monkeypatch.setenv("PUFFCTL_SSH_CONFIG", str(sshd.client_config))
    monkeypatch.setenv("PUFFCTL_RUNS_DIR", str(tmp_path / "runs"))
    boxes.add_box("lab", f"ssh://{sshd.alias}", cpu_only=True)
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    return env, tmp_path / "runs"


def puffctl(env, *args: str, **options) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "puffctl", *args], env=env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **options)


def cli_line(env, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "puffctl", *args], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=120)


TRAIN = ("train", "baseline", "--box", "lab", "--steps", "150000", "--set", "logger.progress_interval=0.2",
         "--no-dashboard")


@pytest.mark.deadline(300)
def test_train_on_box_survives_a_dropped_connection_and_attach_copies_it_back(ssh_box, docker_client):
    env, root = ssh_box
    # long enough to still be running on the box when `runs list` looks (150K steps end in ~6 s on a quiet machine)
    trainer = puffctl(env, *TRAIN, "--steps", "600000", "--name", "far")
    events = root / "far" / "events.jsonl"
    wait_for(lambda: events.exists() and events.read_text().count('"type":"progress"') >= 2, 90, "progress events")
    for pid in wait_for(lambda: ssh_masters(trainer.pid), 10, "the ssh master"):
        os.kill(pid, signal.SIGKILL)  # the connection drops mid-run; the CLI reconnects and resumes
    seen = events.stat().st_size
    wait_for(lambda: events.stat().st_size > seen, 60, "events after the reconnect")
    trainer.kill()  # the laptop goes away; the run goes on on the box
    trainer.wait()
    assert "started far on lab/dev" in trainer.stdout.read()

    listed = cli_line(env, "runs", "list")
    assert "far" in listed.stdout and "lab" in listed.stdout and "running" in listed.stdout, listed.stdout

    attached = puffctl(env, "runs", "attach", "far", "--no-dashboard")
    output, _ = attached.communicate(timeout=100)
    assert attached.returncode == 0, output
    assert "completed" in output and "copied back" in output

    local = events.read_bytes()
    assert local == remote_file(docker_client, "far", "events.jsonl")
    lines = [json.loads(line) for line in local.decode().splitlines()]
    assert [e["type"] for e in lines].count("start") == 1 and lines[-1]["type"] == "end"
    progress = [e["epoch"] for e in lines if e["type"] == "progress"]
    assert progress == sorted(set(progress))  # nothing repeated, nothing out of order
    run = runs.get_run(root, "far")
    assert run.status == "completed" and run.checkpoint_files()
    assert (root / "far" / "status.json").is_file() and (root / "far" / "stdout.log").is_file()
    source = json.loads((root / "far" / "source.json").read_text())
    assert run.state.git["commit"] == source["commit"]  # the synced tree's provenance, recorded by the trainer
    done = cli_line(env, "train", "--resume", "far")
    assert done.returncode == 2 and "run 'far' already completed; nothing to resume" in done.stderr, done.stderr


@pytest.mark.deadline(400)
def test_runs_stop_checkpoints_a_remote_run_and_resume_continues_it_on_its_box(ssh_box, docker_client):
    env, root = ssh_box
    # long enough that the resumed trainer still runs when the second resume asks (stopped again below)
    trainer = puffctl(env, *TRAIN, "--steps", "600000", "--name", "halt", "--detach")
    output, _ = trainer.communicate(timeout=100)
    assert trainer.returncode == 0 and "started halt on lab/dev" in output, output
    events = root / "halt" / "events.jsonl"
    attached = puffctl(env, "runs", "attach", "halt", "--no-dashboard")
    wait_for(lambda: events.exists() and '"type":"progress"' in events.read_text(), 90, "progress events")
    stopped = cli_line(env, "runs", "stop", "halt")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    output, _ = attached.communicate(timeout=60)
    assert attached.returncode == 130 and "interrupted" in output, output
    run = runs.get_run(root, "halt")
    assert run.status == "interrupted" and run.checkpoint_files()
    stopped_at = [json.loads(line) for line in events.read_text().splitlines()][-1]["epoch"]

    resumed = cli_line(env, "train", "--resume", "halt", "--detach")
    assert resumed.returncode == 0 and "resumed halt on lab/dev" in resumed.stdout, resumed.stdout + resumed.stderr
    again = cli_line(env, "train", "--resume", "halt", "--detach")  # its trainer holds the run's lock on the box
    assert again.returncode == 2 and "cannot resume halt: box lab: run halt is in use by" in again.stderr, again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
    attached = puffctl(env, "runs", "attach", "halt", "--no-dashboard")
    wait_for(lambda: '"type":"progress"' in events.read_text().partition('"resumed":true')[2], 90,
             "progress after the resume")
    assert cli_line(env, "runs", "stop", "halt").returncode == 0
    output, _ = attached.communicate(timeout=60)
    assert attached.returncode == 130 and "copied back" in output, output

    local = events.read_bytes()
    assert local == remote_file(docker_client, "halt", "events.jsonl")
    lines = [json.loads(line) for line in local.decode().splitlines()]
    starts = [e for e in lines if e["type"] == "start"]
    assert [e["resumed"] for e in starts] == [False, True] and starts[1]["epoch"] == stopped_at
    after = [e["epoch"] for e in lines[lines.index(starts[1]):] if e["type"] == "progress"]
    assert after and after[0] > stopped_at and after == sorted(set(after))  # continues from the checkpoint
    assert runs.read_json(root / "halt" / runs.LAUNCH_FILE)["resumes"] == 1

    boxes.set_box("lab", host=f"ssh://127.0.0.1:{closed_port()}")
    away = cli_line(env, "train", "--resume", "halt")
    assert away.returncode == 1 and away.stderr.startswith("error: cannot resume halt: box lab: unreachable"), away.stderr
    assert len(away.stderr.strip().splitlines()) == 1


def closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again: connections are refused


def test_a_run_whose_box_is_unreachable_lists_as_unreachable(config_dir, tmp_path, monkeypatch):
    boxes.add_box("gone", f"ssh://127.0.0.1:{closed_port()}")
    path = tmp_path / "runs" / "away"
    path.mkdir(parents=True)
    runs.write_json(path / runs.LAUNCH_FILE, {"profile": "baseline", "remote": {
        "box": "gone", "container": "dev", "container_id": "0" * 64, "dir": "/workspace/runs/away"}})
    found = runs.list_runs(tmp_path / "runs")
    assert [run.status for run in found] == ["running"]
    assert remote.remote_statuses(found) == {"away": "unreachable"}


def crafted(*members: tarfile.TarInfo) -> io.BytesIO:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for member in members:
            tar.addfile(member, io.BytesIO(b"x" * member.size) if member.isreg() else None)
    buffer.seek(0)
    return buffer


def member(name: str, kind=tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    info.size = 1 if kind == tarfile.REGTYPE else 0
    return info


@pytest.mark.parametrize("bad, why", [
    (member("run/../escape.txt"), "outside"),
    (member("/etc/passwd"), "outside"),
    (member("other/file"), "outside"),
    (member("run/link", tarfile.SYMTYPE, "/etc/passwd"), "link"),
    (member("run/inner", tarfile.SYMTYPE, "events.jsonl"), "link"),
    (member("run/hard", tarfile.LNKTYPE, "run/events.jsonl"), "link"),
    (member("run/fifo", tarfile.FIFOTYPE), "special"),
])
def test_copy_back_refuses_members_outside_the_run_or_links(tmp_path, bad, why):
    archive = crafted(member("run", tarfile.DIRTYPE), member("run/events.jsonl"), bad)
    with pytest.raises(PuffctlError, match=why):
        remote.extract_run(archive, "run", tmp_path / "dest")
    assert not (tmp_path / "escape.txt").exists()
    assert not any(p.is_symlink() for p in (tmp_path / "dest").rglob("*")) if (tmp_path / "dest").exists() else True


def test_copy_back_extracts_a_clean_run_directory(tmp_path):
    archive = crafted(member("run", tarfile.DIRTYPE), member("run/checkpoints", tarfile.DIRTYPE),
                      member("run/checkpoints/epoch_1.pt"), member("run/events.jsonl"))
    names = remote.extract_run(archive, "run", tmp_path)
    assert names == ["run", "run/checkpoints", "run/checkpoints/epoch_1.pt", "run/events.jsonl"]
    assert (tmp_path / "run" / "checkpoints" / "epoch_1.pt").read_bytes() == b"x"


def test_gpu_option_and_box_checks(config_dir):
    assert remote.parse_gpus("1") == "1" and remote.parse_gpus("0,3") == "0,3"
    for bad in ("a", "0,0", "1,", "-1"):
        with pytest.raises(PuffctlError, match="bad --gpu"):
            remote.parse_gpus(bad)
    boxes.add_box("cpu", "unix:///nonexistent.sock", cpu_only=True)
    with pytest.raises(PuffctlError, match="CPU-only"):
        remote.check_box("cpu", "0")
    boxes.add_box("gpu", "unix:///nonexistent.sock")
    boxes.record_health("gpu", {"status": "healthy", "gpus": {"gpus": [{"index": 0}, {"index": 1}]}})
    assert remote.check_box("gpu", "1").name == "gpu"
    with pytest.raises(PuffctlError, match="no GPU 2"):
        remote.check_box("gpu", "0,2")
    boxes.record_health("gpu", {"status": "unhealthy", "failed": ["gpus"]})
    with pytest.raises(PuffctlError, match="failed its last check"):
        remote.check_box("gpu", None)


def test_container_info_reads_the_image_python_packages_and_workspace(ssh_box, cli):
    from puffctl import containers

    with boxes.open_box("lab") as engine:
        synced = containers.sync(engine, "dev", REPO)
    result = cli("container", "info", "lab")
    assert result.exit_code == 0, result.output
    import torch

    assert "puffctl-test/python:1" in result.output and f"python     {sys.version.split()[0]}" in result.output
    assert f"torch {torch.__version__}" in result.output and "gymnasium" in result.output
    assert f"workspace  {synced.source['commit']}" in result.output
    assert "extension" in result.output and "MiB in /workspace" in result.output


@pytest.mark.deadline(400)
def test_ablate_on_two_boxes_uses_every_slot_and_skips_unhealthy_boxes(ssh_box, docker_engine, tmp_path):
    import yaml

    env, _ = ssh_box
    boxes.add_box("lab2", docker_engine.url, cpu_only=True)  # the same engine, reached over unix://: a second box
    boxes.add_box("sick", docker_engine.url, cpu_only=True)
    boxes.record_health("sick", {"status": "unhealthy", "failed": ["disk"]})
    boxes.add_box("gone", "unix:///nonexistent/docker.sock", cpu_only=True)
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"name": "spread", "steps": 4096, "seeds": 1, "retries": 0, "where": "boxes",
                                    "variants": [{"label": "puff", "profile": "baseline"},
                                                 {"label": "gae", "profile": "baseline",
                                                  "set": {"train.advantage": "gae"}}]}))
    done = subprocess.run([sys.executable, "-m", "puffctl", "ablate", "run", str(spec), "--dir",
                           str(tmp_path / "ablations")], env=env, cwd=REPO, capture_output=True, text=True, timeout=380)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "box sick skipped: failed its last check (disk)" in output
    assert "box gone skipped:" in output and "2 cells on 2 slot(s)" in output
    cells = runs.read_json(tmp_path / "ablations" / "spread" / "state.json")["cells"]
    assert {c["status"] for c in cells.values()} == {"completed"} and len(cells) == 2
    assert {c["slot"] for c in cells.values()} == {"lab/cpu0", "lab2/cpu0"}
    for cell_id in cells:
        run = runs.get_run(tmp_path / "ablations" / "spread" / "runs", cell_id)
        assert run.status == "completed" and run.checkpoint_files()  # copied back from the box


def test_a_leased_trainer_stops_itself_when_nobody_renews_the_lease(tmp_path):
    sleeper = subprocess.Popen(["sleep", "60"])
    (tmp_path / remote.PID_FILE).write_text(str(sleeper.pid))
    (tmp_path / "lease").write_text("")
    old = time.time() - 10
    os.utime(tmp_path / "lease", (old, old))
    watcher = subprocess.Popen([sys.executable, "-c", remote.LEASE, "2"], cwd=tmp_path)
    assert sleeper.wait(timeout=10) == -signal.SIGINT  # asked to checkpoint and stop
    (tmp_path / remote.EXIT_FILE).write_text("130\n")
    assert watcher.wait(timeout=10) == 0


def test_a_cell_whose_box_stays_away_is_reassigned_after_the_limit(config_dir):
    from puffctl.executors.boxes import BoxExecutor, parse_duration

    boxes.add_box("gone", "unix:///nonexistent/docker.sock", cpu_only=True)
    handle = {"executor": "boxes", "box": "gone", "slot": "gone/cpu0", "run_dir": "/nonexistent",
              "remote": {"box": "gone", "container": "dev", "container_id": "0" * 64, "dir": "/workspace/runs/x"}}
    patient = BoxExecutor(["gone"], on_line=lambda text: None)
    assert patient.poll(handle) is None  # away: re-attached when it returns
    hasty = BoxExecutor(["gone"], reassign_after=0.5, on_line=lambda text: None)
    assert hasty.poll(handle) is None
    time.sleep(1.1)
    exited = hasty.poll(handle)
    assert exited is not None and exited.returncode is None and "reassigned" in exited.detail
    assert parse_duration("10m") == 600 and parse_duration("90") == 90
    with pytest.raises(PuffctlError, match="bad duration"):
        parse_duration("soon")
