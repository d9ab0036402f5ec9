"""Compiling the csrc/ ops (advantage estimators, E3B's step) into the build cache that trainer/extension.py loads.

Sources compile in parallel straight from the compiler (no ninja, no Python headers: the ops
register through TORCH_LIBRARY), into a temporary folder that replaces the cached build only
when everything succeeded, so a failed compile never harms a working build.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from puffctl.errors import PuffctlError

DEFAULT_CUDA_ARCHS = ("8.0", "8.6", "8.9", "9.0")
MAX_ERROR_LINES = 40
# The kernels, and the torch bindings (which alone see -DPUFFCTL_WITH_CUDA in a cuda build).
CPU_SOURCES = ("advantage_cpu.cpp", "e3b_cpu.cpp", "gelu_ops.cpp", "lstm_ops.cpp")  # gelu, lstm: CPU only, bindings included
CUDA_SOURCES = ("advantage_cuda.cu", "e3b_cuda.cu")
OPS_SOURCES = ("advantage_ops.cpp", "e3b_ops.cpp")
# Flags a source needs: the GELU and LSTM gate loops vectorize only when float compares may not trap.
SOURCE_FLAGS = {source: ["-fno-trapping-math", "-fno-math-errno"] for source in ("gelu_ops.cpp", "lstm_ops.cpp")}


@dataclass
class BuildResult:
    """What `build` produced: the flavour, the library, and whether it came from the cache."""

    flavor: str
    library: Path
    seconds: float
    cached: bool


@dataclass
class Step:
    """One compiler invocation."""

    label: str
    argv: list[str]


def nvcc_path() -> str | None:
    """The nvcc under $CUDA_HOME/bin, else on PATH, or None."""
    cuda_home = os.environ.get("CUDA_HOME")
    if cuda_home and (Path(cuda_home) / "bin" / "nvcc").is_file():
        return str(Path(cuda_home) / "bin" / "nvcc")
    return shutil.which("nvcc")


def cuda_home(nvcc: str) -> Path:
    """The CUDA toolkit folder with the runtime library: $CUDA_HOME, nvcc's own, or /usr/local/cuda."""
    candidates = [os.environ.get("CUDA_HOME"), Path(os.path.realpath(nvcc)).parent.parent, "/usr/local/cuda"]
    for candidate in filter(None, candidates):
        if list((Path(candidate) / "lib64").glob("libcudart.so*")):
            return Path(candidate)
    raise PuffctlError(f"no CUDA runtime library (lib64/libcudart.so) next to {nvcc}: set CUDA_HOME", exit_code=1)


def choose_flavor(requested: str) -> str:
    """Resolve auto/cpu/cuda to what can be built here; an impossible request is an error."""
    import torch

    if requested not in ("auto", "cpu", "cuda"):
        raise PuffctlError(f"--flavor must be auto, cpu or cuda, got {requested!r}")
    can_cuda = bool(torch.version.cuda) and nvcc_path() is not None
    if requested == "cuda" and not can_cuda:
        why = "this torch has no CUDA" if not torch.version.cuda else "nvcc is not on PATH (set CUDA_HOME)"
        raise PuffctlError(f"cannot build the CUDA flavour: {why}")
    if requested == "auto":
        return "cuda" if can_cuda else "cpu"
    return requested


def cuda_arch_flags() -> list[str]:
    """nvcc -gencode flags: $TORCH_CUDA_ARCH_LIST, else the visible GPUs, else common datacenter archs."""
    import torch

    listed = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if listed:
        archs = [a.replace("+PTX", "") for a in re.split(r"[ ;]+", listed.strip()) if a]
    elif torch.cuda.is_available():
        archs = sorted({"%d.%d" % torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
    else:
        archs = list(DEFAULT_CUDA_ARCHS)
    flags = []
    for arch in archs:
        num = arch.replace(".", "")
        flags += ["-gencode", f"arch=compute_{num},code=sm_{num}"]
    top = archs[-1].replace(".", "")
    return flags + ["-gencode", f"arch=compute_{top},code=compute_{top}"]


def cuda_object_step(csrc: Path, out_dir: Path, nvcc: str, source: str) -> Step:
    """The nvcc command that compiles one CUDA kernel (no torch headers needed)."""
    return Step(
        f"nvcc {source}",
        [nvcc, "-O3", "-std=c++17", "-Xcompiler", "-fPIC", *cuda_arch_flags(),
         "-c", str(csrc / source), "-o", str(out_dir / Path(source).with_suffix(".o").name)],
    )


def plan(flavor: str, csrc: Path, out_dir: Path) -> tuple[list[Step], Step]:
    """The compile steps (run in parallel) and the link step for a `flavor` build."""
    import torch

    torch_dir = Path(torch.__file__).resolve().parent
    cxx = os.environ.get("CXX", "c++")
    cxx_flags = [
        "-O3", "-std=c++20", "-fPIC", "-march=native", "-fvisibility=hidden", "-fopenmp",
        f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
        "-I", str(torch_dir / "include"), "-I", str(torch_dir / "include" / "torch" / "csrc" / "api" / "include"),
    ]
    libs = ["-L", str(torch_dir / "lib"), "-lc10", "-ltorch_cpu", "-ltorch", f"-Wl,-rpath,{torch_dir / 'lib'}"]
    # at::parallel_for is OpenMP inside torch's headers: link the OpenMP runtime torch itself
    # loaded, so torch.set_num_threads also sets this library's thread count.
    torch_omp = sorted((torch_dir / "lib").glob("libgomp*.so*"))
    libs += [f"-l:{torch_omp[0].name}"] if torch_omp else ["-fopenmp"]

    def cxx_step(source: str, extra: list[str]) -> Step:
        return Step(f"c++ {source}", [cxx, *cxx_flags, *SOURCE_FLAGS.get(source, []), *extra, "-c", str(csrc / source),
                                      "-o", str(out_dir / Path(source).with_suffix(".o").name)])

    ops_flags: list[str] = []
    compiles = [cxx_step(source, []) for source in CPU_SOURCES]
    if flavor == "cuda":
        nvcc = nvcc_path()
        assert nvcc is not None, "choose_flavor guarantees nvcc for the cuda flavour"
        cuda_lib = cuda_home(nvcc) / "lib64"
        ops_flags = ["-DPUFFCTL_WITH_CUDA"]
        compiles += [cuda_object_step(csrc, out_dir, nvcc, source) for source in CUDA_SOURCES]
        libs += ["-L", str(cuda_lib), "-lcudart", f"-Wl,-rpath,{cuda_lib}"]
    compiles += [cxx_step(source, ops_flags) for source in OPS_SOURCES]
    objects = [Path(step.argv[-1]) for step in compiles]
    from trainer.extension import LIBRARY_NAME

    link = Step("link " + LIBRARY_NAME, [cxx, "-shared", *map(str, objects), "-o", str(out_dir / LIBRARY_NAME), *libs])
    return compiles, link


def error_lines(output: str) -> str:
    """The compiler's error lines, each with the two lines after it (source and caret)."""
    lines = output.splitlines()
    picked: list[str] = []
    for i, line in enumerate(lines):
        if re.search(r"\berror\b|undefined reference|cannot find", line, re.IGNORECASE):
            picked.extend(lines[i:i + 3])
    return "\n".join((picked or lines)[:MAX_ERROR_LINES])


def run_step(step: Step, verbose: bool, console: Console) -> None:
    """Run one compiler command; raise PuffctlError (exit 1) with its error lines if it fails."""
    if verbose:
        console.print(f"[dim]$ {' '.join(step.argv)}[/]", highlight=False)
    try:
        proc = subprocess.run(step.argv, capture_output=True, text=True)
    except FileNotFoundError:
        raise PuffctlError(f"{step.label}: compiler {step.argv[0]!r} not found (install g++ or set CXX)", 1)
    if verbose and (proc.stdout or proc.stderr):
        console.print(proc.stdout + proc.stderr, highlight=False, markup=False)
    if proc.returncode != 0:
        raise PuffctlError(f"{step.label} failed; the cached builds are untouched.\n"
                           f"{error_lines(proc.stdout + proc.stderr)}", exit_code=1)


def build(clean: bool = False, verbose: bool = False, flavor: str = "auto", console: Console | None = None,
          csrc: Path | None = None) -> BuildResult:
    """Compile the extension unless a build for these sources exists (or `clean` forces it)."""
    from trainer import extension

    console = console or Console(stderr=True)
    csrc = csrc or extension.CSRC
    flavor = choose_flavor(flavor)
    final = extension.build_dir(flavor, csrc)
    library = final / extension.LIBRARY_NAME
    if library.is_file() and not clean:
        return BuildResult(flavor, library, 0.0, cached=True)

    final.parent.mkdir(parents=True, exist_ok=True)
    work = final.parent / f"{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    start = time.perf_counter()
    try:
        compiles, link = plan(flavor, csrc, work)
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                      console=console, transient=not verbose) as progress:
            tasks = {step.label: progress.add_task(f"compiling {step.label}", total=1) for step in compiles}

            def compile_one(step: Step) -> None:
                run_step(step, verbose, console)
                progress.update(tasks[step.label], completed=1, description=f"[green]done[/] {step.label}")

            with ThreadPoolExecutor(max_workers=max(1, min(len(compiles), os.cpu_count() or 1))) as pool:
                for future in [pool.submit(compile_one, step) for step in compiles]:
                    future.result()
            linking = progress.add_task(f"linking {extension.LIBRARY_NAME}", total=1)
            run_step(link, verbose, console)
            progress.update(linking, completed=1)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(work, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return BuildResult(flavor, library, time.perf_counter() - start, cached=False)


def ensure_built(console: Console) -> bool:
    """Build once if no build exists (showing progress); True when the compiled ops are usable.

    Any failure, a compile error or a broken toolchain or cache, is reported and returns False:
    training then runs on the pure-torch ops.
    """
    from trainer import extension

    try:
        if extension.find_build() is not None:
            return True
        console.print("[bold]first use:[/] compiling the advantage extension (cached afterwards)")
        result = build(console=console)
    except Exception as error:  # noqa: BLE001 - a broken build must never stop training
        console.print(f"[yellow]warning:[/] extension build failed, training uses the pure-torch ops\n"
                      f"{escape(str(error) or type(error).__name__)}")
        return False
    console.print(f"[green]ok[/] {result.flavor} extension built in {result.seconds:.1f} s")
    return True
