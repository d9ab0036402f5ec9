"""E3B and DIAYN against the same PPO without them: the issue's targets, quickly, in one process.

Each row trains a profile (with `--set`-style overrides) for a fixed step budget and reports
the mean of an episode stat over the last `--tail` epochs (maze: `solved`; snake: `score`),
the SPS of the whole run, and the algorithm's own numbers (E3B's intrinsic share and seconds,
DIAYN's discriminator accuracy against chance). The full 5-seed comparison with confidence
intervals is `puffctl ablate run bench/ablations/exploration-*.yaml`; this is its quick probe.

    python bench/exploration.py maze [--seeds 1 2] [--steps 1000000]
    python bench/exploration.py snake [--seeds 1] [--steps 500000]
    python bench/exploration.py sps [--seconds 20]      # E3B's and DIAYN's throughput cost
    python bench/exploration.py snake --arm "k4 full=train.diayn_archive=4,train.diayn_features=full"

Prints a table and writes JSON (bench/results/exploration-<what>.json unless --out).
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

from puffctl import profiles  # noqa: E402
from trainer.train import Trainer  # noqa: E402

ARMS = {
    "maze": ("e3b", "solved", {"baseline": ["train.e3b_coef=0"], "e3b": []}),
    "snake": ("diayn", "score", {"baseline": ["train.diayn_coef=0"], "diayn 0.05": ["train.diayn_coef=0.05"],
                                 "diayn 0.07": ["train.diayn_coef=0.07"]}),
}
SPS_ARMS = {
    "baseline (maze, hidden 128)": ("e3b", ["train.e3b_coef=0"]),
    "e3b (maze, hidden 128)": ("e3b", []),
    "baseline (snake)": ("diayn", ["train.diayn_coef=0"]),
    "diayn (snake)": ("diayn", []),
}


def trainer_for(profile: str, sets: list[str], seed: int, steps: int | None) -> Trainer:
    config = profiles.build_config(profiles.load(profile), sets=sets, seed=seed, steps=steps)
    torch.set_num_threads(config["train"]["cpu_threads"] or 1)
    return Trainer(config, "cpu")


def run_arm(profile: str, sets: list[str], seed: int, steps: int, stat: str, tail: int) -> dict:
    """Train to `steps`; the mean `stat` over the episodes of the last `tail` epochs, and the last epoch's losses."""
    trainer = trainer_for(profile, sets, seed, steps)
    recent: list[list[float]] = []
    start = time.perf_counter()
    losses: dict = {}
    while trainer.agent_steps < steps:
        recent.append([e[stat] for e in trainer.evaluate() if stat in e])
        recent = recent[-tail:]
        losses = trainer.train()
    elapsed = time.perf_counter() - start
    values = [v for epoch in recent for v in epoch]
    trainer.close()
    return {"seed": seed, stat: statistics.fmean(values) if values else 0.0, "episodes": len(values),
            "sps": trainer.agent_steps / elapsed, "wall": elapsed, "agent_steps": trainer.agent_steps,
            **{k: v for k, v in losses.items() if k.startswith(("e3b_", "diayn_"))}}


def measure_sps(profile: str, sets: list[str], seconds: float) -> float:
    """Agent steps per second of collection + training after one warm-up epoch."""
    trainer = trainer_for(profile, sets, 1, None)
    trainer.evaluate(), trainer.train()
    start, steps = time.perf_counter(), trainer.agent_steps
    while time.perf_counter() - start < seconds:
        trainer.evaluate(), trainer.train()
    sps = (trainer.agent_steps - steps) / (time.perf_counter() - start)
    trainer.close()
    return sps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("maze", "snake", "sps"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--steps", type=int, default=1_000_000, help="agent steps per run")
    parser.add_argument("--tail", type=int, default=8, help="epochs at the end whose episodes are scored")
    parser.add_argument("--seconds", type=float, default=20.0, help="sps: measured time per arm")
    parser.add_argument("--arm", action="append", default=[], metavar="LABEL=KEY=VALUE,...",
                        help="maze/snake: run this arm (overrides on the profile, comma-separated) instead of the "
                             "default arms; repeatable")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    console = Console(width=140)
    out = args.out or ROOT / "bench" / "results" / f"exploration-{args.what}.json"
    report: dict = {"what": args.what, "cpu_count": os.cpu_count()}

    if args.what == "sps":
        table = Table(title=f"SPS, collection + training ({args.seconds:.0f} s per arm)")
        for column in ("arm", "SPS", "cost vs its baseline"):
            table.add_column(column, justify="left" if column == "arm" else "right")
        rows, base = {}, None
        for label, (profile, sets) in SPS_ARMS.items():
            rows[label] = measure_sps(profile, sets, args.seconds)
            base = rows[label] if label.startswith("baseline") else base
            cost = "" if label.startswith("baseline") else f"{100 * (1 - rows[label] / base):.0f}%"
            table.add_row(label, f"{rows[label]:,.0f}", cost)
        report["sps"] = rows
    else:
        profile, stat, arms = ARMS[args.what]
        if args.arm:
            arms = {label: [s for s in sets.split(",") if s] for label, _, sets in (a.partition("=") for a in args.arm)}
        table = Table(title=f"{args.what}: mean {stat} over the last {args.tail} epochs at {args.steps:,} steps")
        for column in ("arm", "seed", stat, "episodes", "SPS", "algorithm numbers"):
            table.add_column(column, justify="left" if column in ("arm", "algorithm numbers") else "right")
        report["runs"] = {}
        for seed in args.seeds:
            for label, sets in arms.items():
                result = run_arm(profile, sets, seed, args.steps, stat, args.tail)
                report["runs"].setdefault(label, []).append(result)
                extra = ", ".join(f"{k} {v:.3g}" for k, v in result.items() if k.startswith(("e3b_", "diayn_")))
                table.add_row(label, str(seed), f"{result[stat]:.3f}", str(result["episodes"]), f"{result['sps']:,.0f}", extra)
                console.print(f"{label} seed {seed}: {stat} {result[stat]:.3f} ({result['wall']:.0f} s) {extra}")
    console.print(table)
    report["load_average_1m_at_end"] = os.getloadavg()[0]
    console.print(f"cpu cores: {os.cpu_count()}, load average (1 min): {report['load_average_1m_at_end']:.2f}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
