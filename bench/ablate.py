"""Ablation engine benchmarks: orchestration overhead, `ablate status` and `ablate report` speed.

overhead: N tiny CartPole cells on S local slots. The batch's wall time against the sum of
  the cells' own wall times (each trainer process from just before its start to its exit,
  timed by a waiting thread) divided by S. Target: ratio <= 1.10.
status:   a synthetic batch of C cells (configs resolved from the baseline profile, statuses
  and metrics set); `ablate status` in-process and as a fresh CLI process. Target: < 0.5 s.
report:   R synthetic finished runs (P progress events each, full-size events) in 4 variants;
  `ablate report` without the PNG, in-process and as a CLI process, and the PNG apart.
  Target: < 3 s.
advantage: runs bench/ablations/advantage.yaml (or --spec) and prints its report.
ray:      the same N tiny cells as a batch on the local executor (S slots) and on a Ray head
  with S CPUs (started here by tests/tooling/ray_head.py, or --ray-where ray://HOST:PORT),
  side by side: the Ray batch's wall time over the local one. The Ray executor keeps its
  default number of jobs submitted (the head's room plus its queue). Target: <= 1.3x.

    python bench/ablate.py [--only overhead,status,report,advantage,ray] [--cells 16] [--slots 2]
                           [--steps 4096] [--status-cells 1000] [--report-runs 100] [--out FILE]
                           [--ray-where ray://HOST:PORT]

Prints a table and writes JSON (bench/results/ablate.json unless --out). Timings depend on
the machine's load: note it (the table prints the load average).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from puffctl.batch import engine, report, state  # noqa: E402
from puffctl.executors.base import Job  # noqa: E402
from puffctl.executors.local import LocalExecutor  # noqa: E402

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p), "COLUMNS": "200"}


class TimedExecutor(LocalExecutor):
    """The local executor, also timing each trainer process from its start to its exit."""

    def __init__(self, count: int) -> None:
        super().__init__(count)
        self.walls: list[float] = []

    def start(self, job: Job) -> dict:
        began = time.perf_counter()
        handle = super().start(job)
        process = self.children[handle["pid"]]
        threading.Thread(target=lambda: (process.wait(), self.walls.append(time.perf_counter() - began)), daemon=True).start()
        return handle


def write_spec(directory: Path, name: str, seeds: int, steps: int) -> Path:
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "seeds": seeds, "steps": steps, "retries": 0,
                                    "variants": [{"label": "puff", "profile": "baseline"}]}))
    return path


def overhead(cells: int, slots: int, steps: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        batch = engine.create(Path(tmp) / "ablations", engine.plan(write_spec(Path(tmp), "overhead", cells, steps)))
        executor = TimedExecutor(slots)
        began = time.perf_counter()
        counts = engine.Engine(batch, executor).run()
        wall = time.perf_counter() - began
        time.sleep(0.2)  # the timing threads have appended by now
    ideal = sum(executor.walls) / slots
    return {"cells": cells, "slots": slots, "steps": steps, "completed": counts["completed"], "batch_wall_s": wall,
            "cell_wall_sum_s": sum(executor.walls), "ideal_s": ideal, "ratio": wall / ideal, "target": 1.10}


def ray_side_by_side(cells: int, slots: int, steps: int, where: str | None) -> dict:
    """The same batch on the local executor and on a Ray head (a local one unless `where`): wall times."""
    from puffctl.executors import ray

    sys.path.insert(0, str(ROOT / "tests" / "tooling"))
    from ray_head import RayHead

    walls = {}
    with tempfile.TemporaryDirectory() as tmp:
        spec = write_spec(Path(tmp), "side", cells, steps)
        batch = engine.create(Path(tmp) / "local", engine.plan(spec))
        began = time.perf_counter()
        local = engine.Engine(batch, LocalExecutor(slots)).run()
        walls["local"] = time.perf_counter() - began
        head = None if where else RayHead(cpus=slots).start()
        try:
            began = time.perf_counter()
            executor = ray.executor(where or head.where, str(Path(tmp) / "storage"), on_line=lambda _: None)
            submitted = len(executor.slots())
            counts = engine.Engine(engine.create(Path(tmp) / "ray", engine.plan(spec)), executor).run()
            walls["ray"] = time.perf_counter() - began
        finally:
            if head is not None:
                head.stop()
    return {"cells": cells, "slots": slots, "ray_submitted": submitted, "steps": steps,
            "local_s": walls["local"], "ray_s": walls["ray"],
            "completed": {"local": local["completed"], "ray": counts["completed"]}, "ratio": walls["ray"] / walls["local"],
            "target": 1.3}


def synthetic_batch(root: Path, name: str, variants: int, seeds: int) -> state.Batch:
    spec = {"name": name, "seeds": seeds, "steps": 100000, "target": 400,
            "variants": [{"label": f"v{index}", "profile": "baseline", "set": {"train.learning_rate": 0.01 * (index + 1)}}
                         for index in range(variants)]}
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return engine.create(root / "ablations", engine.plan(path))


def cli_seconds(*args: str) -> float:
    began = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "puffctl", *args], cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return time.perf_counter() - began


def status_speed(cells: int) -> dict:
    from puffctl.commands import ablate

    with tempfile.TemporaryDirectory() as tmp:
        batch = synthetic_batch(Path(tmp), "wide", 10, cells // 10)
        for index, cell in enumerate(batch.cells):
            current = batch.state[cell.cell_id]
            current.status = ("completed", "running", "pending", "failed")[index % 4]
            current.metric, current.steps = float(index), 100000
        batch.save()
        ablate.console = Console(file=io.StringIO(), width=200)
        began, cpu = time.perf_counter(), time.process_time()
        ablate.status("wide", root=Path(tmp) / "ablations")
        inside, inside_cpu = time.perf_counter() - began, time.process_time() - cpu
        cli = cli_seconds("ablate", "status", "wide", "--dir", str(Path(tmp) / "ablations"))
        bare = cli_seconds("--help")
    return {"cells": len(batch.cells), "in_process_s": inside, "in_process_cpu_s": inside_cpu, "cli_s": cli, "cli_startup_s": bare, "target_s": 0.5}


def fake_events(run_id: str, slope: float, progress: int) -> str:
    lines = [{"type": "start", "time": 0.0, "run_id": run_id, "config": {"env": {"name": "gym:CartPole-v1"}}, "agent_steps": 0}]
    for index in range(1, progress + 1):
        steps = index * 1000
        lines.append({"type": "progress", "time": index * 0.5, "run_id": run_id, "epoch": index, "agent_steps": steps,
                      "total_steps": progress * 1000, "sps": 2000.0, "uptime": index * 0.5, "eta": 1.0,
                      "perf": {"evaluate": {"total": 0.1, "forward": 0.05, "env": 0.03, "copy": 0.01, "misc": 0.01},
                               "train": {"total": 0.1, "forward": 0.05, "learn": 0.03, "copy": 0.01, "misc": 0.01}},
                      "losses": {key: 0.1 for key in ("policy_loss", "value_loss", "entropy", "old_approx_kl", "approx_kl",
                                                      "clipfrac", "importance", "explained_variance")},
                      "env": {"episode_return": min(500.0, slope * index), "episode_length": 100.0},
                      "util": {"cpu_percent": 50.0, "dram_percent": 10.0, "gpu_percent": None, "vram_percent": None}})
    lines.append({"type": "end", "time": progress * 0.5, "run_id": run_id, "status": "completed", "agent_steps": progress * 1000})
    return "".join(json.dumps(line) + "\n" for line in lines)


def report_speed(runs: int, progress: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        batch = synthetic_batch(Path(tmp), "hundred", 4, runs // 4)
        for index, cell in enumerate(batch.cells):
            run_dir = batch.run_dir(cell.cell_id)
            run_dir.mkdir(parents=True)
            (run_dir / "events.jsonl").write_text(fake_events(cell.cell_id, 2.0 + index % 7 + int(cell.variant[1:]), progress))
            batch.state[cell.cell_id].status = "completed"
        batch.save()
        import scipy.stats  # noqa: F401 - imported before the clock starts, like matplotlib below; the CLI pays both

        began, cpu = time.perf_counter(), time.process_time()
        built = report.build(state.open_batch(batch.path.parent, batch.name, configs=False))
        inside, inside_cpu = time.perf_counter() - began, time.process_time() - cpu
        import matplotlib.pyplot  # noqa: F401

        began = time.perf_counter()
        report.plot(built, Path(tmp) / "curves.png")
        png = time.perf_counter() - began
        cli = cli_seconds("ablate", "report", "hundred", "--dir", str(batch.path.parent))
    return {"runs": len(batch.cells), "progress_events": progress, "in_process_s": inside, "in_process_cpu_s": inside_cpu,
            "cli_s": cli, "png_s": png,
            "target_s": 3.0}


def advantage(spec: Path, directory: Path | None) -> dict:
    root = directory or Path(tempfile.mkdtemp(prefix="ablate-advantage-"))
    planned = engine.plan(spec)
    name = planned.spec.name
    path = root / name
    batch = state.open_batch(root, name) if path.is_dir() else engine.create(root, planned)
    began = time.perf_counter()
    if engine.needs_running(batch):
        engine.Engine(batch, LocalExecutor(planned.spec.slots or engine.default_slots(planned.cells))).run()
    wall = time.perf_counter() - began
    result = report.build(state.open_batch(root, name, configs=False))
    report.plot(result, root / f"{name}.png")
    print(report.to_markdown(result))
    print(f"curves: {root / f'{name}.png'}; batch in {path}")
    return {"batch": str(path), "wall_s": wall, "markdown": report.to_markdown(result)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="overhead,status,report", help="comma list of overhead,status,report,advantage,ray")
    parser.add_argument("--cells", type=int, default=16, help="overhead: tiny cells")
    parser.add_argument("--slots", type=int, default=2, help="overhead: local slots")
    parser.add_argument("--steps", type=int, default=4096, help="overhead: agent steps per cell")
    parser.add_argument("--status-cells", type=int, default=1000)
    parser.add_argument("--report-runs", type=int, default=100)
    parser.add_argument("--progress", type=int, default=200, help="report: progress events per synthetic run")
    parser.add_argument("--spec", type=Path, default=ROOT / "bench" / "ablations" / "advantage.yaml")
    parser.add_argument("--advantage-dir", type=Path, default=None, help="advantage: ablations root (reused: resumes)")
    parser.add_argument("--ray-where", default=None, help="ray: an existing head (ray://HOST:PORT) instead of a local one")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "ablate.json")
    args = parser.parse_args()
    only = set(args.only.split(","))
    load = os.getloadavg()
    results: dict = {"load_average": load, "cores": os.cpu_count()}
    table = Table(title=f"ablate benchmarks (load average {load[0]:.1f} on {os.cpu_count()} cores)")
    for column in ("benchmark", "measured", "target", "met"):
        table.add_column(column)
    if "overhead" in only:
        found = results["overhead"] = overhead(args.cells, args.slots, args.steps)
        table.add_row(f"overhead: {args.cells} cells on {args.slots} slots",
                      f"{found['batch_wall_s']:.1f} s vs {found['ideal_s']:.1f} s ideal = {found['ratio']:.3f}x", "<= 1.10x",
                      str(found["ratio"] <= 1.10))
    if "status" in only:
        found = results["status"] = status_speed(args.status_cells)
        table.add_row(f"status: {found['cells']} cells", f"{found['in_process_s']:.3f} s in-process ({found['in_process_cpu_s']:.3f} s CPU), "
                      f"{found['cli_s']:.2f} s CLI "
                      f"(CLI startup alone {found['cli_startup_s']:.2f} s)", "< 0.5 s", str(found["in_process_s"] < 0.5))
    if "report" in only:
        found = results["report"] = report_speed(args.report_runs, args.progress)
        table.add_row(f"report: {found['runs']} runs", f"{found['in_process_s']:.2f} s in-process ({found['in_process_cpu_s']:.2f} s CPU), "
                      f"{found['cli_s']:.2f} s CLI; "
                      f"PNG {found['png_s']:.2f} s", "< 3 s", str(found["in_process_s"] < 3.0))
    if "ray" in only:
        found = results["ray"] = ray_side_by_side(args.cells, args.slots, args.steps, args.ray_where)
        table.add_row(f"ray: {args.cells} cells, {args.slots} slots, local vs Ray head",
                      f"{found['ray_s']:.1f} s vs {found['local_s']:.1f} s local = {found['ratio']:.2f}x "
                      f"({found['completed']['ray']}/{found['completed']['local']} completed)", "<= 1.3x",
                      str(found["ratio"] <= 1.3))
    if "advantage" in only:
        results["advantage"] = advantage(args.spec, args.advantage_dir)
    Console().print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
