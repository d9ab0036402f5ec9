"""How long `puffctl runs compare` takes from exec to the table, on runs shaped like real ones.

    python bench/compare.py [--runs 4] [--steps 1000000] [--sps 5000] [--interval 0.5] [--trials 5] [--out FILE]

Writes `--runs` synthetic run directories whose events.jsonl has what a real CartPole run of
`--steps` agent steps leaves: a start event with the full resolved config, one progress event
per `--interval` seconds at `--sps` (losses, env stats, timing tree, utilization), checkpoints
and an end event. Then times the real CLI (a fresh process, as a user runs it) comparing them,
median of --trials. Prints a table and writes JSON (bench/results/compare.json unless --out).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from trainer.config import resolve  # noqa: E402


def write_run(root: Path, name: str, steps: int, sps: float, interval: float, seed: int) -> int:
    """One run directory with a realistic event stream; returns its number of progress events."""
    config = resolve({"train": {"seed": seed, "total_timesteps": steps}})
    path = root / name
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    per_event = max(int(sps * interval), 1)
    lines = [{"type": "start", "time": 0.0, "run_id": name, "config": config, "host": "bench", "device": "cpu",
              "git": {"commit": "c" * 40, "dirty": False, "diff_hash": None}, "params": 17_000, "total_steps": steps}]
    count = 0
    for step in range(per_event, steps + 1, per_event):
        count += 1
        progress = step / steps
        lines.append({"type": "progress", "time": step / sps, "run_id": name, "epoch": count, "agent_steps": step,
                      "total_steps": steps, "sps": sps * (1 + 0.05 * math.sin(count)), "uptime": step / sps,
                      "eta": (steps - step) / sps,
                      "perf": {"evaluate": {"total": 0.1, "forward": 0.04, "env": 0.04, "copy": 0.01, "misc": 0.01},
                               "train": {"total": 0.1, "forward": 0.05, "learn": 0.03, "copy": 0.01, "misc": 0.01}},
                      "losses": {"policy_loss": 0.01, "value_loss": 30 * (1 - progress), "entropy": 0.6, "old_approx_kl": 0.001,
                                 "approx_kl": 0.002, "clipfrac": 0.02, "importance": 1.0, "explained_variance": progress},
                      "env": {"episode_return": 20 + 480 * progress ** (1 + seed / 4), "episode_length": 20 + 480 * progress},
                      "util": {"cpu_percent": 90.0, "dram_percent": 10.0}})
        if count % 200 == 0:
            lines.append({"type": "checkpoint", "time": step / sps, "run_id": name, "path": f"checkpoints/epoch_{count:08d}.pt",
                          "epoch": count, "agent_steps": step})
    lines.append({"type": "end", "time": steps / sps, "run_id": name, "status": "completed", "reason": None,
                  "epoch": count, "agent_steps": steps, "metrics": {}})
    (path / "events.jsonl").write_text("".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines))
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--sps", type=float, default=5_000.0, help="the runs' SPS: with --interval, how many progress events")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between progress events (logger.progress_interval)")
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "compare.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        names = [f"run{i}" for i in range(args.runs)]
        events = [write_run(root, name, args.steps, args.sps, args.interval, i) for i, name in enumerate(names)]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "120"}
        command = [sys.executable, "-m", "puffctl", "runs", "compare", *names, "--runs-dir", str(root)]
        timings, cpu = [], []
        for _ in range(args.trials):
            start, used = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
            done = subprocess.run(command, env=env, capture_output=True, text=True)
            timings.append(time.perf_counter() - start)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu.append(after.ru_utime + after.ru_stime - used.ru_utime - used.ru_stime)
            if done.returncode != 0:
                raise SystemExit(done.stderr)
            (root / names[0] / ".summary.json").unlink(missing_ok=True)  # no cache: every trial reads every stream
        size = sum((root / name / "events.jsonl").stat().st_size for name in names)
    load = os.getloadavg()
    median = statistics.median(timings)
    print(f"{'runs':>5} {'steps':>10} {'progress events/run':>20} {'events MiB':>11} {'median s':>9} {'best s':>7} "
          f"{'CPU s (median)':>15}   (load {load[0]:.2f}, {os.cpu_count()} cores)")
    print(f"{args.runs:>5} {args.steps:>10,} {events[0]:>20,} {size / 2**20:>11.1f} {median:>9.3f} {min(timings):>7.3f} "
          f"{statistics.median(cpu):>15.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"runs": args.runs, "steps": args.steps, "progress_events": events, "bytes": size,
                                    "timings": timings, "cpu_seconds": cpu, "median": median, "loadavg": load}, indent=1) + "\n")


if __name__ == "__main__":
    main()
