"""Side-by-side throughput of two source trees (e.g. main and this branch): bench/sps.py's
measurement run alternately from each tree, in fresh processes, so machine noise falls on both.

    python bench/sps_ab.py --base /path/to/main/checkout [--rounds 5] [--seconds 4]
        [--policies mlp,lstm] [--shape 1024x64x16384] [--out FILE]

Prints per-round SPS and the median ratio this tree / base for each policy, by wall clock and by
CPU time (steps per CPU-second of the process: steadier than wall clock on a shared machine);
writes JSON (bench/results/sps_ab.json unless --out).
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


def one_run(tree: Path, policy: str, shape: str, seconds: float) -> dict[str, float]:
    """SPS by wall clock and by CPU time of one fresh `bench/sps.py` process of `tree` (1 thread, float32, one shape)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "sps.json"
        subprocess.run([sys.executable, str(tree / "bench" / "sps.py"), "--threads", "1", "--policies", policy,
                        "--precisions", "float32", "--shapes", shape, "--seconds", str(seconds), "--no-overhead",
                        "--out", str(out)], check=True, capture_output=True, cwd=tree,
                       env={**os.environ, "PYTHONPATH": str(tree)})
        result = json.loads(out.read_text())["results"][0]
        return {"sps": result["sps"], "cpu_sps": result["cpu_sps"]}


def ratio(pair: dict, key: str) -> float:
    """This tree's `key` (sps or cpu_sps) over the base's, in one round."""
    return pair["this"][key] / pair["base"][key]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, required=True, help="the other source tree (a checkout of main)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=4.0, help="measured time per run")
    parser.add_argument("--policies", default="mlp,lstm")
    parser.add_argument("--shape", default="1024x64x16384", help="num_envs x horizon x minibatch")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "sps_ab.json")
    args = parser.parse_args()
    console = Console()
    results = {}
    for policy in args.policies.split(","):
        rounds = []
        for index in range(args.rounds):
            order = [("this", ROOT), ("base", args.base)]
            if index % 2:
                order.reverse()  # alternate who goes first
            sps = {name: one_run(tree, policy, args.shape, args.seconds) for name, tree in order}
            rounds.append(sps)
            console.print(f"{policy} round {index + 1}: this {sps['this']['sps']:,.0f}  base {sps['base']['sps']:,.0f}  "
                          f"ratio {ratio(sps, 'sps'):.3f}, by CPU time {ratio(sps, 'cpu_sps'):.3f}  "
                          f"(load {os.getloadavg()[0]:.1f})")
        results[policy] = {"rounds": rounds,
                           "median_this": statistics.median(r["this"]["sps"] for r in rounds),
                           "median_base": statistics.median(r["base"]["sps"] for r in rounds),
                           "median_ratio": statistics.median(ratio(r, "sps") for r in rounds),
                           "median_cpu_ratio": statistics.median(ratio(r, "cpu_sps") for r in rounds)}
    table = Table(title=f"SPS, this tree vs {args.base} ({args.shape}, 1 thread, float32; "
                        f"load average {os.getloadavg()[0]:.1f})")
    for column in ("policy", "rounds", "median this", "median base", "median ratio", "min ratio", "max ratio",
                   "median ratio by CPU time"):
        table.add_column(column, justify="right")
    for policy, r in results.items():
        ratios = [ratio(x, "sps") for x in r["rounds"]]
        table.add_row(policy, str(len(ratios)), f"{r['median_this']:,.0f}", f"{r['median_base']:,.0f}",
                      f"{r['median_ratio']:.3f}", f"{min(ratios):.3f}", f"{max(ratios):.3f}", f"{r['median_cpu_ratio']:.3f}")
    console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"base": str(args.base), "shape": args.shape, "results": results,
                                    "load_average": os.getloadavg()}, indent=1))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
