"""The run store under faults, at volume (issue 16's targets; the suite runs a few of each).

kills: SIGKILL a CartPole run (checkpoint_interval 1, progress every epoch) at random moments
(startup: imports, lock, checkpoint load; training; inside a checkpoint write), resume it, and
repeat; a run that completes is checked and a new one begins. Counted: resumes, resumes that
did not start from the newest intact checkpoint, and over every completed run's event stream
the lost and duplicated epochs (docs/reliability.md: a resumed start at epoch E supersedes the
earlier progress past E) and epochs whose losses differ from an uninterrupted run.

races: `puffctl train --resume RUN --detach` twice at once on a lost run; counted: races where
not exactly one started, and races where two trainers ran (more than one start event, or two
trainer pids). The started trainer is then SIGKILLed for the next race.

    python bench/faults.py [--kills 200] [--races 50] [--epochs 60] [--seed 0] [--out FILE]

Prints a table and writes JSON (bench/results/faults.json unless --out).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "tooling"))

import faults  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from trainer import runlock  # noqa: E402


def bench_kills(directory: Path, kills: int, epochs: int, rng: random.Random, console: Console) -> dict:
    directory.mkdir(parents=True)
    overrides = {"train": {"total_timesteps": 256 * epochs}}
    config = faults.write_config(directory, overrides)
    straight = faults.run_trainer(config, directory / "straight")
    assert straight.returncode == 0, straight.stderr
    reference = faults.losses_by_epoch(faults.read_events(directory / "straight"))
    totals = {"kills": 0, "in_checkpoint_write": 0, "resumes": 0, "resumes_ok": 0, "refused_or_crashed": 0,
              "wrong_epoch": 0, "runs_completed": 0, "lost_epochs": 0, "duplicated_epochs": 0,
              "differing_epochs": 0, "rerun_progress_events": 0, "moments": {m: 0 for m in faults.MOMENTS},
              "failures": []}
    run_index, started = 0, time.monotonic()
    run_dir = directory / f"run{run_index}"
    while totals["kills"] < kills:
        if completed(run_dir):  # the last kill landed after its end event: the run is whole, check it
            add_checked(totals, faults.check_stream(faults.read_events(run_dir), reference, epochs))
            run_index += 1
            run_dir = directory / f"run{run_index}"
        kill = faults.kill_once(config, run_dir, rng, rng.choice(faults.MOMENTS))
        if kill["resume"]:
            totals["resumes"] += 1
            healthy = kill["returncode"] in (0, -signal.SIGKILL)
            right = kill["start_epoch"] in (None, kill["expected_epoch"])
            totals["resumes_ok"] += healthy and right
            totals["refused_or_crashed"] += not healthy
            totals["wrong_epoch"] += not right
            if not (healthy and right):
                totals["failures"].append({**kill, "log_tail": log_tail(run_dir)})
        if kill["killed"]:
            totals["kills"] += 1
            totals["moments"][kill["moment"]] += 1
            totals["in_checkpoint_write"] += kill["in_checkpoint_write"]
            if totals["kills"] % 10 == 0:
                console.print(f"  {totals['kills']}/{kills} kills, {time.monotonic() - started:.0f} s", highlight=False)
            continue
        add_checked(totals, faults.check_stream(faults.read_events(run_dir), reference, epochs))  # it completed
        run_index += 1
        run_dir = directory / f"run{run_index}"
    if faults.newest_intact_epoch(run_dir) is not None:  # finish the last run so its stream is checked too
        done = faults.run_trainer(config, run_dir, "--resume")
        totals["resumes"] += 1
        totals["resumes_ok"] += done.returncode == 0
        totals["refused_or_crashed"] += done.returncode != 0
        if done.returncode != 0:
            totals["failures"].append({"moment": "final resume", "returncode": done.returncode,
                                       "log_tail": done.stderr[-2000:]})
        add_checked(totals, faults.check_stream(faults.read_events(run_dir), reference, epochs))
    totals["seconds"] = time.monotonic() - started
    return totals


def completed(run_dir: Path) -> bool:
    """The run's stream ends with a completed end event."""
    ends = [event for event in faults.read_events(run_dir) if event["type"] == "end"] if run_dir.is_dir() else []
    return bool(ends) and ends[-1].get("status") == "completed"


def log_tail(run_dir: Path, lines: int = 30) -> str:
    """The end of the trainer's output for `run_dir` (kept in the JSON for a failed resume)."""
    try:
        return "\n".join((run_dir.parent / f"{run_dir.name}.log").read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def add_checked(totals: dict, checked: dict) -> None:
    """Add one completed run's stream check to the totals."""
    totals["runs_completed"] += 1
    for key in ("lost", "duplicated", "differing"):
        totals[f"{key}_epochs"] += len(checked[key])
    totals["rerun_progress_events"] += checked["rerun_progress_events"]


def bench_races(directory: Path, races: int, console: Console) -> dict:
    directory.mkdir(parents=True)
    config = faults.write_config(directory, {"train": {"total_timesteps": 256 * 10**6}})
    run_dir = directory / "raced"
    process = faults.trainer(config, run_dir)
    faults.wait_for(lambda: (run_dir / "checkpoints" / "epoch_00000002.pt").is_file(), timeout=900, what="a checkpoint")
    process.send_signal(signal.SIGKILL)
    process.wait()
    totals = {"races": 0, "exactly_one_started": 0, "two_trainers": 0, "refusal_named_holder": 0, "unnamed": []}
    started_at = time.monotonic()
    args = ("train", "--resume", run_dir.name, "--detach", "--runs-dir", str(directory))
    for race in range(races):
        before = faults.starts(run_dir)
        racers = [faults.puffctl(*args) for _ in range(2)]
        results = [(racer.wait(timeout=300), *racer.communicate()) for racer in racers]
        winners = [result for result in results if result[0] == 0]
        losers = [result for result in results if result[0] != 0]
        totals["races"] += 1
        totals["exactly_one_started"] += len(winners) == 1
        unnamed = [result[2][-500:] for result in losers if not ("is in use by" in result[2] and " pid " in result[2])]
        totals["refusal_named_holder"] += not unnamed
        totals["unnamed"] += unnamed
        trainer = json.loads((run_dir / "launch.json").read_text())["pid"]
        faults.wait_for(lambda: faults.starts(run_dir) > before or not alive(trainer), timeout=900, what="the trainer's start")
        time.sleep(0.2)  # a second trainer, if any had started, would write its start event too
        held = runlock.holder(run_dir) or {}
        two = len(winners) > 1 or faults.starts(run_dir) - before > 1 or held.get("pid") not in (None, trainer)
        totals["two_trainers"] += two
        try:
            os.kill(trainer, signal.SIGKILL)
        except ProcessLookupError:
            pass
        faults.wait_for(lambda: runlock.holder(run_dir) is None, what="the lock to be released")
        if (race + 1) % 10 == 0:
            console.print(f"  {race + 1}/{races} races, {time.monotonic() - started_at:.0f} s", highlight=False)
    totals["seconds"] = time.monotonic() - started_at
    return totals


def alive(pid: int) -> bool:
    from puffctl.runs import pid_alive

    return pid_alive(pid)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=200)
    parser.add_argument("--races", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=60, help="epochs of each killed run (256 agent steps each)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "faults.json")
    args = parser.parse_args()
    console = Console()
    rng = random.Random(args.seed)
    results: dict = {"args": {key: str(value) for key, value in vars(args).items()}, "cpus": os.cpu_count(),
                     "load_before": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="puffctl-faults-") as scratch:
        if args.kills:
            console.print(f"kills: {args.kills} SIGKILLs and resumes")
            results["kills"] = bench_kills(Path(scratch) / "kills", args.kills, args.epochs, rng, console)
        if args.races:
            console.print(f"races: {args.races} racing double resumes")
            results["races"] = bench_races(Path(scratch) / "races", args.races, console)
    results["load_after"] = os.getloadavg()
    table = Table(title="run store under faults")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("target", justify="right")
    if "kills" in results:
        k = results["kills"]
        rows = [("SIGKILLs", k["kills"], f"{args.kills}"),
                ("  of them inside a checkpoint write", k["in_checkpoint_write"], "> 0"),
                ("  moments (startup/training/checkpoint)", "/".join(str(k["moments"][m]) for m in faults.MOMENTS), ""),
                ("resumes", k["resumes"], ""),
                ("  successful (from the newest intact checkpoint)", k["resumes_ok"], "all"),
                ("runs completed and checked", k["runs_completed"], ""),
                ("lost epochs", k["lost_epochs"], "0"),
                ("duplicated epochs", k["duplicated_epochs"], "0"),
                ("epochs with losses unlike the uninterrupted run", k["differing_epochs"], "0"),
                ("re-run epochs superseded by a resumed start", k["rerun_progress_events"], ""),
                ("seconds", f"{k['seconds']:.0f}", "")]
        for row in rows:
            table.add_row(*(str(cell) for cell in row))
    if "races" in results:
        r = results["races"]
        for row in [("racing double resumes", r["races"], f"{args.races}"),
                    ("  exactly one started", r["exactly_one_started"], "all"),
                    ("  refusal named the holder's pid", r["refusal_named_holder"], "all"),
                    ("  two trainers at once", r["two_trainers"], "0"),
                    ("  seconds", f"{r['seconds']:.0f}", "")]:
            table.add_row(*(str(cell) for cell in row))
    console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
