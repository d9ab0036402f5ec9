"""`puffctl build`, the build cache, the CUDA sources, the pure-torch fallback and `puffctl doctor`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from puffctl import build as build_module
from puffctl.cli import app
from puffctl.errors import PuffctlError
from trainer import extension

REPO = Path(__file__).resolve().parents[2]
QUIET = Console(stderr=True, quiet=True)


def puffctl(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "puffctl", *args], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, **(env or {})})


def test_a_cached_build_is_reused_not_recompiled(compiled_ops):
    first = build_module.build(console=QUIET)
    again = build_module.build(console=QUIET)
    assert first.cached and again.cached
    assert again.library == first.library and again.library.is_file()


def test_the_build_key_follows_the_sources(tmp_path):
    copy = tmp_path / "csrc"
    shutil.copytree(extension.CSRC, copy)
    assert extension.build_key("cpu", copy) == extension.build_key("cpu", extension.CSRC)
    assert extension.build_key("cpu", copy) != extension.build_key("cuda", copy)
    with open(copy / "advantage.h", "a") as header:
        header.write("// changed\n")
    assert extension.build_key("cpu", copy) != extension.build_key("cpu", extension.CSRC)


def test_a_failed_compile_shows_the_errors_and_keeps_the_good_build(compiled_ops, tmp_path):
    broken = tmp_path / "csrc"
    shutil.copytree(extension.CSRC, broken)
    for name in ("advantage_cpu.cpp", "advantage_ops.cpp"):
        source = broken / name
        source.write_text('#error "deliberately broken for the test"\n' + source.read_text())
    with pytest.raises(PuffctlError) as failure:
        build_module.build(console=QUIET, csrc=broken, flavor="cpu")
    assert failure.value.exit_code == 1
    assert "deliberately broken for the test" in str(failure.value)
    assert "untouched" in str(failure.value)
    assert not extension.build_dir("cpu", broken).exists()
    assert not list(extension.build_dir("cpu", broken).parent.glob("*.tmp-*"))
    assert extension.find_build() is not None


def test_the_cuda_flavour_compiles_links_and_loads(tmp_path):
    """No GPU here, but nvcc compiles the kernel, the CUDA binding links, and the library loads."""
    if build_module.nvcc_path() is None:
        if os.environ.get("CI"):
            pytest.fail("nvcc is not installed, so the CUDA sources cannot be compiled")
        pytest.skip("nvcc is not installed")
    compiles, link = build_module.plan("cuda", extension.CSRC, tmp_path)
    assert any(step.argv[0].endswith("nvcc") for step in compiles)
    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        list(pool.map(lambda step: build_module.run_step(step, verbose=False, console=QUIET), compiles))
    build_module.run_step(link, verbose=False, console=QUIET)
    library = tmp_path / extension.LIBRARY_NAME
    script = textwrap.dedent(f"""
        import torch
        from trainer import advantage
        torch.ops.load_library({str(library)!r})
        v, r, d, w = torch.randn(5, 20), torch.randn(5, 20), torch.zeros(5, 20), torch.rand(5, 20)
        out = torch.empty_like(v)
        torch.ops.puffctl.puff_advantage(v, r, d, w, 0.99, 0.9, 1.0, 1.0, out)
        ref = advantage.puff_advantage(v, r, d, w, gamma=0.99, gae_lambda=0.9, backend="torch")
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
        from trainer.algorithms.e3b import E3B
        phi, first, bonus = torch.randn(3, 8), torch.tensor([True, False, False]), torch.empty(3)
        c_inv = torch.eye(8).flatten().repeat(3, 1) / 0.1  # at dim 8, one whole tile per env
        torch.ops.puffctl.e3b_step(c_inv, phi, first, 0.1, 1.0, True, bonus)
        torch.testing.assert_close(bonus, E3B(3, 8, norm=False, backend="torch").step(phi, first))
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_without_a_build_the_trainer_falls_back_with_one_warning(tmp_path):
    script = textwrap.dedent("""
        import warnings
        import torch
        from trainer import advantage, extension
        from trainer.algorithms.e3b import E3B
        warnings.simplefilter("always")
        v, r, d = torch.randn(4, 9), torch.randn(4, 9), torch.zeros(4, 9)
        phi, first = torch.randn(3, 5), torch.tensor([True, False, False])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            a = advantage.compute(v, r, d, estimator="puff", gamma=0.99, gae_lambda=0.9)
            b = advantage.compute(v, r, d, estimator="puff", gamma=0.99, gae_lambda=0.9)
            e3b = [E3B(3, 5), E3B(3, 5)]
            bonus = [e.step(phi, first) for e in e3b]
        ref = advantage.compute(v, r, d, estimator="puff", gamma=0.99, gae_lambda=0.9, backend="torch")
        assert extension.load() is None
        assert torch.equal(a[0], ref[0]) and torch.equal(b[0], ref[0])
        assert not e3b[0].compiled and torch.equal(bonus[0], E3B(3, 5, backend="torch").step(phi, first))
        print(sorted(str(w.message).rsplit(" ", 1)[-1] for w in caught if "puffctl build" in str(w.message)))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PUFFCTL_CACHE_DIR": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "['ops', 'step']", "one warning for the advantage ops, one for E3B's step"
    assert not (tmp_path / "extensions").exists(), "loading must never compile"


def test_help_does_not_import_torch(tmp_path):
    """The rendering path (an empty cache: puffctl/entry.py keeps the answer after it)."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "puffctl", "--help"], capture_output=True,
                          text=True, cwd=REPO, env={**os.environ, "PUFFCTL_CACHE_DIR": str(tmp_path)})
    assert proc.returncode == 0
    imported = [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")]
    assert "typer" in imported
    assert not [name for name in imported if name == "torch" or name.startswith("torch.")]


def test_build_command_reports_the_cached_library(compiled_ops):
    result = CliRunner().invoke(app, ["build"])
    assert result.exit_code == 0, result.output
    assert "cached build" in result.output and "puffctl_ops.so" in result.output


@pytest.mark.parametrize("flavor,message", [("cuda", "cannot build the CUDA flavour"), ("gpu", "--flavor must be")])
def test_build_refuses_an_impossible_flavor_in_one_line(flavor, message):
    import torch

    if flavor == "cuda" and torch.version.cuda and build_module.nvcc_path():
        pytest.skip("this machine can build the CUDA flavour")
    proc = puffctl("build", "--flavor", flavor)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_doctor_reports_every_check(compiled_ops):
    proc = puffctl("doctor", env={"COLUMNS": "200"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in ("python", "torch", "cuda", "nvcc", "c++ compiler", "extension"):
        assert name in proc.stdout
    assert "cpu build, loads in" in proc.stdout or "cuda build, loads in" in proc.stdout


def test_doctor_hints_at_puffctl_build_when_nothing_is_built(tmp_path):
    proc = puffctl("doctor", env={"COLUMNS": "200", "PUFFCTL_CACHE_DIR": str(tmp_path)})
    assert proc.returncode == 0, "a missing build is not fatal: training falls back"
    assert "run `puffctl build`" in proc.stdout


def test_ensure_built_reports_any_failure_and_lets_training_fall_back(monkeypatch):
    def broken_cache(*_args):
        raise PermissionError("[Errno 13] cache folder not writable")

    monkeypatch.setattr(extension, "find_build", broken_cache)
    console = Console(record=True, width=200)
    assert build_module.ensure_built(console) is False
    shown = console.export_text()
    assert "training uses the pure-torch ops" in shown and "cache folder not writable" in shown
