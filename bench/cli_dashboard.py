"""How fast `puffctl train` shows its table, and what the live table costs the training run.

    python bench/cli_dashboard.py [--profile baseline] [--steps 1000000] [--trials 3] [--out FILE]

Runs the real CLI in a pseudo-terminal (so the rich.live table is drawn) and, alternately, with
--no-dashboard, on the same profile, seed and run length. Reports:
- first table: seconds from exec to the table's first bytes on the terminal;
- first data: seconds from exec to the first progress event in events.jsonl;
- training SPS: agent steps / (end event time - start event time), the trainer's throughput
  without its start-up, median over trials, with and without the table;
- CLI CPU: the puffctl process's own CPU time from the first progress event to the end event,
  as % of one core (its start-up and exit excluded): what
  the table takes from the machine, independent of other load on it;
- render cost: milliseconds per table redraw (render + diff to a terminal) measured in-process
  on the recorded events, and the share of one core that is at the run's update rate.

Prints a table and writes JSON (bench/results/cli_dashboard.json unless --out).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pty
import select
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from puffctl.dashboard import Dashboard  # noqa: E402
from puffctl.events import RunState, Tail, read_events  # noqa: E402


def run_cli(args: list[str], terminal: bool) -> dict:
    """Run `python -m puffctl ARGS` (in a pty if `terminal`); time the first table and first data."""
    run_dir = Path(args[args.index("--runs-dir") + 1]) / args[args.index("--name") + 1]
    command = [sys.executable, "-m", "puffctl", *args] + ([] if terminal else ["--no-dashboard"])
    environment = {**os.environ, "COLUMNS": "120", "LINES": "50"}
    started = time.perf_counter()
    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(ROOT)
        if not terminal:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
        os.execve(sys.executable, command, environment)
    first_table = first_data = None
    seen = b""
    tail = Tail(run_dir / "events.jsonl")
    cpu_first = cpu_end = None
    seen_first = seen_end = 0.0
    while True:
        ready, _, _ = select.select([fd], [], [], 0.02)
        for event in tail.read():
            now = time.perf_counter()
            if event["type"] == "progress" and first_data is None:
                first_data, seen_first, cpu_first = now - started, now, cpu_seconds(pid)
            if event["type"] == "end":
                seen_end, cpu_end = now, cpu_seconds(pid)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            if first_table is None:
                seen += chunk
                if b"Summary" in seen:
                    first_table = time.perf_counter() - started
    _, status = os.waitpid(pid, 0)
    events = read_events(run_dir / "events.jsonl")
    start = next(event for event in events if event["type"] == "start")
    end = next(event for event in events if event["type"] == "end")
    return {
        "exit_code": os.waitstatus_to_exitcode(status),
        "first_table_s": first_table,
        "first_data_s": first_data,
        "total_s": time.perf_counter() - started,
        "train_sps": (end["agent_steps"] - start["agent_steps"]) / (end["time"] - start["time"]),
        "updates": sum(event["type"] == "progress" for event in events),
        "train_s": end["time"] - start["time"],
        # the CLI process's own CPU from the first progress event to the end event, % of one core
        "cli_core_percent": 100 * (cpu_end - cpu_first) / (seen_end - seen_first),
        "events": str(run_dir / "events.jsonl"),
    }


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of one process (not its children), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def render_cost(events_path: str) -> float:
    """Milliseconds per redraw of the live table over a recorded run's events."""
    console = Console(file=io.StringIO(), force_terminal=True, width=120, height=50)
    state = RunState()
    draws = 0
    started = time.perf_counter()
    with Dashboard(console, min_interval=0.0) as board:
        board.start(state)
        for _ in range(5):
            for event in read_events(Path(events_path)):
                state.apply(event)
                board.update(state, event)
                draws += 1
    return 1000 * (time.perf_counter() - started) / draws


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="baseline")
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "cli_dashboard.json")
    options = parser.parse_args()
    console = Console()
    results: dict[str, list[dict]] = {"table": [], "no_dashboard": []}
    with tempfile.TemporaryDirectory() as runs_dir:
        for trial in range(options.trials):
            # ABBA order, so drift in the machine's load does not favour one mode
            for mode in ("table", "no_dashboard") if trial % 2 == 0 else ("no_dashboard", "table"):
                name = f"{mode}-{trial}"
                args = ["train", options.profile, "--steps", str(options.steps), "--seed", "1",
                        "--runs-dir", runs_dir, "--name", name]
                result = run_cli(args, terminal=mode == "table")
                if mode == "table":
                    result["render_ms"] = render_cost(result["events"])
                results[mode].append(result)
                console.print(f"{name}: {json.dumps({k: v for k, v in result.items() if k != 'events'})}")

    def median(mode: str, key: str) -> float | None:
        values = [result[key] for result in results[mode] if result.get(key) is not None]
        return statistics.median(values) if values else None

    with_table, without = median("table", "train_sps"), median("no_dashboard", "train_sps")
    render_ms = median("table", "render_ms")
    updates_per_s = statistics.median(r["updates"] / r["train_s"] for r in results["table"])
    summary = {
        "first_table_s": median("table", "first_table_s"),
        "first_data_s": median("table", "first_data_s"),
        "train_sps_table": with_table,
        "train_sps_no_dashboard": without,
        "throughput_cost_percent": 100 * (1 - with_table / without),
        # each trial runs both modes back to back: the median of the pairs' ratios is less noisy
        "paired_cost_percent": 100 * (1 - statistics.median(
            a["train_sps"] / b["train_sps"] for a, b in zip(results["table"], results["no_dashboard"]))),
        "sps_spread_percent": 100 * (max(r["train_sps"] for rs in results.values() for r in rs)
                                     - min(r["train_sps"] for rs in results.values() for r in rs)) / without,
        "cli_core_percent_table": median("table", "cli_core_percent"),
        "cli_core_percent_no_dashboard": median("no_dashboard", "cli_core_percent"),
        "render_ms": render_ms,
        "render_core_percent": render_ms * updates_per_s / 10,
    }
    table = Table(title=f"puffctl train {options.profile} --steps {options.steps:,} (median of {options.trials})")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("first table on screen", f"{summary['first_table_s']:.2f} s")
    table.add_row("first progress event", f"{summary['first_data_s']:.2f} s")
    table.add_row("training SPS, live table", f"{with_table:,.0f}")
    table.add_row("training SPS, --no-dashboard", f"{without:,.0f}")
    table.add_row("throughput cost of the table", f"{summary['throughput_cost_percent']:+.2f} %")
    table.add_row("throughput cost, median of paired trials", f"{summary['paired_cost_percent']:+.2f} %")
    table.add_row("SPS spread over all trials", f"{summary['sps_spread_percent']:.1f} %")
    table.add_row("CLI CPU while training, live table", f"{summary['cli_core_percent_table']:.2f} % of a core")
    table.add_row("CLI CPU while training, --no-dashboard", f"{summary['cli_core_percent_no_dashboard']:.2f} % of a core")
    table.add_row("one redraw", f"{render_ms:.2f} ms")
    table.add_row("redraw CPU at the run's update rate", f"{summary['render_core_percent']:.2f} % of a core")
    console.print(table)
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps({"summary": summary, "runs": results, "argv": sys.argv}, indent=1) + "\n")
    console.print(f"wrote {options.out}")


if __name__ == "__main__":
    main()
