"""A real, CPU-only Ray head on 127.0.0.1 for the Ray executor's tests and bench.

`ray start --head` with its own temp dir and free ports (so it never meets another head on the
machine), sized for a 2-core CI box: 2 CPUs, a small object store, generous start timeouts for
a loaded machine. Stopping it never runs `ray stop` (machine-wide): it kills the processes whose
command line names this head's temp dir, and everything they started (workers, job drivers).

    with RayHead() as head:       # head.url: the dashboard, where the Jobs API answers
        ...                       # head.where: "ray://127.0.0.1:PORT" for a spec
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: Ray's own start timeouts, raised for a machine shared by several busy processes (the raylet's
#: 15 s wait for its agents' ports is fixed: the head starts ahead of other work instead, `_ahead`).
PATIENT = {"RAY_agent_register_timeout_ms": "180000", "RAY_raylet_start_wait_time_s": "180",
           "RAY_worker_register_timeout_seconds": "180", "RAY_DASHBOARD_STARTUP_TIMEOUT_S": "300",
           "RAY_USAGE_STATS_ENABLED": "0",
           # Ray replaces --node-ip-address 127.0.0.1 by the machine's outward address (for clusters);
           # with this off every process of the head binds and dials loopback only.
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}

#: Ray's agents import jsonschema, which imports the optional `rfc3987_syntax` (it builds a grammar
#: at import: seconds of CPU, enough for a loaded machine to miss the raylet's 15 s). Ray's
#: processes get this sitecustomize, which leaves that optional checker out.
SHIM = 'import sys\nsys.modules.setdefault("rfc3987_syntax", None)\n'


def _ahead() -> None:
    """Start Ray's processes at a higher priority where allowed (root), so their agents report in time."""
    try:
        os.nice(-20)
    except OSError:
        pass


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def importable() -> str | None:
    """None if `ray` (with its Jobs API) imports, else why not: the one reason to skip Ray tests."""
    try:
        import ray.job_submission  # noqa: F401
    except ImportError as error:
        return f"ray is not installed ({error}): pip install -e '.[test]'"
    return None


class RayHead:
    """One head: `start()` returns when its Jobs API answers; `stop()` kills only its processes."""

    def __init__(self, cpus: int = 2, start_timeout: float = 150.0) -> None:
        self.cpus, self.start_timeout = cpus, start_timeout
        self._fresh()

    def _fresh(self) -> None:
        """A new temp dir (short: Ray's socket paths must fit), its sitecustomize shim, and a dashboard port."""
        self.temp = Path(tempfile.mkdtemp(prefix="rh", dir="/tmp"))
        (self.temp / "shim").mkdir()
        (self.temp / "shim" / "sitecustomize.py").write_text(SHIM)
        path = os.pathsep.join(p for p in (str(self.temp / "shim"), os.environ.get("PYTHONPATH")) if p)
        self.env = {**os.environ, **PATIENT, "PYTHONPATH": path}
        self.dashboard_port, self.gcs_port = free_port(), 0
        self.url = f"http://127.0.0.1:{self.dashboard_port}"
        self.where = f"ray://127.0.0.1:{self.dashboard_port}"

    def start(self, attempts: int = 3) -> RayHead:
        """Start the head (a few attempts: Ray's raylet gives its agents a fixed 15 s to report their
        ports, which a loaded machine can miss); raise with Ray's words if none succeeds."""
        for attempt in range(1, attempts + 1):
            try:
                return self._start_once()
            except RuntimeError:
                if attempt == attempts:
                    raise
                self._fresh()
        return self

    def _start_once(self) -> RayHead:
        self.gcs_port = free_port()
        ports = {"--port": self.gcs_port, "--dashboard-port": self.dashboard_port, "--ray-client-server-port": free_port(),
                 "--dashboard-agent-listen-port": free_port(), "--dashboard-agent-grpc-port": free_port(),
                 "--runtime-env-agent-port": free_port(), "--metrics-export-port": free_port()}
        ray = Path(sys.executable).with_name("ray")
        command = [str(ray) if ray.exists() else "ray", "start", "--head", "--node-ip-address", "127.0.0.1", "--dashboard-host", "127.0.0.1",
                   "--include-dashboard", "true", "--temp-dir", str(self.temp), "--num-cpus", str(self.cpus),
                   "--num-gpus", "0", "--object-store-memory", str(100 * 2**20), "--disable-usage-stats",
                   *(item for flag, port in ports.items() for item in (flag, str(port)))]
        try:
            done = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=self.start_timeout,
                                  preexec_fn=_ahead)
        except subprocess.TimeoutExpired:
            self.stop()
            raise RuntimeError(f"ray start took over {self.start_timeout:.0f} s") from None
        if done.returncode != 0:
            self.stop()
            raise RuntimeError(f"ray start failed ({done.returncode}): {(done.stderr or done.stdout)[-2000:]}")
        self._wait_for_jobs_api()
        for process in self.processes():  # started ahead of the machine's other work; from now on level with it
            try:
                process.nice(os.nice(0))
            except Exception:  # noqa: BLE001 - gone, or not allowed: leave it
                pass
        return self

    def _wait_for_jobs_api(self) -> None:
        from ray.job_submission import JobSubmissionClient

        deadline = time.monotonic() + self.start_timeout
        while True:
            try:
                JobSubmissionClient(self.url).list_jobs()
                return
            except Exception:  # noqa: BLE001 - any failure here means "not up yet"
                if time.monotonic() > deadline:
                    self.stop()
                    raise
                time.sleep(0.5)

    def processes(self) -> list:
        """This head's processes: those naming its temp dir or its GCS address (the client server
        `ray start` leaves behind names only that), and all their descendants."""
        import psutil

        marks = [str(self.temp)] + ([f"127.0.0.1:{self.gcs_port}"] if self.gcs_port else [])
        found: dict[int, psutil.Process] = {}
        for process in psutil.process_iter(["cmdline"]):
            try:
                if any(mark in part for part in process.info["cmdline"] or [] for mark in marks):
                    found[process.pid] = process
                    found.update({child.pid: child for child in process.children(recursive=True)})
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return list(found.values())

    def stop(self) -> None:
        """SIGTERM, then SIGKILL, to this head's processes only; its temp dir removed."""
        import psutil

        for sig in (signal.SIGTERM, signal.SIGKILL):
            group = self.processes()
            for process in group:
                try:
                    process.send_signal(sig)
                except psutil.NoSuchProcess:
                    pass
            _, alive = psutil.wait_procs(group, timeout=5)
            if not alive:
                break
        shutil.rmtree(self.temp, ignore_errors=True)

    def __enter__(self) -> RayHead:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
