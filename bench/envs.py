"""Raw env throughput: agent steps/s of trainer.envs against gymnasium's own vector envs.

Random actions (drawn before timing), no policy. Rows: gymnasium's CartPoleVectorEnv stepped
directly (its next-step autoreset, no adapter), our adapter around it (same-step conversion,
episode tracking), the built-in envs, and a sync-vectorized gymnasium env for scale.

    python -m bench.envs [--sizes 256 1024 4096] [--seconds 1.0] [--out bench/results/envs.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

import gymnasium
import numpy as np
from rich.console import Console
from rich.table import Table

from trainer.envs import make

ACTION_BANK = 64
"""Distinct random action batches cycled through while timing."""


def time_steps(step: Callable[[np.ndarray], object], actions: list[np.ndarray], seconds: float) -> tuple[int, float]:
    """Call `step` for about `seconds` (after a warm-up); return (calls, elapsed seconds)."""
    for batch in actions[:8]:
        step(batch)
    calls, start = 0, time.perf_counter()
    while True:
        for batch in actions:
            step(batch)
        calls += len(actions)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return calls, elapsed


def bench_raw_cartpole(num_envs: int, seconds: float, rng: np.random.Generator) -> tuple[int, float]:
    env = gymnasium.make_vec("CartPole-v1", num_envs, vectorization_mode="vector_entry_point")
    env.reset(seed=0)
    actions = [rng.integers(2, size=num_envs) for _ in range(ACTION_BANK)]
    result = time_steps(env.step, actions, seconds)
    env.close()
    return result


def bench_ours(name: str, kwargs: dict, num_envs: int, seconds: float, rng: np.random.Generator) -> tuple[int, float]:
    with make(name, num_envs, seed=0, **kwargs) as env:
        env.reset()
        actions = [rng.integers(env.single_action_space.n, size=num_envs) for _ in range(ACTION_BANK)]
        return time_steps(env.step, actions, seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 4096], help="num_envs values")
    parser.add_argument("--seconds", type=float, default=1.0, help="timing window per row")
    parser.add_argument("--sync-size", type=int, default=64, help="num_envs of the sync-vectorized row")
    parser.add_argument("--out", type=Path, default=Path("bench/results/envs.json"), help="JSON output path")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    cases: list[tuple[str, int, Callable[[], tuple[int, float]]]] = []
    for n in args.sizes:
        cases.append(("gymnasium CartPoleVectorEnv (raw)", n, lambda n=n: bench_raw_cartpole(n, args.seconds, rng)))
        cases.append(("gym:CartPole-v1", n, lambda n=n: bench_ours("gym:CartPole-v1", {}, n, args.seconds, rng)))
        cases.append(("puffer:memory", n, lambda n=n: bench_ours("puffer:memory", {}, n, args.seconds, rng)))
        cases.append(("puffer:maze", n, lambda n=n: bench_ours("puffer:maze", {}, n, args.seconds, rng)))
    cases.append(
        ("gym:Acrobot-v1 (sync)", args.sync_size, lambda: bench_ours("gym:Acrobot-v1", {}, args.sync_size, args.seconds, rng))
    )

    console = Console(width=120)
    rows = []
    with console.status("timing envs...") as status:
        for label, num_envs, run in cases:
            status.update(f"timing {label} x {num_envs}...")
            calls, elapsed = run()
            rows.append(
                {
                    "env": label,
                    "num_envs": num_envs,
                    "agent_steps_per_s": calls * num_envs / elapsed,
                    "us_per_step_call": elapsed / calls * 1e6,
                    "ns_per_agent_step": elapsed / (calls * num_envs) * 1e9,
                }
            )

    raw = {row["num_envs"]: row["us_per_step_call"] for row in rows if "(raw)" in row["env"]}
    table = Table(title="env steps/s (random actions, no policy, 1 process)")
    for column in ("env", "num_envs", "agent steps/s", "us / step()", "ns / agent step", "vs raw CartPole"):
        table.add_column(column, justify="left" if column == "env" else "right", no_wrap=True)
    for row in rows:
        relative = ""
        if row["env"] == "gym:CartPole-v1":
            row["overhead_vs_raw_us"] = row["us_per_step_call"] - raw[row["num_envs"]]
            relative = f"{row['overhead_vs_raw_us']:+.1f} us"
        table.add_row(
            row["env"],
            str(row["num_envs"]),
            f"{row['agent_steps_per_s'] / 1e6:.2f}M",
            f"{row['us_per_step_call']:.1f}",
            f"{row['ns_per_agent_step']:.1f}",
            relative,
        )
    console.print(table)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "host": platform.node(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "gymnasium": gymnasium.__version__,
        "seconds_per_row": args.seconds,
        "rows": rows,
    }
    args.out.write_text(json.dumps(report, indent=2))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
