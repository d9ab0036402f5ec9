"""The Ray executor: each batch cell a job on a Ray cluster, through its Jobs API (`where: ray://HOST:PORT`).

HOST:PORT is the head's dashboard (8265 unless given), where `ray.job_submission` talks. The
git-tracked tree (tracked files and untracked ones not ignored, with its provenance in
.puffctl/, the same capture a box sync sends) is every job's working_dir: Ray uploads it once
per content. A cell's job runs `python -m trainer --events-stdout` on a run directory under
`storage` (a directory every node can reach), so checkpoints survive the job; the orchestrator
rebuilds the local events.jsonl from the job's log (the event lines, by byte offset from the
size the local file had when the job started: no duplicate after a reconnect or a restart) and
copies the storage directory back when the cell ends.

Every job carries the batch and cell in its metadata: a start finds a job of the same cell
still running (an orchestrator killed between submit and saving the handle) and follows it
instead of submitting a second. Ray's statuses map onto the engine's outcomes: SUCCEEDED,
FAILED (with the driver's exit code) and STOPPED are exits whose `end` event says what
happened. By default the executor keeps more jobs submitted than the cluster has room for (QUEUE
times its room more), so Ray starts the next cell's job the moment one ends instead of waiting
for this process to notice and submit it; a job PENDING for `pending_limit` s while none of
this executor's jobs started or ended is stopped as a crash (no room on the cluster).
`ray` is imported here only, lazily: `pip install 'puffctl[ray]'`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tarfile
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import yaml

from puffctl import runs
from puffctl.errors import PuffctlError
from puffctl.events import parse_line, read_from
from puffctl.executors.base import Executor, Exit, Handle, Job

DEFAULT_PORT = 8265
#: Seconds between two questions to the head about one job (the engine polls faster). Each
#: costs the head's dashboard about 10 ms of CPU, which a small head shares with the cells.
POLL_EVERY = 1.0
#: Seconds between two fetches of a job's log (the whole log: the Jobs API has no offset).
LOG_EVERY = 1.0
#: A job PENDING this many seconds, with no other job of the batch starting or ending meanwhile,
#: is stopped and counted as a crash.
PENDING_LIMIT = 600.0
#: Jobs submitted beyond the cluster's room (default slots), per cell that fits: Ray queues them.
QUEUE = 1.0
#: Seconds Ray waits after the stop signal (SIGINT: the trainer checkpoints) before SIGKILL.
STOP_WAIT = 30
#: What a job runs in its working_dir: write the cell's config and provenance into its storage
#: directory (a fresh start clears it first), then become the trainer.
ENTRY = '''import os, shutil, sys
from pathlib import Path
run_dir, resume = Path(sys.argv[1]), "--resume" in sys.argv
if not resume:
    shutil.rmtree(run_dir, ignore_errors=True)
run_dir.mkdir(parents=True, exist_ok=True)
if not resume or not (run_dir / "config.yaml").is_file():
    (run_dir / "config.yaml").write_text(os.environ["PUFFCTL_CONFIG"])
(run_dir / "source.json").write_text(os.environ["PUFFCTL_SOURCE"])
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH")) if p)
command = [sys.executable, "-m", "trainer", "--config", str(run_dir / "config.yaml"), "--run-dir", str(run_dir),
           "--events-stdout"] + (["--resume"] if resume else [])
os.execv(sys.executable, command)
'''
ENTRY_FILE = ".puffctl/ray_entry.py"


def parse_where(value: object) -> str | None:
    """`ray://HOST[:PORT]` -> the dashboard URL http://HOST:PORT; None for anything else."""
    if not isinstance(value, str) or not value.startswith("ray://"):
        return None
    match = re.fullmatch(r"ray://([A-Za-z0-9.\-_]+|\[[0-9a-fA-F:]+\])(?::([0-9]{1,5}))?/?", value.strip())
    if not match or (match.group(2) and not 0 < int(match.group(2)) < 65536):
        raise PuffctlError(f"where={value!r}: a Ray head is ray://HOST:PORT (PORT: its dashboard's, {DEFAULT_PORT} by default)")
    return f"http://{match.group(1)}:{match.group(2) or DEFAULT_PORT}"


def _client(url: str):
    """A JobSubmissionClient for the head at `url`; a one-line error if ray is missing or the head does not answer."""
    try:
        from ray.job_submission import JobSubmissionClient
    except ImportError:
        raise PuffctlError("ray is not installed: pip install 'puffctl[ray]'") from None
    import logging

    for name in ("ray", "ray.dashboard.modules.dashboard_sdk"):  # their upload notes would break the live table
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        return JobSubmissionClient(url)
    except (ConnectionError, RuntimeError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise PuffctlError(f"Ray head at {url} unreachable: {first[:200]}", exit_code=1) from None


class RayExecutor(Executor):
    """Cells as Ray jobs on the cluster whose dashboard is at `url`; run directories under `storage`."""

    kind = "ray"

    def __init__(self, url: str, storage: str, *, slots: int | None = None, per_gpu: int = 1,
                 repo: Path | None = None, pending_limit: float = PENDING_LIMIT,
                 on_line: Callable[[str], None] = print) -> None:
        self.url, self.storage, self.per_gpu = url, storage, per_gpu
        self.repo, self.pending_limit, self.on_line = repo, pending_limit, on_line
        self.client = _client(url)
        self.resources = self._cluster_resources()
        self.count = slots
        self._working: tempfile.TemporaryDirectory | None = None
        self._source: dict | None = None
        self._package: str | None = None
        self._asked: dict[str, tuple[float, Exit | None]] = {}
        self._pending: dict[str, float] = {}
        self._moved = time.monotonic()
        self._earlier: dict[tuple[str | None, str], str] | None = None
        self._final_log: dict[str, str] = {}
        self._mirrored: dict[str, tuple[float, int]] = {}

    def _cluster_resources(self) -> dict[str, float]:
        """The cluster's total CPUs and GPUs over its live nodes, from the head's state API (the
        GCS's own record, there as soon as a node joins); {} if it does not say."""
        import requests

        try:
            reply = requests.get(f"{self.url}/api/v0/nodes", params={"detail": "1"}, timeout=10).json()
            totals: dict[str, float] = {}
            for node in reply["data"]["result"]["result"]:
                if node.get("state") == "ALIVE":
                    for name in ("CPU", "GPU"):
                        totals[name] = totals.get(name, 0.0) + float(node.get("resources_total", {}).get(name, 0.0))
            return totals
        except (requests.exceptions.RequestException, ValueError, KeyError, TypeError):
            return {}

    def _wants(self, config: dict) -> tuple[float, float]:
        """(CPUs, GPUs) one cell asks for: its train.cpu_threads, and a GPU share where the cluster
        has GPUs and the cell may use CUDA."""
        cpus = float(config.get("train", {}).get("cpu_threads") or 1)
        cuda = config.get("train", {}).get("device", "auto") != "cpu"
        return cpus, (1.0 / self.per_gpu if cuda and self.resources.get("GPU") else 0.0)

    def slots(self) -> list[str]:
        """ray:0 .. ray:N-1, the cells submitted at once: N is --slots / the spec's slots, else
        what the cluster holds (its GPUs x per_gpu, or its CPUs one per cell) plus QUEUE times
        that, which Ray holds pending until room frees."""
        if self.count is None:
            gpus, cpus = self.resources.get("GPU", 0.0), self.resources.get("CPU", 1.0)
            room = max(1, int(gpus * self.per_gpu) if gpus else int(cpus))
            self.count = room + int(room * QUEUE)
        return [f"ray:{index}" for index in range(self.count)]

    # ---- the code every job runs ----

    def _working_dir(self) -> str:
        """The synced tree, staged once per executor (the files a box sync sends, plus the entry
        script) and uploaded once: later jobs name its package URI, so a submit does not hash and
        zip the tree again (about a second each). Re-uploaded if the head has dropped the package."""
        from puffctl import archive, launch

        if self._working is None:
            made, info = archive.tree_archive(self.repo or archive.repo_root(launch.code_root()))
            staged = tempfile.TemporaryDirectory(prefix="puffctl-ray-")
            with tarfile.open(fileobj=made.data, mode="r") as tar:
                tar.extractall(staged.name, filter="data")
            (Path(staged.name) / ENTRY_FILE).write_text(ENTRY)
            self._working, self._source = staged, info
        try:
            if self._package is None or not self._call(lambda: self.client._package_exists(self._package)):
                runtime_env = {"working_dir": self._working.name}
                self._call(lambda: self.client._upload_working_dir_if_needed(runtime_env))
                self._package = runtime_env["working_dir"]
        except AttributeError:  # a Ray without these client helpers: it uploads per submit
            return self._working.name
        return self._package

    # ---- the protocol ----

    def _running_job(self, batch: str, cell_id: str) -> str | None:
        """A job of this cell still pending or running that an earlier orchestrator left (one
        killed between submit and saving the handle). The head is asked once per executor: the
        jobs this one submits, it knows."""
        if self._earlier is None:
            self._earlier = {}
            for job in self._call(self.client.list_jobs):
                meta = job.metadata or {}
                if job.status.value in ("PENDING", "RUNNING") and "puffctl_cell" in meta:
                    self._earlier[(meta.get("puffctl_batch"), meta["puffctl_cell"])] = job.submission_id
        return self._earlier.pop((batch, cell_id), None)

    def start(self, job: Job) -> Handle:
        """Submit the cell as a job (or follow the one of this cell still running); record it in launch.json."""
        batch = job.run_dir.parent.parent.name
        remote_dir = str(Path(self.storage) / batch / job.cell_id)
        local = job.run_dir / "events.jsonl"
        handle = {"executor": self.kind, "url": self.url, "run_dir": str(job.run_dir), "remote_dir": remote_dir,
                  "base": local.stat().st_size if local.exists() else 0}
        found = self._running_job(batch, job.cell_id)
        if found is not None:
            self.on_line(f"cell {job.cell_id}: following its Ray job {found}, still running")
            return {**handle, "job": found}
        working = self._working_dir()
        config_text = (job.run_dir / "config.yaml").read_text(encoding="utf-8")
        cpus, gpus = self._wants(yaml.safe_load(config_text) or {})
        submission = f"puffctl-{batch}-{job.cell_id}-{uuid.uuid4().hex[:8]}"
        env = {"PUFFCTL_CONFIG": config_text, "PUFFCTL_SOURCE": json.dumps(self._source, indent=2) + "\n",
               "PYTHONUNBUFFERED": "1", "RAY_JOB_STOP_SIGNAL": "SIGINT", "RAY_JOB_STOP_WAIT_TIME_S": str(STOP_WAIT)}
        self._call(lambda: self.client.submit_job(
            entrypoint=f"python {ENTRY_FILE} {remote_dir}" + (" --resume" if job.resume else ""),
            submission_id=submission, runtime_env={"working_dir": working, "env_vars": env},
            entrypoint_num_cpus=cpus, entrypoint_num_gpus=gpus,
            metadata={"puffctl_batch": batch, "puffctl_cell": job.cell_id}))
        runs.write_json(job.run_dir / "source.json", self._source)
        record = runs.read_json(job.run_dir / runs.LAUNCH_FILE)
        record.update(host=f"ray:{self.url}", ray={"url": self.url, "job": submission, "storage_dir": remote_dir,
                                                     "cpus": cpus, "gpus": gpus, "started": time.time()})
        runs.write_json(job.run_dir / runs.LAUNCH_FILE, record)
        return {**handle, "job": submission}

    def _call(self, action: Callable):
        """action() against the head; an unreachable head is a one-line PuffctlError."""
        import requests

        try:
            return action()
        except requests.exceptions.ConnectionError as error:
            raise PuffctlError(f"Ray head at {self.url} unreachable: {str(error)[:200]}", exit_code=1) from None

    def _status(self, handle: Handle) -> str | None:
        """The job's status name, "GONE" if the head does not know it, None if the head is away."""
        try:
            return str(self._call(lambda: self.client.get_job_status(handle["job"])).value)
        except PuffctlError:
            return None
        except RuntimeError as error:
            if "404" in str(error) or "does not exist" in str(error):
                return "GONE"
            raise

    def poll(self, handle: Handle) -> Exit | None:
        """Ask the head (at most every POLL_EVERY s): None while the job is pending or running."""
        job = handle["job"]
        asked, answer = self._asked.get(job, (0.0, None))
        if time.monotonic() - asked < POLL_EVERY:
            return answer
        status = self._status(handle)
        answer = None
        if status not in ("PENDING", None) and self._pending.pop(job, None) is not None:  # None: head away
            self._moved = time.monotonic()
        if status == "PENDING":
            since = max(self._pending.setdefault(job, time.monotonic()), self._moved)
            if time.monotonic() - since > self.pending_limit:
                self.stop(handle)
                answer = Exit(None, f"Ray job {job} pending for {self.pending_limit:.0f} s: no room on the cluster")
        elif status == "SUCCEEDED":
            answer = Exit(0, f"Ray job {job} succeeded")
        elif status == "FAILED":
            info = self._call(lambda: self.client.get_job_info(job))
            code = getattr(info, "driver_exit_code", None)
            answer = Exit(code, (info.message or f"Ray job {job} failed").strip().splitlines()[0][:300])
        elif status == "STOPPED":
            answer = Exit(None, f"Ray job {job} stopped")
        elif status == "GONE":
            answer = Exit(None, f"Ray job {job} is unknown to the head (restarted?)")
        if answer is not None:
            self._moved = time.monotonic()
        self._asked[job] = (time.monotonic(), answer)
        return answer

    def _event_bytes(self, handle: Handle, *, final: bool = False) -> tuple[bytes, str]:
        """The job's event lines (complete ones, of this cell) as bytes, and the rest of its log.
        A final fetch (the job has ended) is kept for `collect`, which then asks no more."""
        text = self._final_log.pop(handle["job"], None)
        if text is None:
            text = self._call(lambda: self.client.get_job_logs(handle["job"]))
        if final:
            self._final_log[handle["job"]] = text
        self._mirrored[handle["job"]] = (time.monotonic(), len(text))
        run_id = Path(handle["run_dir"]).name
        events, other = [], []
        for line in text.splitlines(keepends=True):
            event = parse_line(line) if line.endswith("\n") else None
            if event is not None and event.get("run_id") == run_id:
                events.append(line)
            else:
                other.append(line)
        return "".join(events).encode(), "".join(other)

    def read_events(self, handle: Handle, offset: int, *, final: bool = False) -> tuple[list[dict], int]:
        """Append the job's event lines the local events.jsonl lacks, then read it. The Jobs API
        returns the whole log, so a long one is fetched less often (LOG_EVERY plus 1 s per MB)."""
        local = Path(handle["run_dir"]) / "events.jsonl"
        fetched, size = self._mirrored.get(handle["job"], (0.0, 0))
        if final or time.monotonic() - fetched >= LOG_EVERY + size / 1e6:
            self._mirrored[handle["job"]] = (time.monotonic(), size)  # an unreachable head is asked no faster
            try:
                data, _ = self._event_bytes(handle, final=final)
            except (PuffctlError, RuntimeError):
                data = b""
            have = (local.stat().st_size if local.exists() else 0) - handle.get("base", 0)
            if len(data) > have >= 0:
                with local.open("ab") as out:
                    out.write(data[have:])
        return read_from(local, offset, final=final)

    def stop(self, handle: Handle, *, force: bool = False) -> None:
        """Stop the job: Ray sends the trainer SIGINT (it checkpoints), SIGKILL after STOP_WAIT s."""
        try:
            self._call(lambda: self.client.stop_job(handle["job"]))
        except (PuffctlError, RuntimeError):
            pass

    def adopt(self, handle: Handle) -> bool:
        """A job an earlier orchestrator submitted: True while it is pending or running.
        An unreachable head is an error, not a lost cell (its job may well run on)."""
        if handle.get("executor") != self.kind:
            return False
        try:
            status = str(self._call(lambda: self.client.get_job_status(handle["job"])).value)
        except RuntimeError:
            return False
        return status in ("PENDING", "RUNNING")

    def collect(self, handle: Handle, run_dir: Path) -> None:
        """Copy the storage run directory back (events.jsonl only where longer) and keep the job's
        other log lines in stdout.log; a line if the storage is not visible from here."""
        try:
            _, other = self._event_bytes(handle)
            with (run_dir / "stdout.log").open("a", encoding="utf-8") as log:
                log.write(other)
        except (PuffctlError, RuntimeError, OSError):
            pass
        fetched = Path(handle["remote_dir"])
        if not fetched.is_dir():
            self.on_line(f"cell {run_dir.name}: not fetched back ({fetched} is not visible from here)")
            return
        for item in sorted(fetched.rglob("*")):
            target = run_dir / item.relative_to(fetched)
            if item.is_dir() or item.name == "run.lock" or (
                    item.name == "events.jsonl" and target.exists() and item.stat().st_size <= target.stat().st_size):
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(item, target)
        record = runs.read_json(run_dir / runs.LAUNCH_FILE)
        record.setdefault("ray", {})["fetched_back"] = time.time()
        runs.write_json(run_dir / runs.LAUNCH_FILE, record)

    def close(self) -> None:
        """Drop the staged tree (a later job stages and uploads it afresh); running jobs keep running."""
        if self._working is not None:
            self._working.cleanup()
            self._working, self._package = None, None


def executor(where: str, storage: object, *, slots: int | None = None, per_gpu: int = 1,
             on_line: Callable[[str], None] = print) -> RayExecutor | None:
    """The Ray executor for a `where: ray://...`, None for another where; checks `storage` first."""
    url = parse_where(where)
    if url is None:
        return None
    if not isinstance(storage, str) or not storage.strip():
        raise PuffctlError(f"where: {where} needs storage: a directory every Ray node can reach (and this "
                           "machine, to fetch the runs back), e.g. storage: /shared/puffctl")
    if not os.path.isabs(storage):
        raise PuffctlError(f"storage: {storage!r} must be an absolute path (the nodes resolve it, not this directory)")
    return RayExecutor(url, storage, slots=slots, per_gpu=per_gpu, on_line=on_line)
