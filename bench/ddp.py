"""SPS of one run on N ranks (torchrun, `python -m trainer.distributed`) against one process, with
the same per-rank config (each rank steps env.num_envs envs and collects its own batch).

Rounds alternate three arms so a shared machine's load hits them alike: one process, N ranks, and
N independent one-process runs at once ("N apart": they share no gradients, so their summed SPS is
what this machine gives N processes; N ranks are held to that ceiling, not to N x). SPS is the
steady state from each run's own progress events (agent steps of every rank between the first
progress past `--warmup` of the steps and the end, over that wall time: imports, rendezvous and env
construction excluded). CPU is the user+sys seconds the process trees (torchrun and its ranks)
spent per 1K steps over the same stretch, sampled while they run: "speedup, a core each"
(N x one process's CPU per step / N ranks' CPU per step) is what N ranks would reach with a core
each, which wall-clock SPS on a loaded machine cannot show.

    python bench/ddp.py [--profile baseline] [--set KEY=VALUE ...] [--steps 1000000] [--nproc 2]
                        [--rounds 5] [--warmup 0.25] [--out FILE]

Prints a table and writes JSON (bench/results/ddp.json unless --out). The target (issue 15):
N=2 ranks at least 1.6x one process; "2 apart" says what this machine allows.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from puffctl import profiles  # noqa: E402
from trainer import distributed  # noqa: E402

# CartPole with more envs than the quick-start profile, so an epoch is real work on each rank.
DEFAULT_SETS = ["env.num_envs=128", "train.minibatch_size=2048", "train.checkpoint_interval=0"]


def tree_cpu(process, seen: dict[int, float]) -> None:
    """Record in `seen` the user+sys CPU seconds of a process and its children (the ranks, for
    torchrun) so far: each process's last reading, so one that has exited still counts."""
    import psutil

    try:
        family = [process, *process.children(recursive=True)]
    except psutil.NoSuchProcess:  # it has exited: its last reading stands
        family = []
    for proc in family:
        try:
            times = proc.cpu_times()
            seen[proc.pid] = times.user + times.system
        except psutil.NoSuchProcess:
            pass


def progress_of(path: Path) -> list[dict]:
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    return [event for line in lines if line.endswith("}") and (event := json.loads(line))["type"] == "progress"]


def launch(config: dict, ranks: int, run_dir: Path) -> subprocess.Popen:
    """Start a run of `config` on `ranks` ranks in `run_dir` (its events in run_dir/run)."""
    run_dir.mkdir(parents=True)
    config = {**config, "train": {**config["train"], "world_size": ranks}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    with (run_dir / "stderr.log").open("w") as stderr:
        return subprocess.Popen(distributed.command(ranks, ["--config", str(run_dir / "config.yaml"), "--run-dir", str(run_dir / "run")]),
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr, env={**os.environ, "PYTHONPATH": str(ROOT)})


def one_run(config: dict, ranks: int, warmup: float, workdir: Path, *, apart: int = 1) -> dict:
    """Train `config` on `ranks` ranks (or, with `apart` N, N one-rank runs side by side, which share
    nothing: the machine's own ceiling for N processes): steady-state SPS (summed over the runs), and
    the CPU seconds the process trees spent per 1K steps, both after the first `warmup` of the steps."""
    import psutil

    run_dirs = [Path(tempfile.mkdtemp(prefix=f"ddp-{ranks}x{apart}-", dir=workdir)) / "r" for _ in range(apart)]
    processes = [launch(config, ranks, run_dir) for run_dir in run_dirs]
    watched = [psutil.Process(process.pid) for process in processes]
    warmup = warmup * config["train"]["total_timesteps"]
    samples: list[tuple[int, float]] = []  # (agent steps of the newest progress events, tree CPU s)
    seen: dict[int, float] = {}
    while any(process.poll() is None for process in processes):
        progress = [progress_of(run_dir / "run" / "events.jsonl") for run_dir in run_dirs]
        if all(events and events[-1]["agent_steps"] >= warmup for events in progress):
            for process in watched:
                tree_cpu(process, seen)
            samples.append((sum(events[-1]["agent_steps"] for events in progress), sum(seen.values())))
        time.sleep(0.2)
    for process, run_dir in zip(processes, run_dirs):
        if process.returncode != 0:
            raise SystemExit(f"a {ranks}-rank run failed:\n{(run_dir / 'stderr.log').read_text()[-2000:]}")
    sps, steps = 0.0, 0
    for run_dir in run_dirs:
        progress = progress_of(run_dir / "run" / "events.jsonl")
        first, last = next(event for event in progress if event["agent_steps"] >= warmup), progress[-1]
        sps += (last["agent_steps"] - first["agent_steps"]) / (last["time"] - first["time"])
        steps += last["agent_steps"]
    (steps0, cpu0), (steps1, cpu1) = samples[0], samples[-1]
    return {"ranks": ranks, "apart": apart, "sps": sps,
            "cpu_s_per_1k_steps": 1000 * (cpu1 - cpu0) / (steps1 - steps0) if steps1 > steps0 else None,
            "steps": steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="baseline")
    parser.add_argument("--set", dest="sets", action="append", default=None, metavar="KEY=VALUE",
                        help=f"config overrides (default: {' '.join(DEFAULT_SETS)})")
    parser.add_argument("--steps", type=int, default=1_000_000, help="agent steps of the one-process run; N ranks run N times as many")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (one process varies by a third from run to run on a 2-core VM)")
    parser.add_argument("--warmup", type=float, default=0.25, help="fraction of the steps left out of the steady state")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "ddp.json")
    args = parser.parse_args()
    sets = DEFAULT_SETS if args.sets is None else args.sets
    config = profiles.build_config(profiles.load(args.profile), sets=sets, steps=args.steps)
    load_before = os.getloadavg()
    arms = {"1": (1, 1), f"{args.nproc} ranks": (args.nproc, 1), f"{args.nproc} apart": (1, args.nproc)}
    rounds: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-ddp-") as workdir:
        for index in range(args.rounds):
            for arm, (ranks, apart) in arms.items():
                scaled = {**config, "train": {**config["train"], "total_timesteps": args.steps * ranks}}
                result = {"arm": arm, **one_run(scaled, ranks, args.warmup, Path(workdir), apart=apart), "round": index + 1}
                rounds.append(result)
                print(f"round {index + 1}: {arm} {result['sps']:,.0f} SPS", file=sys.stderr)
    load_after = os.getloadavg()
    median = {arm: statistics.median(r["sps"] for r in rounds if r["arm"] == arm) for arm in arms}
    cpu = {arm: statistics.median(r["cpu_s_per_1k_steps"] for r in rounds if r["arm"] == arm and r["cpu_s_per_1k_steps"])
           for arm in arms}
    ranked, apart = f"{args.nproc} ranks", f"{args.nproc} apart"
    speedup = median[ranked] / median["1"]
    ceiling = median[apart] / median["1"]
    # what N ranks would reach with a core each, from CPU time alone (the load's share taken out)
    cpu_bound = args.nproc * cpu["1"] / cpu[ranked]
    table = Table(title=f"one run on {args.nproc} ranks vs one process ({args.profile}, {' '.join(sets)}; "
                        f"{os.cpu_count()} CPUs, load {load_before[0]:.1f} -> {load_after[0]:.1f})")
    for column in ("", "median SPS", "rounds' SPS", "CPU s / 1K steps", "speedup"):
        table.add_column(column, justify="right")
    for arm in arms:
        table.add_row(arm, f"{median[arm]:,.0f}", " ".join(f"{r['sps']:,.0f}" for r in rounds if r["arm"] == arm),
                      f"{cpu[arm]:.3f}", f"{median[arm] / median['1']:.2f}x")
    Console().print(table)
    print(f"{apart}: {args.nproc} independent one-process runs at once, the machine's ceiling for {args.nproc} processes "
          f"({ceiling:.2f}x); {ranked} reach {speedup / ceiling:.0%} of it. Speedup a core each, from CPU time: {cpu_bound:.2f}x")
    print(f"target: {args.nproc} ranks >= 1.6x one process: {'met' if speedup >= 1.6 else 'NOT met'} ({speedup:.2f}x)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "profile": args.profile, "sets": sets, "steps": args.steps, "nproc": args.nproc, "cpus": os.cpu_count(),
        "load_before": load_before, "load_after": load_after, "rounds": rounds, "median_sps": median,
        "cpu_s_per_1k_steps": cpu, "speedup": speedup, "ceiling": ceiling, "of_ceiling": speedup / ceiling,
        "speedup_a_core_each": cpu_bound}, indent=1) + "\n")

if __name__ == "__main__":
    main()
