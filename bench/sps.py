"""Throughput: agent steps per second of the full training loop (collection + training) on
CartPole-v1, for an MLP policy and PufferLib's default shape (128 encoder + LSTM 128), at a
few batch sizes, with the profiler's breakdown and the profiler's own cost, and the watchdogs'
cost (trainer/watchdog.py, fed once per epoch as trainer/run.py does) side by side.

    python bench/sps.py [--seconds 8] [--device auto] [--no-overhead] [--no-watchdog] [--out FILE]

Prints tables and writes JSON (bench/results/sps.json unless --out).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from trainer import config as config_module  # noqa: E402
from trainer.profiler import Profiler  # noqa: E402
from trainer.train import Trainer, select_device  # noqa: E402
from trainer.watchdog import Watchdog  # noqa: E402

POLICIES = {
    "mlp": {"hidden_size": 128, "lstm": False},
    "lstm": {"hidden_size": 128, "lstm": True, "lstm_hidden_size": 128},
}
# (num_envs, bptt_horizon, minibatch_size): batch = num_envs * horizon
SHAPES = [(1024, 64, 16384), (2048, 64, 32768), (4096, 64, 65536)]


def measure(policy: str, num_envs: int, horizon: int, minibatch: int, seconds: float, device: str,
            threads: int, precision: str, timing: bool = True, watchdog: bool = False) -> dict:
    """Run the loop for about `seconds` after two warm-up epochs; SPS over whole epochs."""
    config = config_module.resolve({
        "env": {"name": "gym:CartPole-v1", "num_envs": num_envs},
        "policy": POLICIES[policy],
        "train": {"bptt_horizon": horizon, "minibatch_size": minibatch, "total_timesteps": 10**9,
                  "cpu_threads": threads, "precision": precision},
    })
    torch.set_num_threads(threads)
    profiler = Profiler(window=1e9, timing=timing)
    trainer = Trainer(config, select_device(device), profiler)
    for _ in range(2):
        trainer.evaluate()
        trainer.train()
    profiler.snapshots.clear()
    profiler.mark(trainer.epoch, trainer.agent_steps)
    dog = Watchdog(config["watchdog"]) if watchdog else None
    start, cpu_start = time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        trainer.evaluate()
        losses = trainer.train()
        profiler.mark(trainer.epoch, trainer.agent_steps)
        if dog is not None:
            dog.check(losses, profiler.sps())
    cpu_seconds = time.process_time() - cpu_start
    result = {"policy": policy, "num_envs": num_envs, "horizon": horizon, "batch": num_envs * horizon,
              "minibatch": minibatch, "params": trainer.policy_params, "threads": threads, "precision": precision,
              "device": str(trainer.device),
              "sps": profiler.sps(), "cpu_sps": (trainer.agent_steps - 2 * trainer.batch_size) / cpu_seconds,
              "epochs": trainer.epoch - 2, "perf": profiler.perf() if timing else None}
    trainer.close()
    return result


def timer_cost_ns() -> float:
    """What one `with timer:` block costs, in nanoseconds (the profiler's whole per-use price)."""
    from trainer.profiler import Timer

    timer, n = Timer(), 200_000
    start = time.perf_counter()
    for _ in range(n):
        with timer:
            pass
    return (time.perf_counter() - start) / n * 1e9


def watchdog_check_us() -> float:
    """What one epoch's `Watchdog.check` costs, in microseconds (its whole per-epoch price)."""
    dog, n = Watchdog(config_module.DEFAULTS["watchdog"]), 20_000
    losses = {"approx_kl": 0.01, "value_loss": 1.0, "grad_norm": 1.0, "policy_loss": 0.1}
    start = time.perf_counter()
    for i in range(n):
        dog.check(losses, 1000.0 + i % 7)
    return (time.perf_counter() - start) / n * 1e6


def advantage_ops() -> str:
    """Which advantage implementation runs: the compiled ops' flavour, or pure torch."""
    from trainer import advantage

    return f"compiled {advantage.compiled_flavor()}" if advantage.compiled_flavor() else "pure torch (run puffctl build)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0, help="measured time per configuration")
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--threads", default="1,2", help="torch CPU thread counts to run (train.cpu_threads)")
    parser.add_argument("--policies", default="mlp,lstm")
    parser.add_argument("--precisions", default="float32,bfloat16", help="train.precision values to run")
    parser.add_argument("--shapes", default=None, help="e.g. 1024x64x16384,4096x64x65536")
    parser.add_argument("--no-overhead", action="store_true", help="skip the profiler-cost measurement")
    parser.add_argument("--no-watchdog", action="store_true", help="skip the watchdog-cost measurement")
    parser.add_argument("--pairs", type=int, default=5, help="alternating on/off pairs for the cost measurements")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "sps.json")
    args = parser.parse_args()
    shapes = SHAPES if not args.shapes else [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")]
    console = Console(width=max(Console().width, 150))
    results = []
    thread_counts = [int(n) for n in args.threads.split(",")]
    for threads in thread_counts:
        for policy in args.policies.split(","):
            for precision in args.precisions.split(","):
                for num_envs, horizon, minibatch in shapes:
                    result = measure(policy, num_envs, horizon, minibatch, args.seconds, args.device, threads,
                                     precision)
                    console.print(f"{threads} thread(s) {policy} {precision} {num_envs}x{horizon} mb {minibatch}: "
                                  f"{result['sps']:,.0f} steps/s")
                    results.append(result)

    table = Table(title=f"steps/s on CartPole-v1 ({results[0]['device']}, advantage ops: {advantage_ops()}, "
                        f"load average {os.getloadavg()[0]:.2f})")
    for column in ("threads", "policy", "precision", "envs x horizon", "minibatch", "SPS", "steps/CPU-s", "eval fwd", "env", "eval copy",
                   "eval misc", "train fwd", "learn", "train copy", "train misc"):
        table.add_column(column, justify="right")
    for r in results:
        perf = r["perf"]
        epoch = perf["evaluate"]["total"] + perf["train"]["total"]

        def pct(phase: str, node: str) -> str:
            return f"{100 * perf[phase][node] / epoch:.0f}%"

        table.add_row(str(r["threads"]), r["policy"], r["precision"], f"{r['num_envs']}x{r['horizon']}", str(r["minibatch"]), f"{r['sps']:,.0f}", f"{r['cpu_sps']:,.0f}",
                      pct("evaluate", "forward"), pct("evaluate", "env"), pct("evaluate", "copy"),
                      pct("evaluate", "misc"), pct("train", "forward"), pct("train", "learn"),
                      pct("train", "copy"), pct("train", "misc"))
    console.print(table)

    overhead = None
    if not args.no_overhead:
        num_envs, horizon, minibatch = shapes[0]
        pairs = []
        for _ in range(5):  # alternate to spread machine noise over both
            on = measure("mlp", num_envs, horizon, minibatch, args.seconds / 2, args.device, thread_counts[0],
                         "float32", True)
            off = measure("mlp", num_envs, horizon, minibatch, args.seconds / 2, args.device, thread_counts[0],
                          "float32", False)
            pairs.append((on["cpu_sps"], off["cpu_sps"]))
        with_timing = statistics.median(p[0] for p in pairs)
        without = statistics.median(p[1] for p in pairs)
        # analytic: 4 timed blocks per env step, 4 per minibatch, against the measured step time
        block_ns = timer_cost_ns()
        steps_per_epoch, minibatches = horizon * 1, num_envs * horizon // minibatch
        epoch_seconds = num_envs * horizon / with_timing
        analytic = 100 * (4 * steps_per_epoch + 4 * minibatches + 4) * block_ns * 1e-9 / epoch_seconds
        overhead = {"cpu_sps_with_profiler": with_timing, "cpu_sps_without": without, "pairs": pairs,
                    "cost_percent": 100 * (without - with_timing) / without,
                    "timer_block_ns": block_ns, "analytic_cost_percent": analytic}
        console.print(f"profiler cost (mlp {num_envs}x{horizon}, steps per CPU-second, median of 5 alternating "
                      f"pairs): {with_timing:,.0f} with vs {without:,.0f} without = {overhead['cost_percent']:.2f}% "
                      f"(machine noise is larger); analytic: {block_ns:.0f} ns per timed block = "
                      f"{analytic:.3f}% of an epoch")
    watchdog = None
    if not args.no_watchdog:
        num_envs, horizon, minibatch = shapes[0]
        pairs = []
        for _ in range(args.pairs):
            on = measure("mlp", num_envs, horizon, minibatch, args.seconds / 2, args.device, thread_counts[0], "float32",
                         watchdog=True)
            off = measure("mlp", num_envs, horizon, minibatch, args.seconds / 2, args.device, thread_counts[0], "float32")
            pairs.append((on["cpu_sps"], off["cpu_sps"]))
        with_dog, without = statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)
        check_us = watchdog_check_us()
        analytic = 100 * check_us * 1e-6 / (num_envs * horizon / with_dog)
        watchdog = {"cpu_sps_with": with_dog, "cpu_sps_without": without, "pairs": pairs,
                    "cost_percent": 100 * (without - with_dog) / without, "check_us": check_us,
                    "analytic_cost_percent": analytic}
        console.print(f"watchdog cost (mlp {num_envs}x{horizon}, steps per CPU-second, median of {args.pairs} alternating "
                      f"pairs): {with_dog:,.0f} with vs {without:,.0f} without = {watchdog['cost_percent']:.2f}% "
                      f"(machine noise is larger); analytic: {check_us:.1f} us per epoch = {analytic:.4f}% of an epoch")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"results": results, "profiler_overhead": overhead, "watchdog_overhead": watchdog,
                                    "load_average": os.getloadavg(), "advantage_ops": advantage_ops()}, indent=1))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
