"""Benchmark the advantage ops: compiled op vs pure-torch reference vs the memory-bandwidth floor.

The floor is a plain tensor copy of as many bytes as the op touches (its inputs and outputs
together). A copy of that size reads and writes those bytes, so the table also gives the
stricter ratio against a copy of half of them, whose traffic (read + write) equals the op's.
All are timed in the same run, median of --repeats calls after warm-up.

    python bench/advantage.py [--device cpu|cuda] [--estimator puff] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import torch
from rich.console import Console
from rich.table import Table

from trainer import advantage

SHAPES = ((16384, 64), (4096, 128), (1024, 256), (65536, 16))
GAMMA, LAMBDA = 0.995, 0.90


def median_seconds(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Median wall time of `fn` after a short warm-up, synchronizing CUDA around each call."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_shape(estimator: str, rows: int, horizon: int, device: torch.device, repeats: int) -> dict:
    gen = torch.Generator().manual_seed(rows * horizon)
    values = torch.randn(rows, horizon, generator=gen).to(device)
    rewards = torch.randn(rows, horizon, generator=gen).to(device)
    dones = (torch.rand(rows, horizon, generator=gen) < 0.02).float().to(device)
    importance = None if estimator == "gae" else (0.5 + torch.rand(rows, horizon, generator=gen)).to(device)
    outputs = 2 if estimator == "vtrace" else 1
    inputs = 3 if importance is None else 4
    traffic = (inputs + outputs) * rows * horizon * 4

    def op(backend: str) -> Callable[[], object]:
        return lambda: advantage.compute(values, rewards, dones, importance, estimator=estimator, gamma=GAMMA,
                                         gae_lambda=LAMBDA, backend=backend)

    def raw_op() -> None:
        # The registered op itself, on preallocated outputs: what a tight training loop calls.
        if estimator == "vtrace":
            torch.ops.puffctl.vtrace(values, rewards, dones, importance, GAMMA, 1.0, 1.0, out_a, out_b)
        elif estimator == "puff":
            torch.ops.puffctl.puff_advantage(values, rewards, dones, importance, GAMMA, LAMBDA, 1.0, 1.0, out_a)
        else:
            torch.ops.puffctl.gae(values, rewards, dones, GAMMA, LAMBDA, out_a)

    out_a, out_b = torch.empty_like(values), torch.empty_like(values)
    src = torch.empty(traffic // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    half = src.numel() // 2
    copy_s = median_seconds(lambda: dst.copy_(src), repeats, device)
    half_copy_s = median_seconds(lambda: dst[:half].copy_(src[:half]), repeats, device)
    compiled_s = median_seconds(raw_op, repeats, device)
    reference_s = median_seconds(op("torch"), max(5, repeats // 5), device)
    return {
        "estimator": estimator, "rows": rows, "horizon": horizon, "bytes_moved": traffic,
        "compiled_ms": 1e3 * compiled_s, "reference_ms": 1e3 * reference_s, "copy_ms": 1e3 * copy_s,
        "traffic_equal_copy_ms": 1e3 * half_copy_s, "compiled_over_copy": compiled_s / copy_s,
        "compiled_over_traffic_equal_copy": compiled_s / half_copy_s, "reference_over_compiled": reference_s / compiled_s,
        "compiled_gb_s": traffic / compiled_s / 1e9,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--estimator", default="all", choices=("all", *advantage.ESTIMATORS))
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "advantage.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    if advantage.compiled_flavor() is None:
        raise SystemExit("no compiled build of the advantage ops: run `puffctl build` first")
    estimators = advantage.ESTIMATORS if args.estimator == "all" else (args.estimator,)

    console = Console()
    rows = []
    with console.status("timing...") as status:
        for estimator in estimators:
            for shape in SHAPES:
                status.update(f"timing {estimator} {list(shape)}")
                rows.append(bench_shape(estimator, *shape, device, args.repeats))

    table = Table(title=f"advantage ops on {args.device} ({torch.get_num_threads()} threads), median of {args.repeats}",
                  caption="copy: a plain copy of as many bytes as the op reads and writes; "
                          "traffic-equal: a copy of half of them (same read + write traffic as the op)")
    for column in ("estimator", "shape", "compiled ms", "reference ms", "copy ms", "compiled / copy",
                   "compiled / traffic-equal copy", "reference / compiled", "compiled GB/s"):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(r["estimator"], f"[{r['rows']}, {r['horizon']}]", f"{r['compiled_ms']:.3f}",
                      f"{r['reference_ms']:.2f}", f"{r['copy_ms']:.3f}", f"{r['compiled_over_copy']:.2f}x",
                      f"{r['compiled_over_traffic_equal_copy']:.2f}x", f"{r['reference_over_compiled']:.1f}x",
                      f"{r['compiled_gb_s']:.1f}")
    console.print(table)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    machine = {"platform": platform.platform(), "processor": platform.processor(), "threads": torch.get_num_threads(),
               "torch": torch.__version__, "device": args.device, "flavor": advantage.compiled_flavor()}
    args.out.write_text(json.dumps({"machine": machine, "results": rows}, indent=2))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
