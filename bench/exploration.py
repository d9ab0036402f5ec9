"""E3B and DIAYN against the same PPO without them: the issue's targets, quickly, in one process.

Each row trains a profile (with `--set`-style overrides) for a fixed step budget and reports
the mean of an episode stat over the last `--tail` epochs (maze: `solved`; snake: `score`),
the SPS of the whole run, and the algorithm's own numbers (E3B's intrinsic share and seconds,
DIAYN's discriminator accuracy against chance). The full 5-seed comparison with confidence
intervals is `puffctl ablate run bench/ablations/exploration-*.yaml`; this is its quick probe.

    python bench/exploration.py maze [--seeds 1 2] [--steps 1000000]
    python bench/exploration.py snake [--seeds 1] [--steps 500000]
    python bench/exploration.py sps [--pairs e3b diayn] [--rounds 5] [--seconds 10]   # throughput cost
    python bench/exploration.py step [--sizes 256 1024] [--dim 128] [--rounds 5]   # E3B.step alone

`sps` trains each pair's baseline and algorithm side by side in one process, alternating rounds of
`--seconds` each (so machine load hits both alike), and reports the median over rounds of
1 - sps_algorithm / sps_baseline. `step` times E3B.step alone, the fused csrc/ op against the
pure-torch step, also in alternating rounds (medians of ms per step).

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
    "snake": ("diayn", "score", {"baseline": ["train.diayn_coef=0"], "diayn 0.01": ["train.diayn_coef=0.01"],
                                 "diayn 0.1": ["train.diayn_coef=0.1"]}),
}
SPS_PAIRS = {
    "e3b": ("maze, hidden 128", "e3b", ["train.e3b_coef=0"], []),
    "diayn": ("snake", "diayn", ["train.diayn_coef=0"], []),
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


def epochs_for(trainer: Trainer, seconds: float) -> tuple[int, float]:
    """Collect + train epochs for about `seconds`: (agent steps, seconds taken)."""
    start, steps = time.perf_counter(), trainer.agent_steps
    while time.perf_counter() - start < seconds:
        trainer.evaluate(), trainer.train()
    return trainer.agent_steps - steps, time.perf_counter() - start


def sps_pair(profile: str, base_sets: list[str], algo_sets: list[str], rounds: int, seconds: float) -> dict:
    """Baseline and algorithm trainers in alternating rounds after one warm-up epoch each; per-round SPS."""
    trainers = {"baseline": trainer_for(profile, base_sets, 1, None), "algorithm": trainer_for(profile, algo_sets, 1, None)}
    for trainer in trainers.values():
        trainer.evaluate(), trainer.train()
    sps: dict[str, list[float]] = {name: [] for name in trainers}
    for round_ in range(rounds):
        order = list(trainers) if round_ % 2 == 0 else list(reversed(trainers))
        for name in order:
            steps, wall = epochs_for(trainers[name], seconds)
            sps[name].append(steps / wall)
    for trainer in trainers.values():
        trainer.close()
    costs = [1 - a / b for a, b in zip(sps["algorithm"], sps["baseline"])]
    return {"sps": sps, "costs": costs, "median_cost": statistics.median(costs)}


def step_times(envs: int, dim: int, rounds: int, steps: int) -> dict[str, list[float]]:
    """ms per E3B.step (normalised bonus, resets at ~1/64 of the steps) for the fused op and the torch step."""
    from trainer.algorithms.e3b import E3B

    gen = torch.Generator().manual_seed(0)
    phis = torch.tanh(torch.randn(steps, envs, dim, generator=gen))
    firsts = torch.rand(steps, envs, generator=gen) < 1 / 64
    bonuses = {backend: E3B(envs, dim, backend=backend) for backend in ("compiled", "torch")}
    times: dict[str, list[float]] = {backend: [] for backend in bonuses}
    for round_ in range(rounds):
        for backend in (bonuses if round_ % 2 == 0 else reversed(bonuses)):
            start = time.perf_counter()
            for t in range(steps):
                bonuses[backend].step(phis[t], firsts[t])
            times[backend].append(1e3 * (time.perf_counter() - start) / steps)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("maze", "snake", "sps", "step"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--steps", type=int, default=1_000_000, help="agent steps per run")
    parser.add_argument("--tail", type=int, default=8, help="epochs at the end whose episodes are scored")
    parser.add_argument("--pairs", nargs="+", choices=tuple(SPS_PAIRS), default=list(SPS_PAIRS),
                        help="sps: which algorithm-vs-baseline pairs")
    parser.add_argument("--rounds", type=int, default=5, help="sps, step: alternating rounds per arm")
    parser.add_argument("--seconds", type=float, default=10.0, help="sps: seconds per arm per round")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024], help="step: numbers of envs")
    parser.add_argument("--dim", type=int, default=128, help="step: embedding width H")
    parser.add_argument("--threads", type=int, default=1, help="step: torch threads")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    console = Console(width=140)
    out = args.out or ROOT / "bench" / "results" / f"exploration-{args.what}.json"
    report: dict = {"what": args.what, "cpu_count": os.cpu_count(), "load_average_1m_at_start": os.getloadavg()[0]}

    if args.what == "sps":
        table = Table(title=f"SPS, collection + training ({args.rounds} alternating rounds of {args.seconds:.0f} s per arm)")
        for column in ("pair", "baseline SPS (median)", "algorithm SPS (median)", "cost, median of rounds", "cost per round"):
            table.add_column(column, justify="left" if column == "pair" else "right")
        report["pairs"] = {}
        for pair in args.pairs:
            label, profile, base_sets, algo_sets = SPS_PAIRS[pair]
            result = sps_pair(profile, base_sets, algo_sets, args.rounds, args.seconds)
            report["pairs"][pair] = result
            table.add_row(f"{pair} ({label})", f"{statistics.median(result['sps']['baseline']):,.0f}",
                          f"{statistics.median(result['sps']['algorithm']):,.0f}", f"{100 * result['median_cost']:.1f}%",
                          " ".join(f"{100 * c:.0f}%" for c in result["costs"]))
    elif args.what == "step":
        torch.set_num_threads(args.threads)
        table = Table(title=f"E3B.step alone, H={args.dim}, {args.threads} thread(s), median of {args.rounds} rounds")
        for column in ("envs", "fused op, ms/step", "torch, ms/step", "speed-up"):
            table.add_column(column, justify="right")
        report["step"] = {}
        for envs in args.sizes:
            times = step_times(envs, args.dim, args.rounds, steps=max(10, 5120 // envs))
            fused, plain = statistics.median(times["compiled"]), statistics.median(times["torch"])
            report["step"][envs] = times
            table.add_row(str(envs), f"{fused:.2f}", f"{plain:.2f}", f"{plain / fused:.1f}x")
    else:
        profile, stat, arms = ARMS[args.what]
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
