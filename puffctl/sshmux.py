"""Reach a box over SSH: its address (ssh:// or unix://) and one OpenSSH master connection.

No Docker SDK here, so a command can start connecting (`SSHMux.begin`) before it imports the
SDK and does its local work; puffctl.engine builds the Docker client on top (`connect`).
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from puffctl.errors import PuffctlError

CONNECT_TIMEOUT_S = 5
SSH_CONFIG_ENV = "PUFFCTL_SSH_CONFIG"  # an ssh_config file to use instead of ~/.ssh/config

_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$")
_USER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def stop_process(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """Terminate a child process, and kill it if it has not exited after `grace` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass(frozen=True)
class HostURL:
    """A parsed box address: `unix:///abs/path` or `ssh://[user@]host[:port]`."""

    scheme: str
    path: str = ""
    host: str = ""
    user: str | None = None
    port: int | None = None

    def __str__(self) -> str:
        if self.scheme == "unix":
            return f"unix://{self.path}"
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port else ""
        return f"ssh://{user}{self.host}{port}"


def parse_host(url: str) -> HostURL:
    """Validate a box address; anything but a clean unix:// or ssh:// URL is a one-line error."""
    hint = "expected ssh://user@host[:port] or unix:///path/to/docker.sock"
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme == "unix":
        path = parts.netloc + parts.path if parts.netloc else parts.path
        if parts.netloc or not path.startswith("/") or parts.query or parts.fragment or path.endswith("/"):
            raise PuffctlError(f"bad host URL {url!r}: a unix socket needs an absolute path ({hint})")
        return HostURL("unix", path=path)
    if parts.scheme == "ssh":
        try:
            port = parts.port
        except ValueError:
            raise PuffctlError(f"bad host URL {url!r}: the port must be a number from 1 to 65535") from None
        host, user = parts.hostname or "", parts.username
        if parts.path not in ("", "/") or parts.query or parts.fragment or parts.password is not None:
            raise PuffctlError(f"bad host URL {url!r}: no path, password or query allowed ({hint})")
        if not _HOSTNAME.match(host):
            raise PuffctlError(f"bad host URL {url!r}: {host!r} is not a host name ({hint})")
        if user is not None and not _USER.match(user):
            raise PuffctlError(f"bad host URL {url!r}: {user!r} is not a user name")
        if port == 0:
            raise PuffctlError(f"bad host URL {url!r}: the port must be a number from 1 to 65535")
        return HostURL("ssh", host=host, user=user, port=port)
    raise PuffctlError(f"bad host URL {url!r}: {hint}")


try:
    _prctl = ctypes.CDLL(None).prctl  # resolved here: the child between fork and exec must not load libraries
except (OSError, AttributeError):
    _prctl = None


def _die_with_parent() -> None:
    """Child-side: on Linux, take the ssh master down if puffctl is killed without cleaning up.

    The signal fires when the forking *thread* exits, so open an Engine in the thread using it.
    """
    if _prctl is not None:
        _prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class SSHMux:
    """One OpenSSH master connection to a box, shared by every dial-stdio session of a command."""

    def __init__(self, box: str, url: HostURL, connect_timeout: float = CONNECT_TIMEOUT_S) -> None:
        self.box, self.url, self.connect_timeout = box, url, connect_timeout
        self._dir = Path(tempfile.mkdtemp(prefix="puffctl-ssh-"))
        self.control_path = self._dir / "mux"
        self.log_path = self._dir / "ssh.log"
        self._master: subprocess.Popen | None = None
        self._began = 0.0

    def _ssh(self, *options: str) -> list[str]:
        argv = ["ssh"]
        config = os.environ.get(SSH_CONFIG_ENV)
        if config:
            argv += ["-F", config]
        argv += ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={int(self.connect_timeout)}",
                 "-o", f"ControlPath={self.control_path}"]
        for option in options:
            argv += ["-o", option]
        if self.url.user:
            argv += ["-l", self.url.user]
        if self.url.port:
            argv += ["-p", str(self.url.port)]
        return argv

    def start(self) -> None:
        """Connect and authenticate once; raise a one-line PuffctlError naming the box otherwise."""
        self.begin()
        self.wait()

    def begin(self) -> None:
        """Start connecting (the ssh master runs on its own) and return at once; `wait()` for it later."""
        if self._master is not None:
            return
        if shutil.which("ssh") is None:
            raise PuffctlError(f"box {self.box}: no `ssh` client on this machine (install OpenSSH)", exit_code=1)
        argv = self._ssh("ControlMaster=yes", "ControlPersist=no", "ServerAliveInterval=15",
                         "ServerAliveCountMax=3") + ["-N", "--", self.url.host]
        with open(self.log_path, "ab") as log:
            self._master = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                            stderr=log, start_new_session=True, preexec_fn=_die_with_parent)
        self._began = time.monotonic()

    def wait(self) -> None:
        """Until the master connection is up; a one-line PuffctlError if it fails or times out."""
        if self._master is None:
            raise PuffctlError(f"box {self.box}: the ssh connection was closed", exit_code=1)
        deadline = self._began + self.connect_timeout + 5
        while not self.control_path.exists():
            if self._master.poll() is not None:
                message = self._failure()
                self.close()
                raise PuffctlError(f"box {self.box}: {message}", exit_code=1)
            if time.monotonic() > deadline:
                self.close()
                raise PuffctlError(f"box {self.box}: ssh to {self.url} timed out after "
                                   f"{self.connect_timeout + 5:.0f} s", exit_code=1)
            time.sleep(0.02)

    def _failure(self) -> str:
        lines = [line.strip() for line in self.log_path.read_text(errors="replace").splitlines() if line.strip()]
        last = lines[-1] if lines else "ssh exited without a message"
        if "Permission denied" in last or "Too many authentication failures" in last:
            return f"SSH authentication failed for {self.url} ({last}); check your key/agent and ~/.ssh/config"
        if "Host key verification failed" in last or "REMOTE HOST IDENTIFICATION" in " ".join(lines):
            return f"SSH host key of {self.url} not trusted ({last}); connect once with `ssh` to add it"
        return f"unreachable over SSH: {last}"

    def dial_stdio_argv(self) -> list[str]:
        """The command line of one multiplexed session running `docker system dial-stdio` on the box."""
        return self._ssh("ControlMaster=no") + ["--", self.url.host, "docker", "system", "dial-stdio"]

    def close(self) -> None:
        """Stop the master connection and remove its control socket."""
        if self._master is not None and self._master.poll() is None:
            stop_process(self._master)
        self._master = None
        shutil.rmtree(self._dir, ignore_errors=True)
