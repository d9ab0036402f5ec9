"""Side by side with the peers: our trainer and PufferLib 3.0 at the same shapes (steps/s), and
our trainer and Stable-Baselines3 on CartPole-v1 to a mean return of 475 (wall time, agent steps).

Each measurement is its own process, run alternately (ours, peer, then peer, ours next round,
...), so machine drift hits both sides; the ratio is taken per round and the median of the
ratios is the result. Absolute numbers drift on a shared machine: compare ratios.

    python bench/peers.py [--peers pufferlib,sb3] [--rounds 3] [--seconds 8] [--threads 1,2]
                          [--policies lstm,mlp] [--shape 1024x64x16384] [--seeds 1,2,3]

The peers are not dependencies of the project; each lives in its own venv (defaults below,
or --pufferlib-venv / --sb3-venv), and one that is missing is skipped with a line saying how
to install it. Their drivers are in the peers folder (--peers-dir, default: shared/peers in
the nearest folder above the repository that has one). PufferLib runs in a scratch folder (it
writes files where it runs). Prints tables and writes JSON (bench/results/peers.json unless --out).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
PEERS_DIR = next((d / "shared" / "peers" for d in ROOT.parents if (d / "shared" / "peers").is_dir()),
                 ROOT.parent / "shared" / "peers")
VENVS = Path(os.environ.get("PUFFCTL_PEER_VENVS", "/work/venvs"))
INSTALL = {
    "pufferlib": "bash {peers}/install-pufferlib.sh {venv}",
    "sb3": "python3 -m venv {venv} && {venv}/bin/pip install torch==2.13.0 stable-baselines3",
}
CHECK = {"pufferlib": "import pufferlib.pufferl", "sb3": "import stable_baselines3"}


def peer_python(name: str, venv: Path, peers_dir: Path, console: Console) -> Path | None:
    """The peer venv's python when it imports the peer, else None after a line saying how to install it."""
    python = venv / "bin" / "python"
    with tempfile.TemporaryDirectory() as scratch:  # importing pufferlib links resources/ into the cwd
        ok = python.exists() and subprocess.run([str(python), "-c", CHECK[name]], cwd=scratch,
                                                capture_output=True).returncode == 0
    if not ok:
        how = INSTALL[name].format(peers=peers_dir, venv=venv)
        console.print(f"[yellow]skipping {name}: no working venv at {venv}; install it with: {how}[/]")
        return None
    return python


def run_json(command: list[str], cwd: Path | None = None) -> dict:
    """Run one measurement process, which writes its result as JSON where "{out}" stands in `command`."""
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "result.json"
        command = [str(out) if part == "{out}" else part for part in command]
        done = subprocess.run(command, cwd=cwd or scratch, capture_output=True, text=True)
        if done.returncode != 0 or not out.exists():
            tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
            raise RuntimeError(f"{Path(command[1]).name} failed (exit {done.returncode}): {tail}")
        return json.loads(out.read_text())


def ours_sps(policy: str, threads: int, shape: tuple[int, int, int], seconds: float) -> dict:
    """bench/sps.py's measurement of our loop (float32, Muon, one update epoch)."""
    envs, horizon, minibatch = shape
    result = run_json([sys.executable, str(ROOT / "bench" / "sps.py"), "--seconds", str(seconds),
                       "--threads", str(threads), "--policies", policy, "--precisions", "float32",
                       "--shapes", f"{envs}x{horizon}x{minibatch}", "--no-overhead", "--out", "{out}"], cwd=ROOT)
    return result["results"][0]


def pufferlib_sps(python: Path, peers_dir: Path, policy: str, threads: int, shape: tuple[int, int, int],
                  seconds: float) -> dict:
    """PufferLib 3.0's own loop (pufferl) on its C CartPole, same shape, float32, Muon, one update epoch."""
    envs, horizon, minibatch = shape
    return run_json([str(python), str(peers_dir / "pufferlib_sps.py"), "--threads", str(threads),
                     "--policy", policy, "--seconds", str(seconds), "--out", "{out}", "--",
                     "--train.device", "cpu", "--vec.backend", "Serial", "--vec.num-envs", "1",
                     "--env.num-envs", str(envs), "--train.bptt-horizon", str(horizon),
                     "--train.minibatch-size", str(minibatch), "--train.optimizer", "muon",
                     "--train.update-epochs", "1", "--train.precision", "float32"])


def ours_cartpole(seed: int, setting: str, time_limit: float) -> dict:
    """bench/learn.py's CartPole time-to-475 for one seed."""
    result = run_json([sys.executable, str(ROOT / "bench" / "learn.py"), "--only", "cartpole",
                       "--cartpole", setting, "--seeds", "1", "--first-seed", str(seed), "--time-limit", str(time_limit),
                       "--out", "{out}"], cwd=ROOT)
    return result["cartpole"]["runs"][0]


def sb3_cartpole(python: Path, peers_dir: Path, seed: int) -> dict:
    """Stable-Baselines3 PPO with RL-Zoo's CartPole-v1 settings, to the same 475 over 20 episodes."""
    return run_json([str(python), str(peers_dir / "sb3_cartpole.py"), "--seed", str(seed), "--out", "{out}"])


def pair(ours_first: bool, ours, peer) -> tuple[dict, dict]:
    """(ours(), peer()), run in the given order."""
    if ours_first:
        mine = ours()
        return mine, peer()
    theirs = peer()
    return ours(), theirs


def summarize_sps(policy: str, threads: int, pairs: list[tuple[dict, dict]]) -> dict:
    """Per-round ratios (ours / peer) of steps per wall second and per CPU second, and their medians."""
    ratios = [ours["sps"] / peer["sps"] for ours, peer in pairs]
    cpu_ratios = [ours["cpu_sps"] / peer["cpu_sps"] for ours, peer in pairs]
    return {"policy": policy, "threads": threads, "ours": [o for o, _ in pairs], "pufferlib": [p for _, p in pairs],
            "ratios": ratios, "median_ratio": statistics.median(ratios), "cpu_ratios": cpu_ratios,
            "median_cpu_ratio": statistics.median(cpu_ratios),
            "median_sps": statistics.median(o["sps"] for o, _ in pairs),
            "median_pufferlib_sps": statistics.median(p["sps"] for _, p in pairs),
            "params": pairs[0][0].get("params"), "pufferlib_params": pairs[0][1].get("params")}


def sps_table(entries: list[dict], shape: str) -> Table:
    table = Table(title=f"steps/s against PufferLib 3.0 (CartPole, {shape}, float32, Muon, 1 update epoch)")
    for column in ("policy", "threads", "params ours / puffer", "ours SPS", "PufferLib SPS", "ratio per round",
                   "median ratio", "median steps/CPU-s ratio"):
        table.add_column(column, justify="right")
    for e in entries:
        table.add_row(e["policy"], str(e["threads"]), f"{e['params']:,} / {e['pufferlib_params']:,}",
                      f"{e['median_sps']:,.0f}", f"{e['median_pufferlib_sps']:,.0f}",
                      " ".join(f"{r:.2f}" for r in e["ratios"]), f"{e['median_ratio']:.2f}",
                      f"{e['median_cpu_ratio']:.2f}")
    return table


def summarize_cartpole(runs: list[dict], setting: str) -> dict:
    """Medians over every run of each side, and the median per-run ratio (ours / SB3)."""
    solved = [r for r in runs if r["ours"]["seconds"] and r["sb3"]["seconds"]]
    return {"setting": setting, "runs": runs, "unsolved": len(runs) - len(solved),
            "median_seconds": statistics.median(r["ours"]["seconds"] for r in solved) if solved else None,
            "median_sb3_seconds": statistics.median(r["sb3"]["seconds"] for r in solved) if solved else None,
            "median_steps": statistics.median(r["ours"]["agent_steps"] for r in runs),
            "median_sb3_steps": statistics.median(r["sb3"]["agent_steps"] for r in runs),
            "median_time_ratio": statistics.median(r["ours"]["seconds"] / r["sb3"]["seconds"] for r in solved)
            if solved else None}


def cartpole_table(summary: dict) -> Table:
    table = Table(title=f"CartPole-v1 to a mean return of 475 over 20 episodes: ours ({summary['setting']}) "
                        f"against Stable-Baselines3 (RL-Zoo PPO)")
    for column in ("", "median wall s", "median agent steps"):
        table.add_column(column, justify="right")
    fmt = lambda x, f: "unsolved" if x is None else format(x, f)  # noqa: E731
    table.add_row("ours", fmt(summary["median_seconds"], ".2f"), f"{summary['median_steps']:,.0f}")
    table.add_row("SB3", fmt(summary["median_sb3_seconds"], ".2f"), f"{summary['median_sb3_steps']:,.0f}")
    table.add_row("ours / SB3 (median per run)", fmt(summary["median_time_ratio"], ".3f"),
                  f"{summary['median_steps'] / summary['median_sb3_steps']:.2f}")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peers", default="pufferlib,sb3", help="which comparisons to run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per configuration")
    parser.add_argument("--seconds", type=float, default=8.0, help="measured time per SPS run (after 2 warm-up epochs)")
    parser.add_argument("--threads", default="1,2", help="torch CPU thread counts (both sides)")
    parser.add_argument("--policies", default="lstm,mlp", help="lstm = 128 encoder + LSTM-128; mlp = 128 encoder")
    parser.add_argument("--shape", default="1024x64x16384", help="envs x bptt horizon x minibatch")
    parser.add_argument("--seeds", default="1,2,3", help="CartPole seeds, each run once per round")
    parser.add_argument("--cartpole", default="baseline", choices=("baseline", "efficient"),
                        help="our CartPole setting (bench/learn.py --cartpole)")
    parser.add_argument("--time-limit", type=float, default=1200.0,
                        help="wall-clock cap per CartPole run of ours (s; SB3 runs have none)")
    parser.add_argument("--peers-dir", type=Path, default=PEERS_DIR)
    parser.add_argument("--pufferlib-venv", type=Path, default=VENVS / "pufferlib")
    parser.add_argument("--sb3-venv", type=Path, default=VENVS / "sb3")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "peers.json")
    args = parser.parse_args()
    console = Console(width=max(Console().width, 150))
    peers = set(args.peers.split(","))
    shape = tuple(int(x) for x in args.shape.split("x"))
    results: dict = {"load_average_before": os.getloadavg(), "shape": args.shape, "rounds": args.rounds}

    python = peer_python("pufferlib", args.pufferlib_venv, args.peers_dir, console) if "pufferlib" in peers else None
    if python is not None:
        results["pufferlib"] = []
        for threads in (int(t) for t in args.threads.split(",")):
            for policy in args.policies.split(","):
                pairs = [pair(round_ % 2 == 0, lambda: ours_sps(policy, threads, shape, args.seconds),
                              lambda: pufferlib_sps(python, args.peers_dir, policy, threads, shape, args.seconds))
                         for round_ in range(args.rounds)]
                entry = summarize_sps(policy, threads, pairs)
                console.print(f"{policy} {threads} thread(s): ratios {['%.2f' % r for r in entry['ratios']]}, "
                              f"median {entry['median_ratio']:.2f}")
                results["pufferlib"].append(entry)
        console.print(sps_table(results["pufferlib"], args.shape))

    python = peer_python("sb3", args.sb3_venv, args.peers_dir, console) if "sb3" in peers else None
    if python is not None:
        seeds = [int(s) for s in args.seeds.split(",")]
        runs = []
        for round_ in range(args.rounds):
            for i, seed in enumerate(seeds):
                ours, peer = pair((round_ * len(seeds) + i) % 2 == 0,
                                  lambda: ours_cartpole(seed, args.cartpole, args.time_limit),
                                  lambda: sb3_cartpole(python, args.peers_dir, seed))
                console.print(f"CartPole round {round_ + 1} seed {seed}: ours {ours['seconds']} s "
                              f"{ours['agent_steps']:,} steps; SB3 {peer['seconds']} s {peer['agent_steps']:,} steps")
                runs.append({"round": round_ + 1, "seed": seed, "ours": ours, "sb3": peer})
        results["sb3"] = summarize_cartpole(runs, args.cartpole)
        console.print(cartpole_table(results["sb3"]))

    results["load_average_after"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    console.print(f"load average {results['load_average_before'][0]:.2f} before, "
                  f"{results['load_average_after'][0]:.2f} after; wrote {args.out}")


if __name__ == "__main__":
    main()
