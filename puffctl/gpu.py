"""GPU facts from `nvidia-smi` output, and whether a box's driver can run an image's CUDA.

A box is only reachable through Docker, so nvidia-smi runs in a short-lived container with a
GPU device request (see boxes.py); this module only parses what comes back. The rule is the
field's: the driver's highest supported CUDA (major.minor) must be >= the image's CUDA. A box
is never "fixed" from here: an old driver is a refusal with a reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

QUERY_FIELDS = ("index", "name", "uuid", "memory.total", "memory.used", "utilization.gpu",
                "temperature.gpu", "driver_version", "pci.bus_id")
QUERY_MARKER = "=====puffctl nvidia-smi query====="
PROBE_SCRIPT = (
    "nvidia-smi 2>&1; "
    f"echo '{QUERY_MARKER}'; "
    f"nvidia-smi --query-gpu={','.join(QUERY_FIELDS)} --format=csv,noheader,nounits 2>&1"
)

# Minimum Linux driver of each CUDA toolkit release (NVIDIA's CUDA release notes, table 3).
MIN_DRIVER_FOR_CUDA = {
    "11.8": "520.61.05", "12.0": "525.60.13", "12.1": "530.30.02", "12.2": "535.54.03",
    "12.3": "545.23.06", "12.4": "550.54.14", "12.5": "555.42.02", "12.6": "560.28.03",
    "12.8": "570.26", "12.9": "575.51.03", "13.0": "580.65.06",
}

_HEADER = re.compile(r"Driver Version:\s*([0-9.]+)\s+CUDA Version:\s*([0-9]+\.[0-9]+)")
_DEVICE_ERROR = re.compile(r"Unable to determine the device handle for (GPU\s*[0-9A-Fa-f:.]+): (.*)")


@dataclass(frozen=True)
class GPU:
    """One GPU as nvidia-smi reports it (memory in MiB)."""

    index: int
    name: str
    uuid: str
    memory_mib: int
    memory_used_mib: int
    utilization: int | None
    temperature: int | None
    driver: str
    bus_id: str


@dataclass
class GPUReport:
    """What a box's GPUs look like from inside a container: devices, errors, driver, max CUDA."""

    gpus: list[GPU] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    driver: str | None = None
    cuda: str | None = None  # the highest CUDA the driver supports

    @property
    def healthy(self) -> bool:
        return bool(self.gpus) and not self.errors

    def summary(self) -> str:
        """'8x NVIDIA H100 80GB HBM3 (80 GiB)', mixed models joined by ' + '."""
        if not self.gpus:
            return "none"
        groups: dict[tuple[str, int], int] = {}
        for gpu in self.gpus:
            key = (gpu.name, round(gpu.memory_mib / 1024))
            groups[key] = groups.get(key, 0) + 1
        return " + ".join(f"{count}x {name} ({gib} GiB)" for (name, gib), count in groups.items())

    def to_dict(self) -> dict:
        return {"gpus": [gpu.__dict__ for gpu in self.gpus], "errors": self.errors,
                "driver": self.driver, "cuda": self.cuda}

    @classmethod
    def from_dict(cls, data: dict) -> "GPUReport":
        return cls([GPU(**gpu) for gpu in data.get("gpus", [])], list(data.get("errors", [])),
                   data.get("driver"), data.get("cuda"))


def _int(text: str) -> int | None:
    text = text.strip()
    return int(float(text)) if re.fullmatch(r"[0-9]+(\.[0-9]+)?", text) else None


def parse_query(text: str) -> tuple[list[GPU], list[str]]:
    """Parse `--query-gpu=QUERY_FIELDS --format=csv,noheader,nounits`; device errors come back as lines."""
    gpus, errors = [], []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        error = _DEVICE_ERROR.search(line)
        if error:
            errors.append(f"{error.group(1).replace(' ', '')}: {error.group(2).strip()}")
            continue
        cells = [cell.strip() for cell in line.split(",")]
        if len(cells) != len(QUERY_FIELDS) or _int(cells[0]) is None:
            if "No devices were found" not in line:
                errors.append(line)
            continue
        gpus.append(GPU(index=int(cells[0]), name=cells[1], uuid=cells[2], memory_mib=_int(cells[3]) or 0,
                        memory_used_mib=_int(cells[4]) or 0, utilization=_int(cells[5]),
                        temperature=_int(cells[6]), driver=cells[7], bus_id=cells[8]))
    return gpus, errors


def parse_header(text: str) -> tuple[str | None, str | None]:
    """(driver version, highest CUDA version) from plain `nvidia-smi`; (None, None) if absent."""
    match = _HEADER.search(text)
    return (match.group(1), match.group(2)) if match else (None, None)


def parse_probe(output: str) -> GPUReport:
    """Parse the combined output of PROBE_SCRIPT: the plain header, the marker, the query CSV."""
    header, _, query = output.partition(QUERY_MARKER)
    gpus, errors = parse_query(query)
    driver, cuda = parse_header(header)
    for line in header.splitlines():
        error = _DEVICE_ERROR.search(line)
        if error:
            message = f"{error.group(1).replace(' ', '')}: {error.group(2).strip()}"
            if message not in errors:
                errors.append(message)
    driver = driver or (gpus[0].driver if gpus else None)
    cuda = cuda or (max_cuda_for_driver(driver) if driver else None)
    return GPUReport(gpus, errors, driver, cuda)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"[0-9]+", text))


def cuda_major_minor(version: str) -> str:
    """'12.4.1' -> '12.4'; raises ValueError on text that is no CUDA version."""
    parts = _version(version)
    if len(parts) < 2:
        raise ValueError(f"not a CUDA version: {version!r}")
    return f"{parts[0]}.{parts[1]}"


def max_cuda_for_driver(driver: str) -> str | None:
    """The newest CUDA release in MIN_DRIVER_FOR_CUDA whose minimum driver this driver meets."""
    supported = [cuda for cuda, minimum in MIN_DRIVER_FOR_CUDA.items() if _version(driver) >= _version(minimum)]
    return max(supported, key=_version) if supported else None


@dataclass(frozen=True)
class Compatibility:
    ok: bool
    reason: str


def check_cuda(driver_cuda: str | None, image_cuda: str | None, driver: str | None = None) -> Compatibility:
    """Can a driver whose highest CUDA is driver_cuda run an image built for image_cuda?"""
    if not image_cuda:
        return Compatibility(True, "CPU image: no CUDA requirement")
    image = cuda_major_minor(image_cuda)
    if not driver_cuda:
        return Compatibility(False, f"image needs CUDA {image} but the box's driver CUDA version is unknown")
    if _version(cuda_major_minor(driver_cuda)) >= _version(image):
        return Compatibility(True, f"driver supports CUDA {driver_cuda} >= image CUDA {image}")
    needed = MIN_DRIVER_FOR_CUDA.get(image)
    driver_text = f"driver {driver}" if driver else "the driver"
    need_text = f"; CUDA {image} needs driver >= {needed}" if needed else ""
    return Compatibility(False, f"{driver_text} supports CUDA up to {driver_cuda}, image needs {image}{need_text}")
