"""Where builds of the csrc/ ops (advantage estimators, E3B's step) live, and loading one: never compiling.

A build is keyed by a hash of the sources and the build recipe, the torch and CUDA versions, the
flavour (cpu or cuda) and the machine, so a changed source or a new torch never loads a stale library.
`puffctl build` (puffctl/build.py) makes builds; the trainer only loads them.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import platform
import runpy
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from trainer.cache import cache_root

if TYPE_CHECKING:
    import torch

CSRC = Path(__file__).resolve().parent.parent / "csrc"
SOURCES = ("advantage.h", "advantage_ops.cpp", "advantage_cpu.cpp", "advantage_cuda.cu",
           "e3b.h", "e3b_ops.cpp", "e3b_cpu.cpp", "e3b_cuda.cu", "fastmath.h", "gelu_ops.cpp", "lstm_ops.cpp")
LIBRARY_NAME = "puffctl_ops.so"
# The compile recipe (flags, layout) is part of every key, so changing it invalidates old builds.
RECIPE = Path(__file__).resolve().parent.parent / "puffctl" / "build.py"

# How ops choose: "compiled" demands a build, "torch" the pure-torch code, "auto" a build if there is one.
BACKENDS = ("auto", "compiled", "torch")

_loaded: str | None = None
_warned: set[str] = set()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


@functools.cache
def torch_versions() -> tuple[str, str | None]:
    """(torch version, its CUDA version or None), read from torch/version.py.

    Running that one small file instead of importing torch lets `puffctl train` find a build
    about 1.5 s sooner; torch itself is imported only by `load`.
    """
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("torch is not installed")
    info = runpy.run_path(str(Path(spec.submodule_search_locations[0]) / "version.py"))
    return info["__version__"], info.get("cuda")


def build_key(flavor: str, csrc: Path = CSRC) -> str:
    """The cache key of a `flavor` build of the sources in `csrc` for this torch and machine."""
    digest = hashlib.sha256()
    for path in [csrc / name for name in SOURCES] + [RECIPE]:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    torch_version, cuda_version = torch_versions()
    for part in (flavor, torch_version, cuda_version or "none", platform.machine(), _cpu_model()):
        digest.update(b"\0" + part.encode())
    return f"{flavor}-{digest.hexdigest()[:16]}"


def build_dir(flavor: str, csrc: Path = CSRC) -> Path:
    """The folder a finished `flavor` build of `csrc` lives in (it may not exist)."""
    return cache_root() / "extensions" / build_key(flavor, csrc)


def flavors() -> tuple[str, ...]:
    """The flavours worth loading here, best first: cuda only where torch has CUDA."""
    return ("cuda", "cpu") if torch_versions()[1] else ("cpu",)


def find_build(csrc: Path = CSRC) -> tuple[str, Path] | None:
    """The best finished build for the current sources, as (flavor, library path), or None."""
    for flavor in flavors():
        library = build_dir(flavor, csrc) / LIBRARY_NAME
        if library.is_file():
            return flavor, library
    return None


def load(csrc: Path = CSRC) -> str | None:
    """Load the best finished build once; return its flavour, or None when there is none."""
    global _loaded
    if _loaded is None:
        found = find_build(csrc)
        if found is None:
            return None
        import torch

        torch.ops.load_library(str(found[1]))
        _loaded = found[0]
    return _loaded


def use_compiled(device: torch.device, backend: str, ops: str) -> bool:
    """Whether the compiled `ops` (e.g. "advantage ops") run for tensors on `device` under `backend`.

    "auto" without a usable build warns once per `ops` and leaves the caller on its pure-torch code;
    "compiled" raises RuntimeError instead.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return False
    flavor = load()
    if flavor is not None and (device.type == "cpu" or (device.type == "cuda" and flavor == "cuda")):
        return True
    why = ("no build of the csrc/ extension for these sources and this torch (run `puffctl build`)"
           if flavor is None else f"the {flavor} build has no kernels for {device.type} tensors")
    if backend == "compiled":
        raise RuntimeError(why)
    if ops not in _warned:
        _warned.add(ops)
        warnings.warn(f"{why}; using the pure-torch {ops}", RuntimeWarning, stacklevel=4)
    return False
