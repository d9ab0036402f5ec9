"""`puffctl doctor`: is this machine ready to build the extension and train? One check per line."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from puffctl.build import nvcc_path


@dataclass
class Check:
    """One line of the report; `required` checks decide the exit code."""

    name: str
    ok: bool
    detail: str
    hint: str = ""
    required: bool = True


def check_python() -> Check:
    ok = sys.version_info >= (3, 10)
    return Check("python", ok, f"{platform.python_version()} at {sys.executable}", "puffctl needs Python 3.10 or newer")


def check_torch() -> Check:
    try:
        import torch
    except ImportError as error:
        return Check("torch", False, f"not importable ({error})", "pip install torch==2.13.0 (CPU) or your CUDA build")
    return Check("torch", True, f"{torch.__version__} ({'CUDA ' + torch.version.cuda if torch.version.cuda else 'CPU build'}), "
                 f"{torch.get_num_threads()} threads")


def check_cuda() -> Check:
    import torch

    if not torch.version.cuda:
        return Check("cuda", False, "this torch is a CPU build: training runs on the CPU",
                     "on a GPU box install a CUDA build of torch (the dev image has one)", required=False)
    if not torch.cuda.is_available():
        return Check("cuda", False, f"torch has CUDA {torch.version.cuda} but sees no GPU",
                     "check the driver with nvidia-smi; in a container, start it with --gpus", required=False)
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return Check("cuda", True, f"CUDA {torch.version.cuda}, {len(names)} GPU(s): {', '.join(names)}", required=False)


def check_nvcc() -> Check:
    import torch

    nvcc = nvcc_path()
    if nvcc is None:
        return Check("nvcc", False, "not found: only the CPU kernels can be built",
                     "install the CUDA toolkit (a CUDA *devel* image has it) or set CUDA_HOME", required=False)
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    found = re.search(r"release (\d+)\.(\d+)", out)
    version = f"{found.group(1)}.{found.group(2)}" if found else "unknown"
    if torch.version.cuda and found and torch.version.cuda.split(".")[0] != found.group(1):
        return Check("nvcc", False, f"{nvcc} is CUDA {version} but torch was built with CUDA {torch.version.cuda}",
                     "use a toolkit with the same major version as torch (set CUDA_HOME)", required=False)
    usable = "" if torch.version.cuda else " (unused: torch is a CPU build)"
    return Check("nvcc", True, f"CUDA {version} at {nvcc}{usable}", required=False)


def check_compiler() -> Check:
    cxx = os.environ.get("CXX", "c++")
    try:
        version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    except (FileNotFoundError, IndexError):
        return Check("c++ compiler", False, f"{cxx!r} not found", "apt-get install g++ (or set CXX)")
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "probe.cpp"
        source.write_text("#include <span>\nint main() { int a[2] = {1, 2}; return std::span(a).size() == 2 ? 0 : 1; }\n")
        proc = subprocess.run([cxx, "-std=c++20", "-c", str(source), "-o", str(Path(tmp) / "probe.o")],
                              capture_output=True, text=True)
    if proc.returncode != 0:
        return Check("c++ compiler", False, f"{version}: cannot compile C++20", "install g++ 10 or newer (or set CXX)")
    return Check("c++ compiler", True, version)


def check_extension() -> Check:
    from trainer import extension

    found = extension.find_build()
    if found is None:
        return Check("extension", False, "no build for the current csrc/ sources and this torch: "
                     "training falls back to the slower pure-torch ops", "run `puffctl build`", required=False)
    flavor, library = found
    start = time.perf_counter()
    try:
        extension.load()
    except Exception as error:  # a broken library on disk is a problem to report, not to crash on
        return Check("extension", False, f"{library} does not load: {error}", "run `puffctl build --clean`")
    return Check("extension", True, f"{flavor} build, loads in {1000 * (time.perf_counter() - start):.0f} ms: {library}",
                 required=False)


def run_checks() -> list[Check]:
    """Every check, in order; later ones are skipped when torch itself is missing."""
    checks = [check_python(), check_torch()]
    if checks[-1].ok:
        checks += [check_cuda(), check_nvcc(), check_compiler(), check_extension()]
    else:
        checks.append(check_compiler())
    return checks
