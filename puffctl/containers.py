"""Dev containers on a box: up, ls, sync, exec, shell, logs, down, and fetching paths back.

Every container puffctl makes carries labels (owner, box, purpose, name) and is named
`puffctl-<owner>-<name>` on the engine, so several people's containers coexist on one box.
puffctl touches only containers with its labels and the current owner: anything else is a
one-line refusal. The workspace (/workspace) is a named volume, separate from the image, so
the image can be rebuilt and the container recreated without losing runs.
"""

from __future__ import annotations

import io
import os
import re
import select
import shlex
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from puffctl.boxes import (DEFAULT_SHM, LABEL_BOX, LABEL_NAME, LABEL_OWNER, LABEL_PURPOSE, Box, size_gib,
                           owner, validate_box_name)
from puffctl.archive import tree_archive
from puffctl.errors import PuffctlError

if TYPE_CHECKING:
    from puffctl.engine import Engine

WORKSPACE = "/workspace"
STATE_DIR = ".puffctl"  # inside the workspace: source.json, source.patch and the manifest of synced files (trainer.provenance.STATE_DIR)
DEFAULT_NAME = "dev"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")


def parse_target(text: str) -> tuple[str, str]:
    """'BOX' or 'BOX/NAME' -> (box, name); the name defaults to 'dev'."""
    box, _, name = text.partition("/")
    validate_box_name(box)
    return box, name or DEFAULT_NAME


def validate_name(name: str) -> str:
    if not _NAME.match(name):
        raise PuffctlError(f"bad container name {name!r}: use 1-32 lowercase letters, digits, '-' or '_'")
    return name


def engine_name(name: str, who: str | None = None) -> str:
    return f"puffctl-{who or owner()}-{name}"


def volume_name(name: str, who: str | None = None) -> str:
    return f"{engine_name(name, who)}-workspace"


@dataclass
class DevContainer:
    """A puffctl dev container as `container ls` shows it."""

    name: str
    box: str
    owner: str
    engine_name: str
    status: str
    image: str
    id: str
    created: str
    gpus: str
    shm_mib: int


def _describe(engine: Engine, container) -> DevContainer:
    attrs = container.attrs
    labels = attrs["Config"].get("Labels") or {}
    requests = attrs["HostConfig"].get("DeviceRequests") or []
    gpus = "-"
    for request in requests:
        if request.get("DeviceIDs"):
            gpus = ",".join(request["DeviceIDs"])
        elif request.get("Count"):
            gpus = "all" if request["Count"] == -1 else str(request["Count"])
    return DevContainer(name=labels.get(LABEL_NAME, container.name), box=labels.get(LABEL_BOX, engine.box),
                        owner=labels.get(LABEL_OWNER, "?"), engine_name=container.name,
                        status=container.status, image=attrs["Config"].get("Image", "?"), id=container.id[:12],
                        created=attrs.get("Created", "")[:19].replace("T", " "), gpus=gpus,
                        shm_mib=(attrs["HostConfig"].get("ShmSize") or 0) // 2**20)


def list_containers(engine: Engine, mine_only: bool = False) -> list[DevContainer]:
    """Every puffctl dev container on the box (all owners unless mine_only), oldest first."""
    labels = [f"{LABEL_PURPOSE}=dev"] + ([f"{LABEL_OWNER}={owner()}"] if mine_only else [])
    found = engine.client.containers.list(all=True, filters={"label": labels})
    return sorted((_describe(engine, c) for c in found), key=lambda c: (c.created, c.engine_name))


def list_on_boxes(names: list[str]) -> list[tuple[str, list[DevContainer] | PuffctlError]]:
    """Dev containers on each named box, reached in parallel; an unreachable box gives its error."""
    from concurrent.futures import ThreadPoolExecutor

    from puffctl.boxes import open_box

    def one(name: str) -> list[DevContainer] | PuffctlError:
        try:
            with open_box(name) as engine:
                return list_containers(engine)
        except PuffctlError as error:
            return error

    if not names:
        return []
    with ThreadPoolExecutor(max_workers=min(8, len(names))) as pool:
        return list(zip(names, pool.map(one, names)))


def resolve(engine: Engine, name: str, verb: str = "use"):
    """My dev container NAME, or a refusal if NAME names someone else's or a non-puffctl container."""
    import docker.errors

    me = owner()
    mine = engine.client.containers.list(all=True, filters={"label": [f"{LABEL_PURPOSE}=dev", f"{LABEL_OWNER}={me}",
                                                                      f"{LABEL_NAME}={name}"]})
    if mine:
        return mine[0]
    try:
        other = engine.client.containers.get(name)
    except docker.errors.NotFound:
        raise PuffctlError(f"no dev container {name!r} of {me} on box {engine.box} "
                           f"(see `puffctl container ls {engine.box}`)") from None
    labels = other.labels or {}
    if labels.get(LABEL_PURPOSE) != "dev" or LABEL_OWNER not in labels:
        raise PuffctlError(f"refusing to {verb} container {other.name} on box {engine.box}: "
                           "it was not created by puffctl (no puffctl labels)")
    if labels[LABEL_OWNER] != me:
        raise PuffctlError(f"refusing to {verb} container {other.name} on box {engine.box}: "
                           f"it belongs to {labels[LABEL_OWNER]}, not {me}")
    return other


# ---- up / down --------------------------------------------------------------------------------

def gpu_request(spec: str | None):
    """--gpus all | N (a count) | 0,1 or device=2 (device ids) -> a DeviceRequest, or None."""
    import docker.types

    if spec is None or spec in ("", "none"):
        return None
    spec = spec.strip()
    if spec == "all":
        return docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])
    if spec.startswith("device="):
        spec = spec[len("device="):] + ","
    if "," in spec:
        ids = [part.strip() for part in spec.split(",") if part.strip()]
        if ids and all(re.fullmatch(r"[0-9]+|GPU-[0-9a-fA-F-]+", i) for i in ids):
            return docker.types.DeviceRequest(device_ids=ids, capabilities=[["gpu"]])
    elif spec.isdigit() and int(spec) > 0:
        return docker.types.DeviceRequest(count=int(spec), capabilities=[["gpu"]])
    raise PuffctlError(f"bad --gpus {spec!r}: use all, a count like 2, or device ids like 0,1")


def up(engine: Engine, box: Box, name: str = DEFAULT_NAME, image: str | None = None, gpus: str | None = None,
       shm_size: str = DEFAULT_SHM, cpus: float | None = None, network: str | None = None) -> tuple[DevContainer, bool]:
    """Start my dev container NAME on the box (create it if needed); (container, created?)."""
    import docker.errors

    validate_name(name)
    image = image or box.default_image
    request = gpu_request(gpus)
    shm_mib = int(size_gib(shm_size) * 1024)
    if cpus is not None and cpus <= 0:
        raise PuffctlError(f"bad --cpus {cpus}: must be positive")
    if request is not None and box.cpu_only:
        raise PuffctlError(f"box {box.name} has no GPUs for containers (added as --cpu-only): drop --gpus")
    existing = engine.client.containers.list(all=True, filters={"label": [f"{LABEL_PURPOSE}=dev",
                                                                           f"{LABEL_OWNER}={owner()}",
                                                                           f"{LABEL_NAME}={name}"]})
    if existing:
        container = existing[0]
        if container.status != "running":
            container.start()
            container.reload()
        return _describe(engine, container), False
    try:
        engine.client.images.get(image)
    except docker.errors.ImageNotFound:
        raise PuffctlError(f"image {image} is not on box {box.name}: run `puffctl box provision {box.name}` "
                           "or pass --image") from None
    labels = {LABEL_OWNER: owner(), LABEL_BOX: box.name, LABEL_PURPOSE: "dev", LABEL_NAME: name}
    volume, new_volume = volume_name(name), False
    try:
        engine.client.volumes.get(volume)
    except docker.errors.NotFound:
        engine.client.volumes.create(volume, labels=labels)
        new_volume = True
    container = None
    try:
        container = engine.client.containers.create(
            image, ["sleep", "infinity"], name=engine_name(name), labels=labels, init=True,
            working_dir=WORKSPACE, volumes={volume: {"bind": WORKSPACE, "mode": "rw"}},
            environment={"PUFFCTL_BOX": box.name, "PUFFCTL_OWNER": owner(), "PYTHONUNBUFFERED": "1"},
            shm_size=f"{shm_mib}m", nano_cpus=int(cpus * 1e9) if cpus else None, network_mode=network,
            device_requests=[request] if request else None)
        container.start()
        container.reload()
    except docker.errors.APIError as error:
        if container is not None:
            container.remove(force=True)
        if new_volume:
            engine.client.volumes.get(volume).remove(force=True)
        text = str(error.explanation or error).splitlines()[0]
        if "could not select device driver" in text:
            raise PuffctlError(f"box {box.name} has no GPUs for containers (no NVIDIA container runtime): "
                               "drop --gpus, or see `puffctl box check`") from None
        raise PuffctlError(f"box {box.name}: could not start container {engine_name(name)}: {text}", exit_code=1) from None
    return _describe(engine, container), True


def down(engine: Engine, name: str, purge: bool = False) -> str:
    """Stop and remove my dev container NAME (and with purge its workspace volume); returns its engine name."""
    import docker.errors

    container = resolve(engine, name, verb="remove")
    labels = container.labels
    container.remove(force=True)
    if purge:
        try:
            engine.client.volumes.get(volume_name(labels[LABEL_NAME], labels[LABEL_OWNER])).remove(force=True)
        except docker.errors.NotFound:
            pass
    return container.name


# ---- sync: the described tree into /workspace ----------------------------------------------

@dataclass
class SyncResult:
    files: int
    bytes: int
    removed: int
    source: dict


def sync(engine: Engine, name: str, repo: Path) -> SyncResult:
    """Upload the tree the provenance describes (tracked files and untracked ones that are not
    ignored) to /workspace, drop files no longer there, and write its source.json and source.patch."""
    container = resolve(engine, name, verb="sync")
    if container.status != "running":
        raise PuffctlError(f"container {container.name} is {container.status}: `puffctl container up {engine.box}` first")
    archive, source = tree_archive(repo)
    files = archive.files
    previous = read_file(engine, container, f"{WORKSPACE}/{STATE_DIR}/manifest.txt")
    stale = sorted(set(previous.decode(errors="replace").splitlines()) - set(files)) if previous else []
    if not container.put_archive(WORKSPACE, archive.data):
        raise PuffctlError(f"box {engine.box}: upload to {container.name}:{WORKSPACE} failed", exit_code=1)
    for start in range(0, len(stale), 200):
        paths = [f"{WORKSPACE}/{p}" for p in stale[start:start + 200] if p and ".." not in p.split("/")]
        container.exec_run(["rm", "-f", "--", *paths])
    return SyncResult(len(archive.files), archive.size, len(stale), source)


def read_file(engine: Engine, container, path: str) -> bytes | None:
    """A file's bytes from a container (get_archive), or None when it is not there."""
    import docker.errors

    try:
        stream, _ = container.get_archive(path)
    except docker.errors.NotFound:
        return None
    buffer = io.BytesIO(b"".join(stream))
    with tarfile.open(fileobj=buffer) as tar:
        member = tar.next()
        handle = tar.extractfile(member) if member else None
        return handle.read() if handle else None


def fetch_path(engine: Engine, container_id: str, path: str, dest: Path) -> Path:
    """Copy PATH out of a container (get_archive) into the local directory dest; return the local path."""
    import docker.errors

    container = engine.client.containers.get(container_id)
    try:
        stream, stat = container.get_archive(path)
    except docker.errors.NotFound:
        raise PuffctlError(f"{path} does not exist in {container.name} on box {engine.box}") from None
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.SpooledTemporaryFile(max_size=64 * 2**20) as spool:
        for chunk in stream:
            spool.write(chunk)
        spool.seek(0)
        with tarfile.open(fileobj=spool) as tar:
            tar.extractall(dest, filter="data")
    return dest / stat["name"]


# ---- exec, logs, shell ------------------------------------------------------------------------

class ConnectionLost(PuffctlError):
    """The connection to the box broke while a command's output streamed; the command may still run."""

    def __init__(self, message: str, exec_id: str) -> None:
        super().__init__(message, exit_code=1)
        self.exec_id = exec_id


class ExecStream:
    """Output of a command running in a container, as (stream, bytes) chunks; then its exit code."""

    def __init__(self, engine: Engine, exec_id: str, chunks: Iterator) -> None:
        self.engine, self.id, self._chunks = engine, exec_id, chunks

    def __iter__(self) -> Iterator[tuple[str, bytes]]:
        import requests
        import urllib3

        try:
            for out, err in self._chunks:
                if out:
                    yield "stdout", out
                if err:
                    yield "stderr", err
        except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError) as error:
            raise ConnectionLost(f"box {self.engine.box}: connection lost while streaming exec {self.id[:12]} "
                                 f"({type(error).__name__}); the command may still be running", self.id) from None

    @property
    def exit_code(self) -> int:
        """The command's exit code once its output has ended (waits briefly for Docker to notice)."""
        deadline = time.monotonic() + 5
        while True:
            state = self.engine.client.api.exec_inspect(self.id)
            if not state.get("Running"):
                return state["ExitCode"]
            if time.monotonic() > deadline:
                raise ConnectionLost(f"box {self.engine.box}: output of exec {self.id[:12]} ended but the "
                                     "command still runs", self.id)
            time.sleep(0.05)


def exec_stream(engine: Engine, container_id: str, cmd: list[str], env: dict[str, str] | None = None,
                workdir: str = WORKSPACE, user: str | None = None) -> ExecStream:
    """Start cmd in the container and stream its stdout/stderr; `.exit_code` after iterating."""
    api = engine.client.api
    created = api.exec_create(container_id, cmd, stdout=True, stderr=True, environment=env, workdir=workdir,
                              user=user or "")
    return ExecStream(engine, created["Id"], api.exec_start(created["Id"], stream=True, demux=True))


def run(engine: Engine, container_id: str, cmd: list[str], on_output: Callable[[str, bytes], None],
        **options) -> int:
    """Run cmd to completion, handing each output chunk to on_output; return its exit code."""
    stream = exec_stream(engine, container_id, cmd, **options)
    for kind, data in stream:
        on_output(kind, data)
    return stream.exit_code


def exec_detached(engine: Engine, container_id: str, cmd: list[str], log_path: str, env: dict[str, str] | None = None,
                  workdir: str = WORKSPACE) -> str:
    """Start cmd in the background, its output in log_path and its exit code in log_path + '.exit'.

    The command outlives this connection: follow it later with `exec_stream(... tail -F log_path)`
    and ask `exec_state` whether it still runs. Returns the exec id.
    """
    script = (f"mkdir -p \"$(dirname {shlex.quote(log_path)})\" && "
              f"{{ {shlex.join(cmd)} ; }} > {shlex.quote(log_path)} 2>&1; "
              f"code=$?; echo $code > {shlex.quote(log_path + '.exit')}; exit $code")
    api = engine.client.api
    created = api.exec_create(container_id, ["sh", "-c", script], environment=env, workdir=workdir)
    api.exec_start(created["Id"], detach=True)
    return created["Id"]


def exec_state(engine: Engine, exec_id: str) -> dict:
    """{"running", "exit_code", "pid"} of an exec (detached or not)."""
    state = engine.client.api.exec_inspect(exec_id)
    return {"running": bool(state.get("Running")), "exit_code": state.get("ExitCode"), "pid": state.get("Pid")}


def logs(engine: Engine, name: str, follow: bool = False, tail: int | None = None) -> Iterator[bytes]:
    """The main process's output of my dev container (detached runs may write to /proc/1/fd/1)."""
    container = resolve(engine, name, verb="read logs of")
    return container.logs(stream=True, follow=follow, tail=tail if tail is not None else "all")


def _frames(buffer: bytearray) -> Iterator[tuple[int, bytes]]:
    """Complete (stream, payload) frames of Docker's multiplexed stream, consumed from buffer."""
    while len(buffer) >= 8:
        size = int.from_bytes(buffer[4:8], "big")
        if len(buffer) < 8 + size:
            return
        stream, payload = buffer[0], bytes(buffer[8:8 + size])
        del buffer[:8 + size]
        yield stream, payload


def shell(engine: Engine, name: str, command: list[str] | None = None, stdin=None, stdout=None, stderr=None) -> int:
    """A shell (bash if present) in my dev container; returns its exit code.

    On a terminal it gets a TTY (raw mode, window size); with piped input it reads the script
    from stdin until end of input, its stdout and stderr kept apart.
    """
    import socket as socket_module
    import termios
    import tty as tty_module

    stdin, stdout, stderr = stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr
    container = resolve(engine, name, verb="open a shell in")
    if container.status != "running":
        raise PuffctlError(f"container {container.name} is {container.status}: `puffctl container up {engine.box}` first")
    cmd = command or ["sh", "-c", "command -v bash >/dev/null 2>&1 && exec bash -l || exec sh -l"]
    api = engine.client.api
    interactive = stdin.isatty()
    created = api.exec_create(container.id, cmd, stdin=True, tty=interactive, workdir=WORKSPACE,
                              environment={"TERM": os.environ.get("TERM", "xterm")})
    sock = api.exec_start(created["Id"], tty=interactive, socket=True)
    raw = getattr(sock, "_sock", sock)
    in_fd, out_fd, err_fd = stdin.fileno(), stdout.fileno(), stderr.fileno()
    saved = termios.tcgetattr(in_fd) if interactive else None
    pending = bytearray()
    try:
        if interactive:
            size = os.get_terminal_size(out_fd)
            api.exec_resize(created["Id"], height=size.lines, width=size.columns)
            tty_module.setraw(in_fd)
        reading = True
        while True:
            ready, _, _ = select.select([raw] + ([in_fd] if reading else []), [], [])
            if raw in ready:
                data = raw.recv(65536)
                if not data:
                    break
                if interactive:
                    os.write(out_fd, data)
                else:
                    pending += data
                    for stream, payload in _frames(pending):
                        os.write(err_fd if stream == 2 else out_fd, payload)
            if reading and in_fd in ready:
                data = os.read(in_fd, 65536)
                if data:
                    raw.sendall(data)
                else:
                    reading = False
                    raw.shutdown(socket_module.SHUT_WR)
    finally:
        if saved is not None:
            termios.tcsetattr(in_fd, termios.TCSADRAIN, saved)
        raw.close()
    return ExecStream(engine, created["Id"], iter(())).exit_code
