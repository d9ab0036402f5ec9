"""Dev container lifecycle against the real test engine, over unix:// and ssh:// (the `box` fixture)."""

import json
import os

import pytest

from puffctl import boxes, containers
from puffctl.errors import PuffctlError

pytestmark = [pytest.mark.docker, pytest.mark.ssh]

IMAGE = "puffctl-test/busybox:1"
UP = ("--image", IMAGE, "--network", "none")


def test_lifecycle_through_the_cli(box, cli, git_repo):
    result = cli("container", "up", box, *UP, "--shm-size", "256m")
    assert result.exit_code == 0, result.output
    assert "created" in result.output and "puffctl-alice-dev" in result.output

    again = cli("container", "up", box, *UP)
    assert again.exit_code == 0 and "already there" in again.output

    listed = cli("container", "ls", box)
    assert listed.exit_code == 0 and "alice" in listed.output and "running" in listed.output

    synced = cli("container", "sync", box, "--repo", git_repo)
    assert synced.exit_code == 0, synced.output
    assert "synced 3 files" in synced.output and "(dirty)" in synced.output

    shown = cli("container", "exec", box, "--", "cat", "pkg/train.py", "README.md")
    assert shown.exit_code == 0
    assert "hello from the box" in shown.output and "test repo, edited" in shown.output

    untracked = cli("container", "exec", box, "--", "cat", "notes.txt")
    assert untracked.exit_code == 0  # untracked files that are not ignored are part of the described tree

    assert cli("container", "exec", f"{box}/dev", "--", "sh", "-c", "exit 3").exit_code == 3
    assert cli("container", "exec", box, "--", "true").exit_code == 0
    unknown = cli("container", "exec", box, "--", "no-such-command")
    assert unknown.exit_code == 126 and "no-such-command" in unknown.output  # Docker's code for "cannot exec"

    env = cli("container", "exec", box, "-e", "SEED=7", "-w", "/workspace/pkg", "--", "sh", "-c", "echo $SEED $PWD")
    assert env.output.strip() == "7 /workspace/pkg"

    said = cli("container", "exec", box, "--", "sh", "-c", "echo to-the-logs > /proc/1/fd/1")
    assert said.exit_code == 0
    logs = cli("container", "logs", box, "--tail", "5")
    assert logs.exit_code == 0 and "to-the-logs" in logs.output

    down = cli("container", "down", box)
    assert down.exit_code == 0 and "removed puffctl-alice-dev" in down.output
    assert "puffctl-alice-dev" not in cli("container", "ls", box).output


def test_sync_writes_provenance_and_drops_untracked_leftovers(box, git_repo, tmp_path):
    with boxes.open_box(box) as engine:
        containers.up(engine, boxes.get_box(box), image=IMAGE, network="none")
        first = containers.sync(engine, "dev", git_repo)
        assert first.source["dirty"] and len(first.source["diff_hash"]) == 64 and len(first.source["commit"]) == 40

        container = containers.resolve(engine, "dev")
        local = containers.fetch_path(engine, container.id, "/workspace/.puffctl", tmp_path / "back")
        source = json.loads((local / "source.json").read_text())
        assert source == first.source

        (git_repo / "pkg" / "train.py").unlink()
        os.system(f"git -C {git_repo} rm -q --cached pkg/train.py")
        second = containers.sync(engine, "dev", git_repo)
        assert second.removed == 1
        code = containers.run(engine, container.id, ["test", "-e", "pkg/train.py"], lambda kind, data: None)
        assert code == 1


def test_exec_streams_stdout_and_stderr_apart(box):
    with boxes.open_box(box) as engine:
        container, _ = containers.up(engine, boxes.get_box(box), image=IMAGE, network="none")
        chunks = []
        code = containers.run(engine, container.id, ["sh", "-c", "echo out; echo err >&2; exit 5"],
                              lambda kind, data: chunks.append((kind, data)))
        assert code == 5
        assert b"".join(d for k, d in chunks if k == "stdout") == b"out\n"
        assert b"".join(d for k, d in chunks if k == "stderr") == b"err\n"


def test_detached_exec_outlives_its_connection(box):
    with boxes.open_box(box) as engine:
        container, _ = containers.up(engine, boxes.get_box(box), image=IMAGE, network="none")
        exec_id = containers.exec_detached(engine, container.id, ["sh", "-c", "sleep 1; echo done; exit 4"],
                                           "/workspace/runs/r1/stdout.log")
        assert containers.exec_state(engine, exec_id)["running"]
    with boxes.open_box(box) as engine:  # a new connection, as after a lost one
        lines = []
        code = containers.run(engine, container.engine_name,
                              ["sh", "-c", "while [ ! -e runs/r1/stdout.log.exit ]; do sleep 0.1; done; "
                               "cat runs/r1/stdout.log runs/r1/stdout.log.exit"], lambda k, d: lines.append(d))
        assert code == 0 and b"".join(lines) == b"done\n4\n"
        assert containers.exec_state(engine, exec_id) == {"running": False, "exit_code": 4,
                                                          "pid": containers.exec_state(engine, exec_id)["pid"]}


def test_shell_runs_piped_commands(box, tmp_path):
    with boxes.open_box(box) as engine:
        containers.up(engine, boxes.get_box(box), image=IMAGE, network="none")
        read_fd, write_fd = os.pipe()
        os.write(write_fd, b"echo shell-says-$((6*7)); echo to-stderr >&2\nexit 3\n")
        os.close(write_fd)
        out_path = tmp_path / "out"
        with os.fdopen(read_fd, "rb") as stdin, open(out_path, "wb") as stdout, \
                open(tmp_path / "err", "wb") as stderr:
            code = containers.shell(engine, "dev", stdin=stdin, stdout=stdout, stderr=stderr)
        assert code == 3
        assert out_path.read_text() == "shell-says-42\n" and (tmp_path / "err").read_text() == "to-stderr\n"


def test_shell_ends_at_the_end_of_piped_input(box, tmp_path):
    with boxes.open_box(box) as engine:
        containers.up(engine, boxes.get_box(box), image=IMAGE, network="none")
        read_fd, write_fd = os.pipe()
        os.write(write_fd, b"echo no-exit-here\n")
        os.close(write_fd)
        with os.fdopen(read_fd, "rb") as stdin, open(tmp_path / "out", "wb") as stdout:
            assert containers.shell(engine, "dev", stdin=stdin, stdout=stdout) == 0
        assert (tmp_path / "out").read_text() == "no-exit-here\n"


def test_two_owners_share_a_box_and_cannot_remove_each_other(box, cli, monkeypatch):
    monkeypatch.setenv("PUFFCTL_OWNER", "alice")
    assert cli("container", "up", box, *UP).exit_code == 0
    monkeypatch.setenv("PUFFCTL_OWNER", "bob")
    assert cli("container", "up", box, *UP).exit_code == 0

    listed = cli("container", "ls", box).output
    assert "puffctl-alice-dev" in listed and "puffctl-bob-dev" in listed

    refused = cli("container", "down", f"{box}/puffctl-alice-dev")
    assert refused.exit_code == 2
    assert "refusing to remove container puffctl-alice-dev" in refused.output and "belongs to alice" in refused.output
    assert cli("container", "exec", f"{box}/puffctl-alice-dev", "--", "true").exit_code == 2

    assert cli("container", "down", box).exit_code == 0  # bob's own
    monkeypatch.setenv("PUFFCTL_OWNER", "alice")
    listed = cli("container", "ls", box).output
    assert "puffctl-alice-dev" in listed and "running" in listed and "puffctl-bob-dev" not in listed


def test_containers_without_puffctl_labels_are_never_touched(box, cli, clean_engine):
    stranger = clean_engine.containers.run(IMAGE, ["sleep", "infinity"], name="postgres", detach=True,
                                           network_mode="none")
    refused = cli("container", "down", f"{box}/postgres")
    assert refused.exit_code == 2 and "not created by puffctl" in refused.output
    stranger.reload()
    assert stranger.status == "running"
    assert "postgres" not in cli("container", "ls", box).output


def test_missing_image_leaves_nothing_behind(box, cli, clean_engine):
    result = cli("container", "up", box, "--image", "puffctl-test/absent:1", "--network", "none")
    assert result.exit_code == 2
    assert "image puffctl-test/absent:1 is not on box lab" in result.output and "box provision" in result.output
    assert clean_engine.containers.list(all=True) == [] and clean_engine.volumes.list() == []


def test_gpu_request_on_a_box_without_gpus_leaves_nothing_behind(box, cli, clean_engine):
    result = cli("container", "up", box, *UP, "--gpus", "all")
    assert result.exit_code == 2 and "has no GPUs" in result.output
    assert clean_engine.containers.list(all=True) == [] and clean_engine.volumes.list() == []


def test_gpu_request_on_an_engine_without_nvidia_runtime_is_rolled_back(box, cli, clean_engine):
    bx = boxes.get_box(box)
    bx.cpu_only = False
    boxes.save_registry({box: bx})
    result = cli("container", "up", box, *UP, "--gpus", "1")
    assert result.exit_code == 2 and "no NVIDIA container runtime" in result.output
    assert clean_engine.containers.list(all=True) == [] and clean_engine.volumes.list() == []


def test_failed_start_is_rolled_back(box, clean_engine):
    with boxes.open_box(box) as engine:
        with pytest.raises(PuffctlError, match="could not start"):
            containers.up(engine, boxes.get_box(box), image=IMAGE, network="no-such-network")
    assert clean_engine.containers.list(all=True) == [] and clean_engine.volumes.list() == []


def test_down_keeps_the_workspace_unless_purged(box, git_repo):
    with boxes.open_box(box) as engine:
        bx = boxes.get_box(box)
        containers.up(engine, bx, image=IMAGE, network="none")
        containers.sync(engine, "dev", git_repo)
        containers.down(engine, "dev")
        container, _ = containers.up(engine, bx, image=IMAGE, network="none")
        code = containers.run(engine, container.id, ["test", "-f", "pkg/train.py"], lambda k, d: None)
        assert code == 0  # the workspace volume survived the container
        containers.down(engine, "dev", purge=True)
        assert not [v for v in engine.client.volumes.list() if v.name == containers.volume_name("dev")]


def test_interactive_shell_on_a_terminal(box, docker_engine):
    """`puffctl container shell` in a real pseudo-terminal: raw mode, TTY exec, exit code back."""
    import pty
    import select
    import subprocess
    import sys
    import time

    with boxes.open_box(box) as engine:
        containers.up(engine, boxes.get_box(box), image=IMAGE, network="none")
    controller, terminal = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "puffctl", "container", "shell", box],
                               stdin=terminal, stdout=terminal, stderr=terminal, env=dict(os.environ))
    os.close(terminal)
    output, sent, deadline = b"", False, time.monotonic() + 30
    while process.poll() is None and time.monotonic() < deadline:
        if select.select([controller], [], [], 0.1)[0]:
            try:
                output += os.read(controller, 4096)
            except OSError:
                break
        if not sent and b"#" in output:  # the prompt
            os.write(controller, b"echo tty-$((6*7)); [ -t 0 ] && echo on-a-tty; exit 5\r")
            sent = True
    assert process.wait(timeout=10) == 5
    os.close(controller)
    assert b"tty-42" in output and b"on-a-tty" in output
