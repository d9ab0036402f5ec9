"""Boxes: the registry of Docker engines puffctl can reach, their status, health check and dev image.

The registry is `boxes.json` in the user's config directory ($PUFFCTL_CONFIG_DIR, else
$XDG_CONFIG_HOME/puffctl, else ~/.config/puffctl): names, host URLs and the last check's
result. No secrets: SSH keys stay with the user's agent and ssh config.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import re
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from puffctl.errors import PuffctlError

if TYPE_CHECKING:  # docker is imported only when a command talks to a box
    from puffctl.engine import Engine
    from puffctl.sshmux import SSHMux
    from puffctl.gpu import GPUReport

REGISTRY_FILE = "boxes.json"
DEV_IMAGE = "puffctl-dev"
LABEL_OWNER, LABEL_BOX, LABEL_PURPOSE, LABEL_NAME = "puffctl.owner", "puffctl.box", "puffctl.purpose", "puffctl.name"
LABEL_CUDA = "puffctl.cuda"
MIN_DISK_GB = 20.0
MIN_SHM_GB = 1.0
DEFAULT_SHM = "8g"
DOCKERFILE = "containers/Dockerfile"

# Build arguments of the two dev image variants (containers/Dockerfile documents each).
VARIANTS: dict[str, dict[str, str]] = {
    "cuda": {"BASE_IMAGE": "nvidia/cuda:12.4.1-cudnn-devel-ubuntu22.04", "IMAGE_CUDA": "12.4",
             "TORCH_VERSION": "2.6.0"},
    "cpu": {"BASE_IMAGE": "ubuntu:22.04", "IMAGE_CUDA": "", "TORCH_VERSION": "2.6.0"},
}

# Known CUDA devel bases, newest first, with the torch release built for that CUDA ("cuXYZ" wheels).
# The minimum driver of each CUDA is gpu.MIN_DRIVER_FOR_CUDA's. `default_wheel`: the default
# index's torch is this CUDA build; others need PyTorch's own wheel index (--torch-index).
CUDA_BASES: tuple[dict[str, str | bool], ...] = (
    {"cuda": "12.8", "base": "nvidia/cuda:12.8.1-cudnn-devel-ubuntu22.04", "torch": "2.7.1", "wheel": "cu128",
     "default_wheel": False},
    {"cuda": "12.6", "base": "nvidia/cuda:12.6.3-cudnn-devel-ubuntu22.04", "torch": "2.7.1", "wheel": "cu126",
     "default_wheel": True},
    {"cuda": "12.4", "base": "nvidia/cuda:12.4.1-cudnn-devel-ubuntu22.04", "torch": "2.6.0", "wheel": "cu124",
     "default_wheel": True},
    {"cuda": "12.1", "base": "nvidia/cuda:12.1.1-cudnn8-devel-ubuntu22.04", "torch": "2.5.1", "wheel": "cu121",
     "default_wheel": False},
    {"cuda": "11.8", "base": "nvidia/cuda:11.8.0-cudnn8-devel-ubuntu22.04", "torch": "2.5.1", "wheel": "cu118",
     "default_wheel": False},
)
LABEL_BASE, LABEL_TORCH, LABEL_DRIVER = "puffctl.base", "puffctl.torch", "puffctl.matched-driver"
TORCH_INDEX_ENV = "PUFFCTL_TORCH_INDEX"  # root of PyTorch's wheel index; `<root>/cu118` etc. are tried

_BOX_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
_OWNER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")


def config_dir() -> Path:
    """Where the registry lives: $PUFFCTL_CONFIG_DIR, $XDG_CONFIG_HOME/puffctl or ~/.config/puffctl."""
    if os.environ.get("PUFFCTL_CONFIG_DIR"):
        return Path(os.environ["PUFFCTL_CONFIG_DIR"])
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "puffctl"


def owner() -> str:
    """The owner label of containers made now: $PUFFCTL_OWNER, else the login name."""
    name = os.environ.get("PUFFCTL_OWNER") or getpass.getuser()
    if not _OWNER.match(name):
        raise PuffctlError(f"owner name {name!r} is not usable as a label and container name part "
                           "(letters, digits, '_', '.', '-'; set PUFFCTL_OWNER)")
    return name


def dev_image(variant: str = "cuda") -> str:
    return f"{DEV_IMAGE}:{variant}"


@dataclass
class Box:
    """One registry entry. `health` is the last `box check`'s outcome (status, failed, gpus...)."""

    name: str
    host: str
    cpu_only: bool = False
    added: float = 0.0
    health: dict = field(default_factory=dict)
    owner: str = ""  # a note for the lab: whose box it is, who to ask

    @property
    def default_image(self) -> str:
        return dev_image("cpu" if self.cpu_only else "cuda")


def validate_box_name(name: str) -> str:
    if not _BOX_NAME.match(name):
        raise PuffctlError(f"bad box name {name!r}: use 1-32 lowercase letters, digits, '-' or '_', "
                           "starting with a letter or digit")
    return name


def _registry_path() -> Path:
    return config_dir() / REGISTRY_FILE


def load_registry() -> dict[str, Box]:
    path = _registry_path()
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
        return {name: Box(name=name, **entry) for name, entry in data.get("boxes", {}).items()}
    except (ValueError, TypeError) as error:
        raise PuffctlError(f"box registry {path} is unreadable ({error}); fix or remove it", exit_code=1) from None


@contextlib.contextmanager
def update_registry() -> Iterator[dict[str, Box]]:
    """Load, change and save the registry under an exclusive file lock: concurrent commands never lose an update."""
    import fcntl

    path = _registry_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(REGISTRY_FILE + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        boxes = load_registry()
        yield boxes
        save_registry(boxes)


def save_registry(boxes: dict[str, Box]) -> None:
    """Write the registry atomically (temp file + rename) so a crash never leaves half a file."""
    path = _registry_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"boxes": {name: {"host": box.host, "cpu_only": box.cpu_only, "added": box.added,
                             "health": box.health, "owner": box.owner} for name, box in sorted(boxes.items())}}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".boxes-", suffix=".json")
    with os.fdopen(fd, "w") as out:
        json.dump(data, out, indent=2)
        out.write("\n")
    os.replace(tmp, path)


def add_box(name: str, host: str, cpu_only: bool = False, owner_note: str = "") -> Box:
    """Register a box (no connection made): the name must be new and safe, the host URL valid."""
    from puffctl.engine import parse_host

    validate_box_name(name)
    url = parse_host(host)
    with update_registry() as boxes:
        if name in boxes:
            raise PuffctlError(f"box {name!r} already exists ({boxes[name].host}); `puffctl box rm {name}` first")
        box = Box(name=name, host=str(url), cpu_only=cpu_only, added=time.time(), owner=owner_note.strip())
        boxes[name] = box
    return box


def set_box(name: str, host: str | None = None, owner_note: str | None = None, cpu_only: bool | None = None) -> Box:
    """Change a registered box's host URL, owner note or CPU-only mark."""
    from puffctl.engine import parse_host

    url = str(parse_host(host)) if host is not None else None
    with update_registry() as boxes:
        box = get_box(name, boxes)
        box.host = url or box.host
        box.owner = box.owner if owner_note is None else owner_note.strip()
        box.cpu_only = box.cpu_only if cpu_only is None else cpu_only
    return box


def remove_box(name: str) -> Box:
    """Forget a box. Its containers stay on the box untouched."""
    with update_registry() as boxes:
        box = get_box(name, boxes)
        del boxes[name]
    return box


def get_box(name: str, boxes: dict[str, Box] | None = None) -> Box:
    boxes = load_registry() if boxes is None else boxes
    if name not in boxes:
        known = ", ".join(sorted(boxes)) or "none; add one with `puffctl box add NAME --host URL`"
        raise PuffctlError(f"unknown box {name!r} (known: {known})")
    return boxes[name]


def record_health(name: str, health: dict) -> None:
    with update_registry() as boxes:
        if name in boxes:
            boxes[name].health = health


@contextlib.contextmanager
def open_box(name: str, mux: SSHMux | None = None) -> Iterator[Engine]:
    """Connect to a registered box for the duration of one command (one SSH connection).

    `mux`: its connection begun early by `dial(name)`.
    """
    with connect_box(name, mux) as engine:
        yield engine


def connect_box(name: str, mux: SSHMux | None = None) -> Engine:
    """An open connection to a registered box, for whoever closes it (or uses it in `with`)."""
    from puffctl.engine import connect

    box = get_box(name)
    return connect(box.name, box.host, mux=mux)


def dial(name: str) -> SSHMux | None:
    """Begin the SSH connection to a registered ssh:// box now, without the Docker SDK, so that the
    handshake overlaps the command's own work; hand it to `open_box`. None for a unix:// box."""
    import atexit

    from puffctl.sshmux import SSHMux, parse_host

    box = get_box(name)
    url = parse_host(box.host)
    if url.scheme != "ssh":
        return None
    mux = SSHMux(box.name, url)
    mux.begin()
    atexit.register(mux.close)  # if the command stops before it connects
    return mux


# ---- status for `box list` -------------------------------------------------------------------

@dataclass
class BoxStatus:
    box: Box
    reachable: bool
    error: str | None = None
    docker_version: str | None = None
    api_version: str | None = None
    nvidia_runtime: bool = False
    containers_running: int = 0
    containers_total: int = 0
    mine_running: int = 0


def box_status(box: Box) -> BoxStatus:
    """Reach the box now: Docker version, NVIDIA runtime, puffctl containers (GPUs from the last check)."""
    from puffctl.engine import connect

    try:
        with connect(box.name, box.host) as engine:
            info = engine.client.info()
            listed = engine.client.api.containers(all=True, filters={"label": f"{LABEL_PURPOSE}=dev"})
    except PuffctlError as error:
        return BoxStatus(box, reachable=False, error=str(error))
    me = owner()
    running = [c for c in listed if c.get("State") == "running"]
    return BoxStatus(box, True, docker_version=info.get("ServerVersion"), api_version=engine.api_version,
                     nvidia_runtime="nvidia" in (info.get("Runtimes") or {}),
                     containers_running=len(running), containers_total=len(listed),
                     mine_running=sum(1 for c in running if (c.get("Labels") or {}).get(LABEL_OWNER) == me))


def list_status() -> list[BoxStatus]:
    """Status of every registered box, reached in parallel so unreachable ones cost one timeout."""
    boxes = list(load_registry().values())
    if not boxes:
        return []
    with ThreadPoolExecutor(max_workers=min(8, len(boxes))) as pool:
        return list(pool.map(box_status, boxes))


# ---- health check ----------------------------------------------------------------------------

@dataclass
class CheckLine:
    name: str
    status: str  # "pass", "fail" or "skip"
    detail: str
    hint: str = ""


@dataclass
class CheckReport:
    box: Box
    lines: list[CheckLine]
    gpus: GPUReport | None = None

    @property
    def healthy(self) -> bool:
        return all(line.status != "fail" for line in self.lines)


def size_gib(size: str | int) -> float:
    if isinstance(size, int):
        return size / 2**30
    match = re.fullmatch(r"([0-9.]+)\s*([kmgt]?)b?", size.strip().lower())
    if not match:
        raise PuffctlError(f"bad size {size!r}: use e.g. 512m, 8g")
    return float(match.group(1)) * {"": 2**-30, "k": 2**-20, "m": 2**-10, "g": 1, "t": 2**10}[match.group(2)]


def _run_probe(engine: Engine, image: str, script: str, **options) -> tuple[int, str]:
    """Run `sh -c script` in a throwaway container (no network); return (exit code, output)."""
    container = engine.client.containers.create(
        image, ["sh", "-c", script], network_mode="none",
        labels={LABEL_PURPOSE: "probe", LABEL_OWNER: owner(), LABEL_BOX: engine.box}, **options)
    try:
        container.start()
        code = container.wait(timeout=120).get("StatusCode", 1)
        return code, container.logs().decode(errors="replace")
    finally:
        container.remove(force=True)


def image_cuda(engine: Engine, image: str) -> str | None:
    """The CUDA version an image is built for: its puffctl.cuda label, else its CUDA_VERSION env."""
    attrs = engine.client.images.get(image).attrs
    config = attrs.get("Config") or {}
    label = (config.get("Labels") or {}).get(LABEL_CUDA)
    if label is not None:
        return label or None
    for item in config.get("Env") or []:
        if item.startswith("CUDA_VERSION="):
            return item.split("=", 1)[1] or None
    return None


def probe_gpus(engine: Engine, image: str) -> GPUReport:
    """nvidia-smi in a container with all GPUs requested; PuffctlError if GPUs cannot be requested."""
    import docker
    import docker.errors

    from puffctl import gpu

    try:
        _, output = _run_probe(engine, image, gpu.PROBE_SCRIPT,
                               device_requests=[docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])])
    except docker.errors.APIError as error:
        text = str(error.explanation or error)
        if "could not select device driver" in text:
            raise PuffctlError(f"box {engine.box}: GPUs cannot be requested (no NVIDIA container runtime)",
                               exit_code=1) from None
        raise PuffctlError(f"box {engine.box}: GPU probe failed: {text.splitlines()[0]}", exit_code=1) from None
    return gpu.parse_probe(output)


def _image_present(engine: Engine, image: str) -> bool:
    import docker.errors

    try:
        engine.client.images.get(image)
        return True
    except docker.errors.ImageNotFound:
        return False


def run_checks(engine: Engine, box: Box, image: str | None = None, min_disk_gb: float = MIN_DISK_GB,
               shm_size: str = DEFAULT_SHM) -> CheckReport:
    """Every health line for a connected box; GPU lines say skip/fail with a hint where no GPU is."""
    from puffctl import gpu
    from puffctl.engine import MIN_API_VERSION, api_at_least

    image = image or box.default_image
    lines: list[CheckLine] = []
    info = engine.client.info()
    api = engine.api_version
    if api_at_least(api, MIN_API_VERSION):
        lines.append(CheckLine("engine", "pass", f"Docker {info.get('ServerVersion')}, API {api} "
                               f"(>= {MIN_API_VERSION} needed for GPU requests)"))
    else:
        lines.append(CheckLine("engine", "fail", f"Docker {info.get('ServerVersion')}, API {api} is older than "
                               f"{MIN_API_VERSION}", "upgrade Docker Engine on the box to 19.03 or newer"))
    has_image = _image_present(engine, image)
    lines.append(CheckLine("image", "pass", f"{image} present") if has_image else
                 CheckLine("image", "fail", f"{image} is not on the box",
                           f"run `puffctl box provision {box.name}` or pass --image"))

    report = None
    runtime = "nvidia" in (info.get("Runtimes") or {})
    if box.cpu_only:
        for name in ("nvidia runtime", "gpus", "driver vs image cuda"):
            lines.append(CheckLine(name, "skip", "CPU-only box (added with --cpu-only)"))
    else:
        if runtime:
            lines.append(CheckLine("nvidia runtime", "pass", "nvidia runtime registered with Docker"))
        else:
            lines.append(CheckLine("nvidia runtime", "fail", "no nvidia runtime in `docker info`",
                                   "install the NVIDIA Container Toolkit on the box, then "
                                   "`sudo nvidia-ctk runtime configure --runtime=docker && sudo systemctl restart docker`"))
        if not has_image:
            lines.append(CheckLine("gpus", "skip", "no image to run nvidia-smi in"))
        else:
            try:
                report = probe_gpus(engine, image)
            except PuffctlError as error:
                lines.append(CheckLine("gpus", "fail", str(error).split(": ", 1)[-1],
                                       "GPUs are only visible through the NVIDIA Container Toolkit"))
            else:
                if report.healthy:
                    lines.append(CheckLine("gpus", "pass", f"{report.summary()}, driver {report.driver}"))
                elif report.errors:
                    lines.append(CheckLine("gpus", "fail", f"{len(report.errors)} GPU(s) in error: "
                                           + "; ".join(report.errors),
                                           "a GPU that nvidia-smi cannot open is flaky: reset or reboot the box, "
                                           "or avoid it with --gpus"))
                else:
                    lines.append(CheckLine("gpus", "fail", "no GPU visible inside a container",
                                           "check the driver on the box with nvidia-smi"))
        if report is None or not report.driver:
            lines.append(CheckLine("driver vs image cuda", "skip", "no driver seen"))
        else:
            needed = image_cuda(engine, image)
            compat = gpu.check_cuda(report.cuda, needed, report.driver)
            lines.append(CheckLine("driver vs image cuda", "pass" if compat.ok else "fail", compat.reason,
                                   "" if compat.ok else "use an image with an older CUDA (provision --build-arg "
                                   "BASE_IMAGE=...) or have the box's admin upgrade the driver"))

    if has_image:
        memory = size_gib(info.get("MemTotal", 0))
        shm_gib = min(size_gib(shm_size), memory / 2) if memory else size_gib(shm_size)
        code, output = _run_probe(engine, image, "df -Pk / /dev/shm", shm_size=f"{int(shm_gib * 1024)}m")
        sizes = _parse_df(output) if code == 0 else {}
        free = sizes.get("/", (0, 0))[1] / 2**20
        lines.append(CheckLine("disk", "pass" if free >= min_disk_gb else "fail",
                               f"{free:.1f} GiB free for Docker (need {min_disk_gb:g})",
                               "" if free >= min_disk_gb else "free space: `docker system prune` on the box "
                               "(removes stopped containers and dangling images)"))
        shm = sizes.get("/dev/shm", (0, 0))[0] / 2**20
        lines.append(CheckLine("shared memory", "pass" if shm >= MIN_SHM_GB else "fail",
                               f"/dev/shm of {shm:.1f} GiB in a container started with --shm-size {shm_size}",
                               "" if shm >= MIN_SHM_GB else "the box has too little memory for DataLoader workers' "
                               "/dev/shm; use fewer workers or a bigger box"))
        lines.extend(_small_shm_containers(engine))
    else:
        lines.append(CheckLine("disk", "skip", "no image to run df in"))
        lines.append(CheckLine("shared memory", "skip", "no image to start a container from"))
    return CheckReport(box, lines, report)


def _parse_df(output: str) -> dict[str, tuple[int, int]]:
    """`df -Pk` lines -> {mount point: (size KiB, available KiB)}."""
    sizes = {}
    for line in output.splitlines()[1:]:
        cells = line.split()
        if len(cells) >= 6 and cells[1].isdigit() and cells[3].isdigit():
            sizes[cells[5]] = (int(cells[1]), int(cells[3]))
    return sizes


def _small_shm_containers(engine: Engine) -> list[CheckLine]:
    me = owner()
    small = []
    for container in engine.client.api.containers(all=True, filters={"label": [f"{LABEL_PURPOSE}=dev",
                                                                              f"{LABEL_OWNER}={me}"]}):
        shm = engine.client.api.inspect_container(container["Id"])["HostConfig"].get("ShmSize") or 0
        if shm < MIN_SHM_GB * 2**30:
            name = (container.get("Labels") or {}).get(LABEL_NAME, container["Id"][:12])
            small.append(CheckLine(f"shm of {name}", "fail", f"dev container {name} has /dev/shm of "
                                   f"{shm / 2**20:.0f} MiB", f"recreate it: `puffctl container down {engine.box}/{name}` "
                                   f"then `container up {engine.box} --name {name} --shm-size {DEFAULT_SHM}`"))
    return small


def check_box(name: str, image: str | None = None, min_disk_gb: float = MIN_DISK_GB,
              shm_size: str = DEFAULT_SHM) -> CheckReport:
    """Connect and run every check; an unreachable box is a failed engine line. Records health."""
    from puffctl.engine import connect

    box = get_box(name)
    try:
        with connect(box.name, box.host) as engine:
            report = run_checks(engine, box, image, min_disk_gb, shm_size)
    except PuffctlError as error:
        report = CheckReport(box, [CheckLine("engine", "fail", str(error),
                                             "is the box up, is Docker running, can you `ssh` to it?")])
    record_check(report)
    return report


def record_check(report: CheckReport) -> None:
    """Store a check's outcome (and GPU facts) in the registry for `box list`."""
    health = {"status": "healthy" if report.healthy else "unhealthy", "checked": time.time(),
              "failed": [line.name for line in report.lines if line.status == "fail"]}
    if report.gpus is not None:
        health["gpus"] = report.gpus.to_dict()
    record_health(report.box.name, health)


# ---- provisioning ----------------------------------------------------------------------------

def build_args(variant: str, overrides: list[str]) -> dict[str, str]:
    """The variant's build arguments with KEY=VALUE overrides applied."""
    if variant not in VARIANTS:
        raise PuffctlError(f"unknown image variant {variant!r} (choose: {', '.join(VARIANTS)})")
    args = dict(VARIANTS[variant])
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise PuffctlError(f"bad --build-arg {item!r}: use KEY=VALUE")
        args[key] = value
    return args


def match_driver(driver: str, torch_index: str | None = None) -> dict[str, str]:
    """Build arguments for the newest known CUDA base this driver runs, with its torch build.

    A one-line error when the driver is older than every known base, or when that torch build
    lives only on PyTorch's wheel index and no index root was given.
    """
    from puffctl import gpu

    for entry in CUDA_BASES:
        needed = gpu.MIN_DRIVER_FOR_CUDA[str(entry["cuda"])]
        if gpu._version(driver) < gpu._version(needed):
            continue
        args = {"BASE_IMAGE": str(entry["base"]), "IMAGE_CUDA": str(entry["cuda"]), "TORCH_VERSION": str(entry["torch"]),
                "TORCH_INDEX_URL": ""}
        if not entry["default_wheel"]:
            if not torch_index:
                raise PuffctlError(f"driver {driver} matches CUDA {entry['cuda']}, whose torch {entry['torch']} "
                                   f"build ({entry['wheel']}) is on PyTorch's wheel index: pass --torch-index ROOT "
                                   f"(or set {TORCH_INDEX_ENV})")
            args["TORCH_INDEX_URL"] = f"{torch_index.rstrip('/')}/{entry['wheel']}"
        return args
    oldest = CUDA_BASES[-1]
    raise PuffctlError(f"driver {driver} is older than every known CUDA base (the oldest, CUDA {oldest['cuda']}, "
                       f"needs {gpu.MIN_DRIVER_FOR_CUDA[str(oldest['cuda'])]}): the box's admin must upgrade it")


def provision(engine: Engine, box: Box, repo: Path, variant: str = "cuda", overrides: list[str] = (),
              dockerfile: str = DOCKERFILE, tag: str | None = None,
              on_line: Callable[[str], None] = lambda line: None, network_mode: str | None = None,
              matched: dict[str, str] | None = None) -> str:
    """Build the dev image on the box from the repo's git-tracked files; return its tag.

    `matched`: build arguments from match_driver, applied before the overrides and recorded as labels.
    """
    import docker.errors

    from puffctl.archive import git_archive

    args = build_args(variant, [*(f"{k}={v}" for k, v in (matched or {}).items()), *overrides])
    labels = {LABEL_CUDA: args.get("IMAGE_CUDA", "")}
    if matched is not None:
        labels.update({LABEL_BASE: args.get("BASE_IMAGE", ""), LABEL_TORCH: args.get("TORCH_VERSION", ""),
                       LABEL_DRIVER: (box.health.get("gpus") or {}).get("driver") or ""})
    tag = tag or dev_image(variant)
    archive = git_archive(repo)
    if dockerfile not in archive.files:
        raise PuffctlError(f"{dockerfile} is not a git-tracked file of {repo}")
    try:
        stream = engine.client.api.build(fileobj=archive.data, custom_context=True, dockerfile=dockerfile,
                                         tag=tag, buildargs=args, rm=True, forcerm=True, decode=True,
                                         network_mode=network_mode, labels=labels)
        for event in stream:
            if "error" in event:
                raise PuffctlError(f"box {box.name}: image build failed: {event['error'].strip()}", exit_code=1)
            text = event.get("stream", "") or event.get("status", "")
            for line in text.splitlines():
                if line.strip():
                    on_line(line.rstrip())
    except docker.errors.APIError as error:
        raise PuffctlError(f"box {box.name}: image build failed: {error.explanation or error}", exit_code=1) from None
    return tag
