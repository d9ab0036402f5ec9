"""How long `puffctl` takes to answer `--help` and a shell-completion request, next to `python -c pass`.

    python bench/cli_startup.py [--runs 30] [--out FILE]

Each case is a fresh process, run --runs times interleaved (so load drifts hit all cases alike);
reports the median and best wall time and the median as a ratio to `python -c pass`. The
completion request is what bash sends on Tab after `puffctl ` (the first word) and after
`puffctl runs ` (a group's subcommands, which loads that one group).
The root help and the first-word answer are kept after their first rendering (puffctl/entry.py);
"not kept" renders the help every time (an unwritable cache), as a first call does.
Prints a table and writes JSON (bench/results/cli_startup.json unless --out).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENTRY = "import sys; sys.argv[0] = 'puffctl'; from puffctl.entry import main; main()"


def cases() -> dict[str, tuple[list[str], dict]]:
    """name -> (command, extra environment): what a user's shell runs."""
    def complete(words: str, cword: int) -> dict:
        return {"_PUFFCTL_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(cword)}

    python = [sys.executable]
    return {
        "python -c pass": (python + ["-c", "pass"], {}),
        "puffctl --help": (python + ["-c", ENTRY, "--help"], {}),
        "puffctl --help, not kept": (python + ["-c", ENTRY, "--help"], {"PUFFCTL_CACHE_DIR": "/proc/no-cache"}),
        "complete `puffctl `": (python + ["-c", ENTRY], complete("puffctl ", 1)),
        "complete `puffctl runs `": (python + ["-c", ENTRY], complete("puffctl runs ", 2)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "cli_startup.json")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    times: dict[str, list[float]] = {name: [] for name in cases()}
    for _ in range(args.runs):
        for name, (command, extra) in cases().items():
            start = time.perf_counter()
            subprocess.run(command, env={**env, **extra}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["python -c pass"])
    load = os.getloadavg()
    print(f"{'case':30} {'median s':>9} {'best s':>8} {'x python':>9}   (load {load[0]:.2f}, {os.cpu_count()} cores, {args.runs} runs)")
    result = {"runs": args.runs, "loadavg": load, "cases": {}}
    for name, samples in times.items():
        median = statistics.median(samples)
        print(f"{name:30} {median:9.3f} {min(samples):8.3f} {median / base:9.2f}")
        result["cases"][name] = {"median": median, "best": min(samples), "ratio": median / base}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
