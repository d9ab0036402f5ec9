"""Reach a box's Docker engine through the Docker SDK, over `unix://` or `ssh://`.

Over SSH, one OpenSSH master connection (ControlMaster) is opened per puffctl command; every
HTTP connection of the SDK is a `docker system dial-stdio` session multiplexed over it, so a
command costs one TCP connection and one authentication however many API calls it makes. The
user's own OpenSSH client does the work: ~/.ssh/config, agent, known_hosts and ProxyJump apply.
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

import docker
import docker.errors
import requests
import urllib3.connection
import urllib3.connectionpool
from docker.transport.basehttpadapter import BaseHTTPAdapter

from puffctl.errors import PuffctlError

MIN_API_VERSION = "1.40"  # first Engine API with DeviceRequests (GPUs without the nvidia runtime flag)
MAX_API_VERSION = "1.44"  # the newest API this docker SDK speaks
CONNECT_TIMEOUT_S = 5
API_TIMEOUT_S = 120
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
        if shutil.which("ssh") is None:
            raise PuffctlError(f"box {self.box}: no `ssh` client on this machine (install OpenSSH)", exit_code=1)
        argv = self._ssh("ControlMaster=yes", "ControlPersist=no", "ServerAliveInterval=15",
                         "ServerAliveCountMax=3") + ["-N", "--", self.url.host]
        with open(self.log_path, "ab") as log:
            self._master = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                            stderr=log, start_new_session=True, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + self.connect_timeout + 5
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


class _PipeReader:
    """Buffered reads of a pipe that never over-read silently: `buffered` tells what is pending.

    http.client needs full-length reads and readline; the SDK's raw-stream reader polls the
    file descriptor, so data read ahead into a buffer must be visible (see _DialStdio.fileno).
    """

    def __init__(self, fd: int, channel: "_DialStdio") -> None:
        self._fd, self._buf, self.channel, self.closed = fd, bytearray(), channel, False

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def _fill(self) -> bool:
        chunk = os.read(self._fd, 65536)
        self._buf += chunk
        return bool(chunk)

    def _take(self, n: int) -> bytes:
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    def read(self, n: int | None = -1) -> bytes:
        if n is None or n < 0:
            while self._fill():
                pass
            return self._take(len(self._buf))
        while len(self._buf) < n and self._fill():
            pass
        return self._take(n)

    def read1(self, n: int = -1) -> bytes:
        if not self._buf:
            self._fill()
        return self._take(len(self._buf) if n is None or n < 0 else n)

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def readinto1(self, b) -> int:
        data = self.read1(len(b))
        b[: len(data)] = data
        return len(data)

    def readline(self, limit: int = -1) -> bytes:
        while True:
            end = self._buf.find(b"\n")
            if end >= 0:
                return self._take(end + 1 if limit < 0 else min(end + 1, limit))
            if 0 <= limit <= len(self._buf) or not self._fill():
                return self._take(len(self._buf) if limit < 0 else limit)

    def peek(self, n: int = 0) -> bytes:
        if not self._buf:
            self._fill()
        return bytes(self._buf)

    def readable(self) -> bool:
        return True

    def flush(self) -> None:
        pass

    def close(self) -> None:
        """http.client closes its response file after each response; the connection lives on."""


class _DialStdio:
    """A socket-like object over `ssh ... docker system dial-stdio`: one HTTP connection."""

    def __init__(self, argv: list[str], log_path: Path) -> None:
        with open(log_path, "ab") as log:
            self._proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                          bufsize=0, start_new_session=True)
        self._reader = _PipeReader(self._proc.stdout.fileno(), self)
        self._ready_r, ready_w = os.pipe()  # always readable: stands in for data already buffered
        os.write(ready_w, b"x")
        os.close(ready_w)
        self._timeout: float | None = None

    def fileno(self) -> int:
        return self._ready_r if self._reader.buffered else self._proc.stdout.fileno()

    def makefile(self, mode: str = "rb", *args, **kwargs) -> _PipeReader:
        return self._reader

    def recv(self, n: int) -> bytes:
        return self._reader.read1(n)

    def send(self, data: bytes) -> int:
        try:
            return os.write(self._proc.stdin.fileno(), data)
        except BrokenPipeError:
            raise ConnectionError("the dial-stdio session on the box closed") from None

    def sendall(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            sent = self.send(view)
            view = view[sent:]

    def shutdown(self, how: int) -> None:
        if how in (1, 2) and not self._proc.stdin.closed:
            self._proc.stdin.close()

    def settimeout(self, timeout: float | None) -> None:
        self._timeout = timeout

    def gettimeout(self) -> float | None:
        return self._timeout

    def setblocking(self, flag: bool) -> None:
        pass

    def close(self) -> None:
        if self._proc.poll() is None:
            if not self._proc.stdin.closed:
                self._proc.stdin.close()
            stop_process(self._proc)
        if self._proc.stdout and not self._proc.stdout.closed:
            self._proc.stdout.close()
        if self._ready_r >= 0:
            os.close(self._ready_r)
            self._ready_r = -1


class _DialStdioConnection(urllib3.connection.HTTPConnection):
    def __init__(self, mux: SSHMux, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._mux = mux

    def connect(self) -> None:
        self.sock = _DialStdio(self._mux.dial_stdio_argv(), self._mux.log_path)


class _DialStdioPool(urllib3.connectionpool.HTTPConnectionPool):
    def __init__(self, mux: SSHMux, timeout: float, maxsize: int) -> None:
        super().__init__("localhost", timeout=timeout, maxsize=maxsize)
        self._mux = mux

    def _new_conn(self) -> _DialStdioConnection:
        return _DialStdioConnection(self._mux, self.timeout)


class _DialStdioAdapter(BaseHTTPAdapter):
    """requests adapter: HTTP to the box's engine through multiplexed dial-stdio sessions.

    Kept-alive connections are reused; at most a few stay open, as each is an SSH session
    and sshd allows 10 per connection by default (MaxSessions).
    """

    def __init__(self, mux: SSHMux, timeout: float = API_TIMEOUT_S, max_pool_size: int = 4) -> None:
        super().__init__()
        self.pool = _DialStdioPool(mux, timeout, max_pool_size)

    def get_connection(self, url, proxies=None):
        return self.pool

    def request_url(self, request, proxies):
        return request.path_url

    def close(self) -> None:
        super().close()
        self.pool.close()


class Engine:
    """An open connection to one box's engine: `.client` is a docker.DockerClient. Use with `with`."""

    def __init__(self, box: str, url: HostURL, client: docker.DockerClient, mux: SSHMux | None) -> None:
        self.box, self.url, self.client, self._mux = box, url, client, mux

    @property
    def api_version(self) -> str:
        return self.client.api.api_version

    def close(self) -> None:
        self.client.close()
        if self._mux is not None:
            self._mux.close()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def api_at_least(version: str, minimum: str = MIN_API_VERSION) -> bool:
    """Compare Engine API versions like '1.41' numerically."""
    return tuple(int(x) for x in version.split(".")) >= tuple(int(x) for x in minimum.split("."))


def connect(box: str, url: HostURL | str, connect_timeout: float = CONNECT_TIMEOUT_S) -> Engine:
    """Open the box's engine and negotiate the API version; fail in seconds with one line."""
    url = parse_host(url) if isinstance(url, str) else url
    mux = None
    if url.scheme == "unix":
        client = docker.DockerClient(base_url=str(url), version=MIN_API_VERSION, timeout=API_TIMEOUT_S)
    else:
        mux = SSHMux(box, url, connect_timeout)
        mux.start()
        client = docker.DockerClient(base_url="unix:///nonexistent", version=MIN_API_VERSION,
                                     timeout=API_TIMEOUT_S)
        client.api.mount("http+docker://ssh", _DialStdioAdapter(mux))
        client.api.base_url = "http+docker://ssh"  # the SDK then reads raw streams through `.channel`
    engine = Engine(box, url, client, mux)
    try:
        client.api.timeout = connect_timeout
        server = client.api.version(api_version=False)
        client.api.timeout = API_TIMEOUT_S
    except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as error:
        engine.close()
        raise PuffctlError(f"box {box}: engine unreachable at {url} ({_cause(error, mux)})", exit_code=1) from None
    server_api = server.get("ApiVersion", MIN_API_VERSION)
    client.api._version = server_api if not api_at_least(server_api, MAX_API_VERSION) else MAX_API_VERSION
    return engine


def _cause(error: BaseException, mux: SSHMux | None) -> str:
    if mux is not None and mux.log_path.exists():
        lines = [line for line in mux.log_path.read_text(errors="replace").splitlines() if line.strip()]
        if lines:
            return lines[-1].strip()
    text = str(error)
    for marker in ("No such file or directory", "Connection refused", "Permission denied", "timed out"):
        if marker in text:
            return marker.lower()
    return text.splitlines()[0][:200] if text else type(error).__name__
