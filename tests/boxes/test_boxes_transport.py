"""Transport: one SSH connection per command, fast one-line failures for unreachable boxes."""

import shutil
import time

import psutil
import pytest

from puffctl import boxes, containers, engine
from puffctl.containers import ConnectionLost
from puffctl.errors import PuffctlError

pytestmark = [pytest.mark.docker, pytest.mark.ssh]

IMAGE = "puffctl-test/busybox:1"


@pytest.fixture
def ssh_env(sshd, config_dir, clean_engine, monkeypatch):
    monkeypatch.setenv("PUFFCTL_SSH_CONFIG", str(sshd.client_config))
    return sshd


def _masters() -> list[str]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if "ControlPath=" in cmdline and "puffctl-ssh-" in cmdline:
            found.append(cmdline)
    return found


def test_one_ssh_connection_per_command(ssh_env, cli, git_repo):
    sshd = ssh_env
    boxes.add_box("remote", f"ssh://{sshd.alias}", cpu_only=True)
    counts = {}
    for name, args in [("up", ("container", "up", "remote", "--image", IMAGE, "--network", "none")),
                       ("sync", ("container", "sync", "remote", "--repo", git_repo)),
                       ("exec", ("container", "exec", "remote", "--", "sh", "-c", "cat README.md; exit 2")),
                       ("check", ("box", "check", "remote", "--image", IMAGE, "--min-disk-gb", "0.1")),
                       ("ls", ("container", "ls", "remote")),
                       ("down", ("container", "down", "remote"))]:
        before = sshd.accepted_connections()
        result = cli(*args)
        assert result.exit_code in (0, 2), result.output
        counts[name] = sshd.accepted_connections() - before
    # each of these makes several API calls (sync: list, get_archive, put_archive, exec...)
    assert counts == {name: 1 for name in counts}, counts
    assert _masters() == []  # the master connection ends with the command


def test_ssh_with_explicit_user_and_port(ssh_env):
    sshd = ssh_env
    with engine.connect("direct", f"ssh://{sshd.user}@127.0.0.1:{sshd.port}") as connected:
        assert connected.client.info()["Driver"] == "vfs"
        assert engine.api_at_least(connected.api_version)


def _timed(cli, *args):
    started = time.monotonic()
    result = cli(*args)
    return result, time.monotonic() - started


def _one_line(result, code=1):
    assert result.exit_code == code, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def test_unreachable_unix_socket(config_dir, cli, tmp_path):
    boxes.add_box("gone", f"unix://{tmp_path}/no/docker.sock")
    result, seconds = _timed(cli, "container", "ls", "gone")
    line = _one_line(result)
    assert "box gone" in line and "unreachable" in line and "no such file" in line
    assert seconds < 3


def test_unreachable_ssh_port(ssh_env, cli):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    boxes.add_box("down", f"ssh://127.0.0.1:{port}")
    result, seconds = _timed(cli, "container", "up", "down", "--image", IMAGE)
    line = _one_line(result)
    assert "box down" in line and "Connection refused" in line
    assert seconds < 3


def test_silent_host_times_out_in_seconds(ssh_env, cli):
    import boxes_realparts

    tarpit = boxes_realparts.Tarpit()
    try:
        boxes.add_box("tarpit", f"ssh://127.0.0.1:{tarpit.port}")
        result, seconds = _timed(cli, "container", "exec", "tarpit", "--", "true")
    finally:
        tarpit.close()
    line = _one_line(result)
    assert "box tarpit" in line and "timed out" in line
    assert engine.CONNECT_TIMEOUT_S - 0.5 < seconds < engine.CONNECT_TIMEOUT_S + 3
    print(f"\nunreachable (silent) box failed after {seconds:.2f} s")


def test_ssh_auth_failure_is_one_line(ssh_env, cli):
    boxes.add_box("badkey", f"ssh://{ssh_env.badkey_alias}")
    result, seconds = _timed(cli, "container", "ls", "badkey")
    line = _one_line(result)
    assert "box badkey" in line and "SSH authentication failed" in line and "Permission denied" in line
    assert seconds < 3
    assert _masters() == []


def test_box_list_shows_reachable_and_unreachable_in_parallel(ssh_env, cli, docker_engine, tmp_path):
    import boxes_realparts

    boxes.add_box("local", docker_engine.url, cpu_only=True)
    boxes.add_box("remote", f"ssh://{ssh_env.alias}", cpu_only=True)
    boxes.add_box("gone", f"unix://{tmp_path}/docker.sock")
    tarpit = boxes_realparts.Tarpit()
    boxes.add_box("silent", f"ssh://127.0.0.1:{tarpit.port}")
    try:
        result, seconds = _timed(cli, "box", "list")
    finally:
        tarpit.close()
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): line for line in result.output.splitlines() if line.count("│") > 5}
    assert "yes" in rows["local"] and "yes" in rows["remote"] and "20.10" in rows["remote"]
    assert "no" in rows["gone"] and "no" in rows["silent"]
    causes = [line for line in result.output.splitlines() if line.startswith("unreachable")]
    assert len(causes) == 2
    assert any("box gone" in line and "no such file" in line for line in causes)
    assert any("box silent" in line and "timed out" in line for line in causes)
    assert seconds < engine.CONNECT_TIMEOUT_S + 4  # the silent box's timeout is not paid per box


def test_unreachable_box_check_marks_it_unhealthy(config_dir, cli, tmp_path):
    boxes.add_box("gone", f"unix://{tmp_path}/docker.sock")
    result = cli("box", "check", "gone")
    assert result.exit_code == 1 and "fail  engine" in result.output
    assert boxes.get_box("gone").health["status"] == "unhealthy"


def test_engine_too_old_for_gpu_requests(config_dir, clean_engine, docker_engine):
    box = boxes.add_box("old", docker_engine.url, cpu_only=True)
    with engine.connect("old", docker_engine.url) as connected:
        connected.client.api._version = "1.39"  # speak to the real engine as an old one would
        report = boxes.run_checks(connected, box, image=IMAGE, min_disk_gb=0.1)
    line = report.lines[0]
    assert line.name == "engine" and line.status == "fail" and "1.39" in line.detail and "19.03" in line.hint
    assert not report.healthy


def test_connect_refuses_bad_urls_before_any_connection():
    with pytest.raises(PuffctlError, match="bad host URL"):
        engine.connect("x", "tcp://127.0.0.1:2375")


def test_lost_connection_leaves_the_command_running(ssh_env):
    boxes.add_box("remote", f"ssh://{ssh_env.alias}", cpu_only=True)
    with boxes.open_box("remote") as connected:
        container, _ = containers.up(connected, boxes.get_box("remote"), image=IMAGE, network="none")
        stream = containers.exec_stream(connected, container.id, ["sh", "-c", "echo started; sleep 30"])
        chunks = iter(stream)
        assert next(chunks) == ("stdout", b"started\n")
        connected._mux._master.kill()  # the SSH connection drops
        with pytest.raises(ConnectionLost) as lost:
            list(chunks)
            stream.exit_code
    with boxes.open_box("remote") as connected:  # re-attach: the command is still there
        assert containers.exec_state(connected, lost.value.exec_id)["running"]


def test_killed_command_leaves_no_ssh_master(ssh_env, docker_engine):
    import os
    import signal
    import subprocess
    import sys

    boxes.add_box("remote", f"ssh://{ssh_env.alias}", cpu_only=True)
    with engine.connect("local", docker_engine.url) as local:
        containers.up(local, boxes.get_box("remote"), image=IMAGE, network="none")
    before = ssh_env.accepted_connections()
    process = subprocess.Popen([sys.executable, "-m", "puffctl", "container", "exec", "remote", "--", "sleep", "30"],
                               env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while ssh_env.accepted_connections() == before or not _masters():
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.05)
    control_dirs = {part.split("=", 1)[1].rsplit("/", 1)[0] for line in _masters() for part in line.split()
                    if part.startswith("ControlPath=")}
    process.send_signal(signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + 5
    while _masters() and time.monotonic() < deadline:
        time.sleep(0.05)
    for directory in control_dirs:  # what the killed command could not clean up itself
        shutil.rmtree(directory, ignore_errors=True)
    assert _masters() == []


def test_container_ls_everywhere_reports_unreachable_boxes(ssh_env, cli, docker_engine, tmp_path):
    boxes.add_box("local", docker_engine.url, cpu_only=True)
    boxes.add_box("gone", f"unix://{tmp_path}/docker.sock")
    assert cli("container", "up", "local", "--image", IMAGE, "--network", "none").exit_code == 0
    result = cli("container", "ls")
    assert result.exit_code == 0
    assert "puffctl-alice-dev" in result.output
    assert any(line.startswith("unreachable box gone") for line in result.output.splitlines())
