"""Fixtures for box/container tests: a real private dockerd and a real loopback sshd, per session.

If the engine cannot start, tests that need it fail with the reason when CI=true and skip with
the reason otherwise. Run tests/tooling/install-system-deps.sh first.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tooling"))

import boxes_realparts as realparts  # noqa: E402

DATA = Path(__file__).parent / "data"


def _unavailable(reason: str):
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"real parts unavailable in CI: {reason}", pytrace=False)
    pytest.skip(f"real parts unavailable: {reason}")


@pytest.fixture(autouse=True)
def _deadline(request):
    """No box test may hang the suite: each gets 120 s (or its `deadline` mark's), then fails with a TimeoutError."""
    import signal

    mark = request.node.get_closest_marker("deadline")
    seconds = mark.args[0] if mark else 120

    def expire(signum, frame):
        raise TimeoutError(f"box test ran over {seconds} s (a hung stream or connection?)")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="session")
def docker_engine():
    """A private dockerd (vfs, no bridge) with the busybox test image built; stopped at the end."""
    try:
        engine = realparts.start_dockerd()
    except (realparts.RealPartsError, OSError) as error:
        _unavailable(str(error))
    try:
        realparts.build_test_image(engine.url)
    except Exception as error:  # noqa: BLE001 - any failure here means no engine for the tests
        engine.stop()
        _unavailable(f"building the test image failed: {error}")
    yield engine
    engine.stop()


@pytest.fixture(scope="session")
def python_image(docker_engine):
    """An image holding this machine's Python and the trainer's packages (imported once per session)."""
    try:
        return realparts.build_python_image(docker_engine.url)
    except (realparts.RealPartsError, OSError) as error:
        _unavailable(f"building the Python test image failed: {error}")


@pytest.fixture(scope="session")
def sshd(docker_engine):
    """A loopback OpenSSH server whose logins reach docker_engine (DOCKER_HOST via SetEnv)."""
    try:
        server = realparts.start_sshd(docker_engine.url)
    except (realparts.RealPartsError, OSError, subprocess.CalledProcessError) as error:
        _unavailable(str(error))
    yield server
    server.stop()


class CliResult:
    """What a user sees: exit code and output, PuffctlError rendered as `puffctl.cli.main` does."""

    def __init__(self, result) -> None:
        from puffctl.errors import PuffctlError

        self.raw = result
        if isinstance(result.exception, PuffctlError):
            self.exit_code = result.exception.exit_code
            self.output = f"error: {result.exception}\n"
        elif result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        else:
            self.exit_code, self.output = result.exit_code, result.output


@pytest.fixture
def cli(monkeypatch):
    """Run the real app (puffctl.cli.app) through typer's CliRunner, on a wide terminal."""
    from typer.testing import CliRunner

    monkeypatch.setenv("COLUMNS", "250")
    from puffctl.cli import app

    runner = CliRunner()
    return lambda *args: CliResult(runner.invoke(app, [str(a) for a in args]))


@pytest.fixture
def config_dir(tmp_path, monkeypatch):
    """A fresh registry for each test, owner alice."""
    directory = tmp_path / "config"
    monkeypatch.setenv("PUFFCTL_CONFIG_DIR", str(directory))
    monkeypatch.setenv("PUFFCTL_OWNER", "alice")
    return directory


@pytest.fixture
def docker_client(docker_engine):
    import docker

    client = docker.DockerClient(base_url=docker_engine.url, version="auto")
    yield client
    client.close()


@pytest.fixture
def clean_engine(docker_client):
    """Remove every container and volume the test left on the shared engine."""
    yield docker_client
    for container in docker_client.containers.list(all=True):
        container.remove(force=True)
    for volume in docker_client.volumes.list():
        volume.remove(force=True)


@pytest.fixture(params=["unix", "ssh"])
def box(request, config_dir, clean_engine, docker_engine, monkeypatch):
    """A registered CPU-only box named 'lab' on the test engine, reached over unix:// or ssh://."""
    from puffctl import boxes

    if request.param == "unix":
        host = docker_engine.url
    else:
        server = request.getfixturevalue("sshd")
        monkeypatch.setenv("PUFFCTL_SSH_CONFIG", str(server.client_config))
        host = f"ssh://{server.alias}"
    boxes.add_box("lab", host, cpu_only=True)
    return "lab"


@pytest.fixture
def git_repo(tmp_path):
    """A small git work tree: two committed files, one local edit (dirty), one untracked file."""
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    (repo / "pkg" / "train.py").write_text("print('hello from the box')\n")
    (repo / "README.md").write_text("test repo\n")

    def git(*args):
        subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)

    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-qm", "init")
    (repo / "README.md").write_text("test repo, edited\n")
    (repo / "notes.txt").write_text("untracked, not ignored: synced and in the patch\n")
    return repo
