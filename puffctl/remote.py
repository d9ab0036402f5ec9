"""Runs on a box: start the trainer in a dev container, follow its events, stop it, copy it back.

A remote run has a local run directory like any other (config.yaml, launch.json, and the
events.jsonl copied byte for byte as the trainer writes it on the box) and a twin at
/workspace/runs/<run_id> in the container. The trainer runs there as a detached exec that
outlives the SSH connection; following it is a small reader in the container that streams
events.jsonl from a byte offset, so a re-attach resumes at the local file's size: no event is
lost and none is repeated. When the run ends its directory comes back through get-archive, every
member checked (regular files and directories inside the run directory only).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from puffctl import runs
from puffctl.errors import PuffctlError

if TYPE_CHECKING:
    from puffctl.engine import Engine

REMOTE_ROOT = "/workspace/runs"
EXIT_FILE = "stdout.log.exit"
PID_FILE = "trainer.pid"
#: How long a follower keeps trying to reach a box that went away before it gives up (the run goes on).
RECONNECT_FOR = 30.0

# Runs in the container (the trainer's own Python): copy events.jsonl from a byte offset to stdout
# until the trainer's exit file exists and nothing more is left to read.
FOLLOWER = """\
import os, sys, time
path, offset, done = sys.argv[1], int(sys.argv[2]), sys.argv[3]
out = sys.stdout.buffer
while True:
    finished = os.path.exists(done)
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            data = handle.read()
    except FileNotFoundError:
        data = b""
    if data:
        out.write(data)
        out.flush()
        offset += len(data)
    elif finished:
        break
    else:
        time.sleep(0.05)
"""

# Prints one JSON line about the run in the current directory: ended (exit code), alive, status.json.
PROBE = """\
import json, os
def read(name):
    try:
        with open(name) as handle:
            return handle.read().strip()
    except OSError:
        return None
alive = False
pid = read("%s")
if pid and pid.isdigit():
    try:
        os.kill(int(pid), 0)
        alive = True
    except ProcessLookupError:
        pass
    except PermissionError:
        alive = True
if os.path.exists("lease"):
    os.utime("lease")  # whoever asks keeps a leased run alive (see LEASE)
exit_code = read("%s")
try:
    status = json.loads(read("status.json") or "{}").get("status")
except ValueError:
    status = None
print(json.dumps({"exit": int(exit_code) if exit_code and exit_code.lstrip("-").isdigit() else None,
                  "alive": alive, "status": status}))
""" % (PID_FILE, EXIT_FILE)


# Runs next to a leased trainer: when nobody has touched ./lease for `timeout` seconds (the
# orchestrator lost the box), ask the trainer to checkpoint and stop, and kill it 30 s later.
LEASE = """\
import os, signal, sys, time
timeout = float(sys.argv[1])
while not os.path.exists("%s"):
    time.sleep(1)
    try:
        age = time.time() - os.stat("lease").st_mtime
    except FileNotFoundError:
        continue
    if age > timeout:
        pid = int(open("%s").read())
        os.kill(pid, signal.SIGINT)
        for _ in range(30):
            time.sleep(1)
            if os.path.exists("%s"):
                sys.exit(0)
        os.kill(pid, signal.SIGKILL)
        break
""" % (EXIT_FILE, PID_FILE, EXIT_FILE)

# Starts the trainer in the run directory (the current one) so that two starts never run two trainers:
# takes the run's lock (trainer/runlock.py) or refuses naming its holder; on a checked resume,
# refuses a completed run or one without an intact checkpoint. A keeper process (its own session, outliving this exec) starts the
# trainer with the lock handed down (--lock-fd), writes its pid, waits, and writes the exit file
# (128+N for a signal, like a shell). Prints one JSON line: {"pid": N} or {"refused": why}.
LAUNCH = """\
import json, os, subprocess, sys
from pathlib import Path
from trainer import checkpoint, runlock
resume = sys.argv[1] == "resume"
here = Path.cwd()
try:
    lock = runlock.acquire(here, "puffctl launcher")
    if resume and sys.argv[2] == "1":
        if os.path.exists("status.json") and json.load(open("status.json")).get("status") == "completed":
            raise ValueError(f"run {here.name} already completed; nothing to resume")
        checkpoint.newest_intact(here)
except (runlock.RunLocked, checkpoint.NoIntactCheckpoint, ValueError) as error:
    print(json.dumps({"refused": str(error)}))
    sys.exit(0)
if resume and os.path.exists("events.jsonl") and os.path.getsize("events.jsonl"):  # a killed writer's last line
    with open("events.jsonl", "rb+") as events:
        events.seek(-1, 2)
        if events.read(1) != b"\\n":
            events.write(b"\\n")
if os.path.exists("%s"):
    os.remove("%s")
argv = [sys.executable, *json.loads(sys.argv[3]), "--lock-fd", str(lock.fileno())]
reader, writer = os.pipe()
if os.fork() == 0:
    os.setsid()
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    with open("stdout.log", "ab") as log:
        trainer = subprocess.Popen(argv + (["--resume"] if resume else []), stdout=log, stderr=subprocess.STDOUT,
                                   pass_fds=(lock.fileno(),))
    with open("%s", "w") as handle:
        handle.write(str(trainer.pid))
    os.write(writer, str(trainer.pid).encode())
    os.close(writer)
    code = trainer.wait()
    with open("%s.tmp", "w") as handle:
        handle.write(f"{128 - code if code < 0 else code}\\n")
    os.replace("%s.tmp", "%s")
    os._exit(0)
os.close(writer)
pid = os.read(reader, 32)
print(json.dumps({"pid": int(pid)} if pid else {"refused": "the trainer did not start (see stdout.log)"}))
""" % (EXIT_FILE, EXIT_FILE, PID_FILE, EXIT_FILE, EXIT_FILE, EXIT_FILE)

# Prints the bytes of a file from an offset to its end (nothing if it does not exist yet).
READ_FROM = """\
import sys
try:
    with open(sys.argv[1], "rb") as handle:
        handle.seek(int(sys.argv[2]))
        sys.stdout.buffer.write(handle.read())
except FileNotFoundError:
    pass
"""


@dataclass(frozen=True)
class Remote:
    """Where a remote run lives: box, dev container and directory there (launch.json's `remote`)."""

    box: str
    container: str
    container_id: str
    dir: str
    gpus: str | None = None

    @property
    def events(self) -> str:
        return f"{self.dir}/events.jsonl"

    @classmethod
    def of(cls, launch: dict) -> "Remote | None":
        data = launch.get("remote")
        if not isinstance(data, dict):
            return None
        return cls(box=data["box"], container=data["container"], container_id=data["container_id"],
                   dir=data["dir"], gpus=data.get("gpus"))


def parse_gpus(text: str | None) -> str | None:
    """--gpu 'i' or 'i,j' -> the CUDA_VISIBLE_DEVICES value; a one-line error for anything else."""
    if text is None:
        return None
    parts = [part.strip() for part in text.split(",")]
    if not parts or not all(part.isdigit() for part in parts) or len(set(parts)) != len(parts):
        raise PuffctlError(f"bad --gpu {text!r}: use a GPU index (0) or a list of distinct indices (0,1)")
    return ",".join(str(int(part)) for part in parts)


def check_box(name: str, gpus: str | None):
    """The registered box, refused when its last check failed or it cannot give the GPUs asked for."""
    from puffctl import boxes

    box = boxes.get_box(name)
    health = box.health or {}
    if health.get("status") == "unhealthy":
        raise PuffctlError(f"box {name} failed its last check ({', '.join(health.get('failed', [])) or 'see box list'}); "
                           f"fix it and run `puffctl box check {name}`")
    if gpus is not None:
        if box.cpu_only:
            raise PuffctlError(f"box {name} is CPU-only (added with --cpu-only): drop --gpu")
        known = [gpu["index"] for gpu in (health.get("gpus") or {}).get("gpus", [])]
        missing = [index for index in gpus.split(",") if known and int(index) not in known]
        if missing:
            raise PuffctlError(f"box {name} has no GPU {', '.join(missing)} (its GPUs: {', '.join(map(str, known))})")
    return box


@dataclass
class HeadStart:
    """What a start on a box waits for, begun in the background before the command's local work."""

    box: str
    repo: Path
    mux: object | None  # the SSH master being connected (puffctl.sshmux.SSHMux), None for unix://
    tree: object  # a Future of archive.tree_source(repo): the code's files and provenance (git)


def head_start(box: str) -> HeadStart:
    """Begin the SSH handshake to BOX and the code's tree (git) now, so that they overlap the
    command's imports and checks (the time to the first table line of `train --box`)."""
    from concurrent.futures import ThreadPoolExecutor

    from puffctl import archive, boxes, launch

    repo = archive.repo_root(launch.code_root())
    pool = ThreadPoolExecutor(1)
    tree = pool.submit(archive.tree_source, repo)
    pool.shutdown(wait=False)
    return HeadStart(box, repo, boxes.dial(box), tree)


def check_resume(run: runs.Run, where: Remote, box: str | None, container: str, gpu: str | None) -> str | None:
    """The GPUs to resume remote run `run` with (--gpu, else its own); one line for a completed run
    or a --box/--container other than where it lives. The box itself checks its lock and checkpoints."""
    if run.status == "completed":
        raise PuffctlError(f"run {run.run_id!r} already completed; nothing to resume")
    if box is not None and box != where.box:
        raise PuffctlError(f"run {run.run_id!r} lives on box {where.box}, not {box}: drop --box")
    if container not in ("dev", where.container):
        raise PuffctlError(f"run {run.run_id!r} lives in container {where.container}, not {container}: drop --container")
    gpus = parse_gpus(gpu) if gpu is not None else where.gpus
    check_box(where.box, gpus)
    return gpus


def running_container(engine: Engine, name: str):
    """My dev container NAME on the box, which must be running."""
    from puffctl import containers

    container = containers.resolve(engine, name, verb="train in")
    if container.status != "running":
        raise PuffctlError(f"container {container.name} is {container.status}: `puffctl container up {engine.box}` first")
    return container


def python_runs(engine: Engine, name: str) -> bool:
    """True if `python` starts in my dev container NAME (what every remote run needs)."""
    from puffctl import containers

    container = running_container(engine, name)
    return containers.run(engine, container.id, ["python", "-c", "pass"], lambda kind, data: None) == 0


def workspace_state(container) -> dict[str, bytes]:
    """The files of the workspace's sync state (source.json, manifest.txt, ...) in one get-archive; {} if none."""
    import docker.errors

    from puffctl import containers

    try:
        stream, _ = container.get_archive(f"{containers.WORKSPACE}/{containers.STATE_DIR}")
    except docker.errors.NotFound:
        return {}
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
        return {Path(member.name).name: tar.extractfile(member).read() for member in tar if member.isreg()}


def synced_source(engine: Engine, name: str, repo: Path, *, container=None, tree=None) -> tuple[dict, float | None]:
    """Sync the git-tracked code unless the workspace already holds exactly it; (provenance, sync seconds or None).

    `container`: my dev container NAME, already resolved; `tree`: archive.tree_source(repo), already made.
    """
    from puffctl import archive, containers

    container = container or running_container(engine, name)
    captured, files = tree or archive.tree_source(repo)
    there = workspace_state(container)
    if there.get("source.json") and there.get("manifest.txt") and json.loads(there["source.json"]) == captured.info \
            and there["manifest.txt"].decode(errors="replace").splitlines() == files:
        return captured.info, None
    began = time.monotonic()
    result = containers.sync(engine, name, repo)
    return result.source, time.monotonic() - began


def _tar_of(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        directories = sorted({str(parent) for name in files for parent in Path(name).parents if str(parent) != "."})
        for directory in directories:
            info = tarfile.TarInfo(directory)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, int(time.time())
            tar.addfile(info)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def trainer_args(path: Path) -> list[str]:
    """What follows the interpreter in the command that starts run `path`'s trainer in its directory
    on the box (the launcher adds the lock fd and --resume): through torchrun
    (`-m trainer.distributed`) when its train.world_size asks for several ranks."""
    from puffctl.launch import world_size
    from trainer import distributed

    return distributed.command(world_size(path), ["--config", "config.yaml", "--run-dir", "."])[1:]


def start(engine: Engine, path: Path, container_name: str, gpus: str | None, source: dict, *,
          remote_name: str | None = None, resume: bool = False, need_checkpoint: bool = False,
          lease: float | None = None, container=None) -> Remote:
    """Put the run's config on the box and start the trainer there, detached; record where in launch.json.

    `remote_name`: the directory under /workspace/runs (default: the run id). `resume`: continue
    from the checkpoints already there (its source.json stays, as for a local resume);
    `need_checkpoint`: refuse with one line unless one of them is intact. `lease`: the trainer
    stops itself when nobody has asked about it (probe) for that many seconds. A trainer already
    running in that directory (its lock held) is a one-line refusal naming it. `container`: the
    dev container, already resolved.
    """
    from puffctl import containers

    container = container or running_container(engine, container_name)
    name = remote_name or path.name
    remote_dir = f"{REMOTE_ROOT}/{name}"
    top = Path(REMOTE_ROOT).relative_to(containers.WORKSPACE)
    files = {f"{top}/{name}/config.yaml": (path / "config.yaml").read_bytes()}
    if not resume:
        files[f"{top}/{name}/source.json"] = json.dumps(source, indent=2).encode() + b"\n"
    if lease is not None:
        files[f"{top}/{name}/lease"] = b""
    if remote_name is not None and not resume:  # a name that may have run before (a batch cell's next attempt)
        container.exec_run(["rm", "-rf", "--", remote_dir])
    if not container.put_archive(containers.WORKSPACE, _tar_of(files)):
        raise PuffctlError(f"box {engine.box}: could not write {remote_dir} in {container.name}", exit_code=1)
    if not resume:
        runs.write_json(path / "source.json", source)
    env = {"PYTHONPATH": containers.WORKSPACE, "PYTHONUNBUFFERED": "1"}
    if gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpus
    output: list[bytes] = []
    launcher = ["python", "-c", LAUNCH, "resume" if resume else "new", str(int(need_checkpoint)),
                json.dumps(trainer_args(path))]
    code = containers.run(engine, container.id, launcher, lambda kind, data: output.append(data), env=env,
                          workdir=remote_dir)
    text = b"".join(output).decode(errors="replace").strip()
    try:
        answer = json.loads(text.splitlines()[-1]) if code == 0 else {}
    except (ValueError, IndexError):
        answer = {}
    if "refused" in answer:
        raise PuffctlError(f"box {engine.box}: {answer['refused']}")
    if "pid" not in answer:
        raise PuffctlError(f"box {engine.box}: could not start the trainer in {container.name}: {text[-300:]}", exit_code=1)
    if lease is not None:
        engine.client.api.exec_start(engine.client.api.exec_create(
            container.id, ["python", "-c", LEASE, str(lease)], workdir=remote_dir)["Id"], detach=True)
    remote = Remote(engine.box, container_name, container.id, remote_dir, gpus)
    launch = runs.read_json(path / runs.LAUNCH_FILE)
    launch.update(remote={**remote.__dict__, "pid": answer["pid"], "started": time.time()}, host=f"box:{engine.box}")
    if resume:
        launch["resumes"] = int(launch.get("resumes") or 0) + 1
    runs.write_json(path / runs.LAUNCH_FILE, launch)
    return remote


def read_new(engine: Engine, remote: Remote, offset: int) -> bytes:
    """The bytes of the remote events.jsonl from `offset` to its current end."""
    from puffctl import containers

    chunks: list[bytes] = []
    containers.run(engine, remote.container_id, ["python", "-c", READ_FROM, remote.events, str(offset)],
                   lambda kind, data: chunks.append(data) if kind == "stdout" else None, workdir=remote.dir)
    return b"".join(chunks)


def stop(engine: Engine, remote: Remote, at_once: bool = False) -> bool:
    """Ask the remote trainer to checkpoint and stop (SIGINT, like Ctrl-C locally); SIGKILL when at_once."""
    signal_name = "KILL" if at_once else "INT"
    result = engine.client.api.exec_create(remote.container_id, ["sh", "-c", f"kill -{signal_name} $(cat {PID_FILE})"],
                                           workdir=remote.dir)
    engine.client.api.exec_start(result["Id"])
    return engine.client.api.exec_inspect(result["Id"]).get("ExitCode") == 0


def probe(engine: Engine, remote: Remote) -> dict:
    """{"exit", "alive", "status"} of the remote run, read in its container."""
    from puffctl import containers

    output = []
    code = containers.run(engine, remote.container_id, ["python", "-c", PROBE], lambda kind, data: output.append(data),
                          workdir=remote.dir)
    if code != 0:
        raise PuffctlError(f"box {engine.box}: could not read run {remote.dir}: {b''.join(output).decode(errors='replace')[-200:]}",
                           exit_code=1)
    return json.loads(b"".join(output).decode().strip().splitlines()[-1])


class Detached(Exception):
    """The follower stopped watching (Ctrl-C); the run goes on on the box."""


def follow(path: Path, remote: Remote, on_bytes: Callable[[], None], *, reconnect_for: float = RECONNECT_FOR,
           on_reconnect: Callable[[str], None] = lambda why: None,
           open_engine: Callable[[str], object] | None = None, engine=None) -> int:
    """Append the remote events.jsonl to the local one until the trainer has exited; returns its exit code.

    Each (re)connection resumes at the local file's size, so the local file stays a byte-exact
    prefix of the remote one. A lost connection is retried for `reconnect_for` seconds; after
    that a PuffctlError says the run goes on and how to re-attach. `engine`: a connection to the
    box already open (the one that started the run), used first and closed here.
    """
    from puffctl import boxes, containers

    connect = open_engine or boxes.open_box
    handed = [engine] if engine is not None else []

    def open_engine(box: str):
        return handed.pop() if handed else connect(box)

    local = path / "events.jsonl"
    local.touch()
    lost_since: float | None = None
    while True:
        try:
            with open_engine(remote.box) as engine:
                offset = local.stat().st_size
                stream = containers.exec_stream(engine, remote.container_id,
                                                ["python", "-c", FOLLOWER, remote.events, str(offset), EXIT_FILE],
                                                workdir=remote.dir)
                lost_since = None
                with local.open("ab") as out:
                    for kind, data in stream:
                        if kind == "stdout":
                            out.write(data)
                            out.flush()
                            on_bytes()
                if stream.exit_code != 0:
                    raise PuffctlError(f"box {remote.box}: the event reader in {remote.container} failed "
                                       f"(is python on its PATH?)", exit_code=1)
                return int(probe(engine, remote)["exit"] or 0)
        except PuffctlError as error:
            transient = isinstance(error, containers.ConnectionLost) or "unreachable" in str(error) \
                or "timed out" in str(error)
            if not transient:
                raise
            lost_since = lost_since or time.monotonic()
            if time.monotonic() - lost_since > reconnect_for:
                raise PuffctlError(f"box {remote.box} unreachable for {reconnect_for:.0f} s; the run goes on there: "
                                   f"re-attach with `puffctl runs attach {path.name}`", exit_code=1) from None
            on_reconnect(str(error))
            time.sleep(0.5)


def check_member(member: tarfile.TarInfo, top: str) -> None:
    """Refuse an archive member that is not a plain file or directory inside `top` (links, devices, escapes)."""
    name = member.name
    parts = Path(name).parts
    if name.startswith("/") or ".." in parts or not parts or parts[0] != top:
        raise PuffctlError(f"refusing the copy-back: archive member {name!r} lies outside the run directory {top}/")
    if not (member.isreg() or member.isdir()):
        kind = "link" if member.issym() or member.islnk() else "special file"
        raise PuffctlError(f"refusing the copy-back: archive member {name!r} is a {kind}")


def extract_run(archive, top: str, dest: Path) -> list[str]:
    """Extract a run directory's tar (a file object) into dest after checking every member; returns the names."""
    with tarfile.open(fileobj=archive, mode="r|") as tar:
        members = []
        for member in tar:
            check_member(member, top)
            tar.extract(member, dest, filter="data")
            members.append(member.name)
    return members


def copy_back(engine: Engine, path: Path, remote: Remote) -> Path:
    """Bring the finished run's directory from the box into the local run directory.

    The streamed events.jsonl stays unless the box's is longer (then the local one was a prefix).
    """
    import docker.errors

    try:
        stream, _ = engine.client.api.get_archive(remote.container_id, remote.dir)
    except docker.errors.NotFound:
        raise PuffctlError(f"run directory {remote.dir} is gone from {remote.container} on box {remote.box}") from None
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}-copyback-", dir=path.parent))
    try:
        with tempfile.SpooledTemporaryFile(max_size=64 * 2**20) as spool:
            for chunk in stream:
                spool.write(chunk)
            spool.seek(0)
            extract_run(spool, Path(remote.dir).name, staging)
        fetched = staging / Path(remote.dir).name
        for item in fetched.rglob("*"):
            if item.is_dir():
                continue
            target = path / item.relative_to(fetched)
            if item.name == "events.jsonl" and target.exists() and item.stat().st_size <= target.stat().st_size:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(item, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    launch = runs.read_json(path / runs.LAUNCH_FILE)
    launch.setdefault("remote", {})["copied_back"] = time.time()
    runs.write_json(path / runs.LAUNCH_FILE, launch)
    return path


def remote_statuses(found: list[runs.Run]) -> dict[str, str]:
    """run id -> status now, for remote runs not yet copied back: asked of their boxes in parallel.

    `unreachable` when the box cannot be reached, `lost` when the trainer is gone without an end.
    """
    from concurrent.futures import ThreadPoolExecutor

    from puffctl import boxes

    pending: dict[str, list[tuple[runs.Run, Remote]]] = {}
    for run in found:
        remote = Remote.of(run.launch)
        if remote is not None and not run.launch["remote"].get("copied_back"):  # finished here, maybe resumed there
            pending.setdefault(remote.box, []).append((run, remote))

    def ask(box: str) -> dict[str, str]:
        try:
            with boxes.open_box(box) as engine:
                result = {}
                for run, remote in pending[box]:
                    try:
                        facts = probe(engine, remote)
                    except Exception:  # noqa: BLE001 - a container or run gone from the box
                        result[run.run_id] = "lost"
                        continue
                    if facts["alive"]:
                        result[run.run_id] = "running"
                    elif facts["exit"] is not None and facts["status"] in ("completed", "failed", "interrupted"):
                        result[run.run_id] = facts["status"]
                    else:
                        result[run.run_id] = "lost"
                return result
        except PuffctlError:
            return {run.run_id: "unreachable" for run, _ in pending[box]}

    if not pending:
        return {}
    statuses: dict[str, str] = {}
    with ThreadPoolExecutor(max_workers=min(8, len(pending))) as pool:
        for result in pool.map(ask, list(pending)):
            statuses.update(result)
    return statuses
