"""Raw env throughput: agent steps/s of trainer.envs against gymnasium's own vector envs.

Random actions (drawn before timing), no policy. Rows: gymnasium's CartPoleVectorEnv stepped
directly (its next-step autoreset, no adapter), our adapter around it (same-step conversion,
episode tracking), the built-in envs (puffer:snake's target: 1M agent steps/s on one core), and a sync-vectorized gymnasium env for scale.

    python -m bench.envs [--sizes 256 1024 4096] [--seconds 0.5] [--rounds 5] [--only puffer:snake] [--out FILE]

Besides wall-clock steps/s, each row gives steps per CPU-second of this process (`time.process_time`),
which other processes sharing the cores disturb less (not at all only on a quiet machine).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import gymnasium
import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from trainer.envs import make

ACTION_BANK = 64
"""Distinct random action batches cycled through while timing."""


def time_steps(step: Callable[[np.ndarray], object], actions: list[np.ndarray], seconds: float) -> tuple[int, float, float]:
    """Call `step` for about `seconds` (after a warm-up); return (calls, elapsed seconds, CPU seconds)."""
    for batch in actions[:8]:
        step(batch)
    calls, start, cpu = 0, time.perf_counter(), time.process_time()
    while True:
        for batch in actions:
            step(batch)
        calls += len(actions)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return calls, elapsed, time.process_time() - cpu


class Case:
    """One row: a stepping function over pre-drawn action batches, built once, timed in rounds."""

    def __init__(self, label: str, num_envs: int, env: object, step: Callable[[np.ndarray], object], n_actions: int) -> None:
        self.label, self.num_envs, self.env, self.step = label, num_envs, env, step
        rng = np.random.default_rng(0)
        self.actions = [rng.integers(n_actions, size=num_envs) for _ in range(ACTION_BANK)]
        self.best_us = self.best_cpu_us = float("inf")


RAW_LABEL = "gymnasium CartPoleVectorEnv (raw)"


def raw_cartpole(num_envs: int) -> Case:
    env = gymnasium.make_vec("CartPole-v1", num_envs, vectorization_mode="vector_entry_point")
    env.reset(seed=0)
    return Case(RAW_LABEL, num_envs, env, env.step, 2)


def ours(name: str, num_envs: int, label: str | None = None) -> Case:
    env = make(name, num_envs, seed=0)
    env.reset()
    return Case(label or name, num_envs, env, env.step, env.single_action_space.n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 4096], help="num_envs values")
    parser.add_argument("--seconds", type=float, default=0.5, help="timing window per row and round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds over all rows; each row reports its best")
    parser.add_argument("--sync-size", type=int, default=64, help="num_envs of the sync-vectorized row")
    parser.add_argument("--only", nargs="+", default=None, metavar="ENV",
                        help="time only the rows of these envs (e.g. puffer:snake), at every size")
    parser.add_argument("--out", type=Path, default=Path("bench/results/envs.json"), help="JSON output path")
    args = parser.parse_args()

    rows: list[tuple[str, Callable[[], Case]]] = []  # (label, its case's maker): only the rows --only keeps are built
    for n in args.sizes:
        rows.append((RAW_LABEL, lambda n=n: raw_cartpole(n)))
        rows += [(name, lambda name=name, n=n: ours(name, n))
                 for name in ("gym:CartPole-v1", "puffer:memory", "puffer:maze", "puffer:snake")]
    sync = "gym:Acrobot-v1 (sync)"
    rows.append((sync, lambda: ours("gym:Acrobot-v1", args.sync_size, sync)))
    cases = [make_case() for label, make_case in rows if not args.only or label in args.only]

    console = Console(width=120)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("timing envs", total=args.rounds * len(cases))
        for _ in range(args.rounds):  # rounds interleave the rows, so a busy moment hits them all alike
            for case in cases:
                calls, elapsed, cpu = time_steps(case.step, case.actions, args.seconds)
                case.best_us = min(case.best_us, elapsed / calls * 1e6)
                case.best_cpu_us = min(case.best_cpu_us, cpu / calls * 1e6)
                progress.advance(task)

    rows = []
    raw = {case.num_envs: case.best_us for case in cases if "(raw)" in case.label}
    table = Table(title=f"env steps/s (random actions, no policy, 1 process; best of {args.rounds} rounds)")
    for column in ("env", "num_envs", "agent steps/s", "per CPU-s", "us / step()", "ns / agent step", "vs raw CartPole"):
        table.add_column(column, justify="left" if column == "env" else "right", no_wrap=True)
    for case in cases:
        row = {
            "env": case.label,
            "num_envs": case.num_envs,
            "agent_steps_per_s": case.num_envs / case.best_us * 1e6,
            "agent_steps_per_cpu_s": case.num_envs / case.best_cpu_us * 1e6,
            "us_per_step_call": case.best_us,
            "ns_per_agent_step": case.best_us / case.num_envs * 1e3,
        }
        relative = ""
        if case.label == "gym:CartPole-v1" and case.num_envs in raw:
            row["overhead_vs_raw_us"] = case.best_us - raw[case.num_envs]
            relative = f"{row['overhead_vs_raw_us']:+.1f} us"
        rows.append(row)
        table.add_row(
            case.label,
            str(case.num_envs),
            f"{row['agent_steps_per_s'] / 1e6:.2f}M",
            f"{row['agent_steps_per_cpu_s'] / 1e6:.2f}M",
            f"{row['us_per_step_call']:.1f}",
            f"{row['ns_per_agent_step']:.1f}",
            relative,
        )
        case.env.close()
    console.print(table)
    console.print(f"cpu cores: {os.cpu_count()}, load average (1 min): {os.getloadavg()[0]:.2f}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "host": platform.node(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "gymnasium": gymnasium.__version__,
        "seconds_per_row": args.seconds,
        "rounds": args.rounds,
        "statistic": "best round",
        "load_average_1m_at_end": os.getloadavg()[0],
        "rows": rows,
    }
    args.out.write_text(json.dumps(report, indent=2))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
