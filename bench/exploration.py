"""E3B and DIAYN against the same PPO without them: the issue's targets, quickly, in one process.

Each row trains a profile (with `--set`-style overrides) for a fixed step budget and reports
the mean of an episode stat over the last `--tail` epochs (maze: `solved`; snake: `score`),
the SPS of the whole run, and the algorithm's own numbers (E3B's intrinsic share and seconds,
DIAYN's discriminator accuracy against chance). The full 5-seed comparison with confidence
intervals is `puffctl ablate run bench/ablations/exploration-*.yaml`; this is its quick probe.

    python bench/exploration.py maze [--seeds 1 2] [--steps 1000000]
    python bench/exploration.py snake [--seeds 1] [--steps 500000]
    python bench/exploration.py sps [--pairs e3b diayn] [--rounds 5] [--seconds 10]   # throughput cost
    python bench/exploration.py step [--sizes 256 1024] [--dim 128] [--horizon 64] [--rounds 5]   # E3B alone
    python bench/exploration.py snake --arm "k4 full=train.diayn_archive=4,train.diayn_features=full"

`sps` trains each pair's baseline and algorithm arms side by side in one process, in rounds of
`--seconds` per arm whose order rotates (so machine load hits every arm alike), and reports the
median over rounds of 1 - sps_arm / sps_baseline, by wall clock and by the process's CPU time
(steadier on a shared machine). The e3b pair's arms: the default (bonuses once per collected segment)
and `train.e3b_batch=step` (the fused csrc/ op every step); e3b-lstm: the same profile with the
LSTM-128 policy (PufferLib's default shape), whose 128-wide output is E3B's embedding.
`step` times E3B alone over the same `--horizon` steps, in alternating rounds (medians of ms per
step, wall clock and CPU time): `E3B.segment` once, the fused csrc/ op `E3B.step` per step, and
the pure-torch `E3B.step` per step.

Prints a table and writes JSON (bench/results/exploration-<what>.json unless --out).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
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
    "snake": ("diayn", "score", {"baseline": ["train.diayn_coef=0"], "diayn": [],
                                 "diayn flat 0.07": ["train.diayn_pool=flat", "train.diayn_coef=0.07"]}),
}
SPS_PAIRS = {  # pair -> (env, profile, arms: label -> --set overrides); the first arm is the baseline
    "e3b": ("maze, hidden 128", "e3b", {"baseline": ["train.e3b_coef=0"], "e3b": [], "e3b per step": ["train.e3b_batch=step"]}),
    # PufferLib's default policy shape (128 encoder + LSTM 128): E3B embeds the LSTM's 128-wide output
    "e3b-lstm": ("maze, LSTM 128", "e3b", {"baseline": ["train.e3b_coef=0", "policy.lstm=true"],
                                           "e3b": ["policy.lstm=true"]}),
    "diayn": ("snake", "diayn", {"baseline": ["train.diayn_coef=0"], "diayn": []}),
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


def epochs_for(trainer: Trainer, seconds: float) -> tuple[int, float, float]:
    """Collect + train epochs for about `seconds`: (agent steps, wall seconds, CPU seconds of this process)."""
    start, cpu, steps = time.perf_counter(), time.process_time(), trainer.agent_steps
    while time.perf_counter() - start < seconds:
        trainer.evaluate(), trainer.train()
    return trainer.agent_steps - steps, time.perf_counter() - start, time.process_time() - cpu


def rotated(items: Sequence[str], by: int) -> list[str]:
    """`items` starting at position `by` (mod its length): round `by`'s order, so each arm runs first in turn."""
    by %= len(items)
    return [*items[by:], *items[:by]]


def sps_arms(profile: str, arms: dict[str, list[str]], rounds: int, seconds: float) -> dict:
    """Every arm's trainer, in rounds whose order rotates, after one warm-up epoch each; per-round SPS
    (wall clock and per CPU second) and each arm's cost against the first arm, round by round."""
    trainers = {label: trainer_for(profile, sets, 1, None) for label, sets in arms.items()}
    for trainer in trainers.values():
        trainer.evaluate(), trainer.train()
    sps: dict[str, list[float]] = {label: [] for label in trainers}
    cpu_sps: dict[str, list[float]] = {label: [] for label in trainers}
    labels = list(trainers)
    for round_ in range(rounds):
        for label in rotated(labels, round_):
            steps, wall, cpu = epochs_for(trainers[label], seconds)
            sps[label].append(steps / wall)
            cpu_sps[label].append(steps / cpu)
    for trainer in trainers.values():
        trainer.close()
    base = labels[0]
    costs = {label: [1 - a / b for a, b in zip(sps[label], sps[base])] for label in labels[1:]}
    cpu_costs = {label: [1 - a / b for a, b in zip(cpu_sps[label], cpu_sps[base])] for label in labels[1:]}
    return {"sps": sps, "sps_per_cpu_second": cpu_sps, "costs": costs, "cpu_costs": cpu_costs,
            "median_cost": {label: statistics.median(c) for label, c in costs.items()},
            "median_cpu_cost": {label: statistics.median(c) for label, c in cpu_costs.items()}}


STEP_ARMS = ("segment", "fused step", "torch step")


def step_times(envs: int, dim: int, horizon: int, rounds: int, segments: int) -> dict[str, dict[str, list[float]]]:
    """ms per step (wall clock and CPU time) of E3B over `segments` segments of `horizon` steps (normalised
    bonus, resets at ~1/64 of the steps): `E3B.segment` once per segment, and `E3B.step` per step on the
    fused op and on the torch math."""
    from trainer.algorithms.e3b import E3B

    gen = torch.Generator().manual_seed(0)
    phis = torch.tanh(torch.randn(segments, envs, horizon, dim, generator=gen))
    firsts = torch.rand(segments, envs, horizon, generator=gen) < 1 / 64
    bonuses = {"segment": E3B(envs, dim, batch="segment"), "fused step": E3B(envs, dim, backend="compiled"),
               "torch step": E3B(envs, dim, backend="torch")}
    times: dict[str, dict[str, list[float]]] = {arm: {"wall": [], "cpu": []} for arm in STEP_ARMS}
    for round_ in range(rounds):
        for arm in rotated(STEP_ARMS, round_):
            bonus = bonuses[arm]
            start, cpu = time.perf_counter(), time.process_time()
            for phi, first in zip(phis, firsts):
                if arm == "segment":
                    bonus.segment(phi, first)
                else:
                    for t in range(horizon):
                        bonus.step(phi[:, t], first[:, t])
            steps = segments * horizon
            times[arm]["wall"].append(1e3 * (time.perf_counter() - start) / steps)
            times[arm]["cpu"].append(1e3 * (time.process_time() - cpu) / steps)
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
    parser.add_argument("--horizon", type=int, default=64, help="step: segment length T (the profile's bptt_horizon)")
    parser.add_argument("--threads", type=int, default=1, help="step: torch threads")
    parser.add_argument("--arm", action="append", default=[], metavar="LABEL=KEY=VALUE,...",
                        help="maze/snake: run this arm (overrides on the profile, comma-separated) instead of the "
                             "default arms; repeatable")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    console = Console(width=140)
    out = args.out or ROOT / "bench" / "results" / f"exploration-{args.what}.json"
    report: dict = {"what": args.what, "cpu_count": os.cpu_count(), "load_average_1m_at_start": os.getloadavg()[0]}

    if args.what == "sps":
        title = f"SPS, collection + training ({args.rounds} rotating rounds of {args.seconds:.0f} s per arm)"
        table = Table(title=title)
        for column in ("arm", "SPS (median)", "cost, median of rounds", "cost per round", "cost by CPU time"):
            table.add_column(column, justify="left" if column == "arm" else "right")
        report["pairs"] = {}
        for pair in args.pairs:
            label, profile, arms = SPS_PAIRS[pair]
            result = sps_arms(profile, arms, args.rounds, args.seconds)
            report["pairs"][pair] = result
            for arm in arms:
                cost = result["costs"].get(arm)
                table.add_row(f"{arm} ({label})", f"{statistics.median(result['sps'][arm]):,.0f}",
                              "" if cost is None else f"{100 * result['median_cost'][arm]:.1f}%",
                              "" if cost is None else " ".join(f"{100 * c:.0f}%" for c in cost),
                              "" if cost is None else f"{100 * result['median_cpu_cost'][arm]:.1f}%")
    elif args.what == "step":
        torch.set_num_threads(args.threads)
        table = Table(title=f"E3B alone, H={args.dim}, T={args.horizon}, {args.threads} thread(s), "
                            f"ms per step, median of {args.rounds} rounds (wall / CPU time)")
        table.add_column("envs", justify="right")
        for arm in STEP_ARMS:
            table.add_column(arm, justify="right")
        table.add_column("fused step / segment (CPU)", justify="right")
        report["step"] = {}
        for envs in args.sizes:
            times = step_times(envs, args.dim, args.horizon, args.rounds, segments=max(2, 8192 // (envs * args.horizon)))
            report["step"][envs] = times
            cpu = {arm: statistics.median(times[arm]["cpu"]) for arm in STEP_ARMS}
            table.add_row(str(envs), *(f"{statistics.median(times[arm]['wall']):.2f} / {cpu[arm]:.2f}" for arm in STEP_ARMS),
                          f"{cpu['fused step'] / cpu['segment']:.1f}x")
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
