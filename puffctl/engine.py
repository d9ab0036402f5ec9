"""Reach a box's Docker engine through the Docker SDK, over `unix://` or `ssh://`.

Over SSH, one OpenSSH master connection (ControlMaster) is opened per puffctl command; every
HTTP connection of the SDK is a `docker system dial-stdio` session multiplexed over it, so a
command costs one TCP connection and one authentication however many API calls it makes. The
user's own OpenSSH client does the work: ~/.ssh/config, agent, known_hosts and ProxyJump apply.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import docker
import docker.errors
import requests
import urllib3.connection
import urllib3.connectionpool
from docker.transport.basehttpadapter import BaseHTTPAdapter

from puffctl.errors import PuffctlError
from puffctl.sshmux import CONNECT_TIMEOUT_S, HostURL, SSHMux, parse_host, stop_process  # noqa: F401 - re-exported

MIN_API_VERSION = "1.40"  # first Engine API with DeviceRequests (GPUs without the nvidia runtime flag)
MAX_API_VERSION = "1.44"  # the newest API this docker SDK speaks
API_TIMEOUT_S = 120


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


def connect(box: str, url: HostURL | str, connect_timeout: float = CONNECT_TIMEOUT_S,
            mux: SSHMux | None = None) -> Engine:
    """Open the box's engine and negotiate the API version; fail in seconds with one line.

    `mux`: the box's ssh master, already begun (SSHMux.begin) by a command that overlaps the
    handshake with its own work; the Engine owns it from here.
    """
    url = parse_host(url) if isinstance(url, str) else url
    if url.scheme == "unix":
        client = docker.DockerClient(base_url=str(url), version=MIN_API_VERSION, timeout=API_TIMEOUT_S)
    else:
        mux = mux or SSHMux(box, url, connect_timeout)
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
