"""`puffctl ablate` end to end: the real CLI in a subprocess running real trainers on tiny cells.

Trainer starts are counted independently of the engine: a sitecustomize on PYTHONPATH
appends a line to a file for every `python -m trainer` process that starts.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from puffctl import runs
from puffctl.events import read_events

REPO = Path(__file__).resolve().parents[2]
SITECUSTOMIZE = """
import os, sys
argv = getattr(sys, "orig_argv", [])
if "-m" in argv and argv[argv.index("-m") + 1:argv.index("-m") + 2] == ["trainer"] and os.environ.get("TRAINER_STARTS"):
    with open(os.environ["TRAINER_STARTS"], "a") as log:
        log.write(argv[argv.index("--run-dir") + 1] + "\\n")
"""


def environment(tmp_path: Path) -> dict:
    shim = tmp_path / "shim"
    shim.mkdir(exist_ok=True)
    (shim / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return {**os.environ, "COLUMNS": "500", "PYTHONUNBUFFERED": "1", "TRAINER_STARTS": str(tmp_path / "starts.log"),
            "PYTHONPATH": os.pathsep.join([str(REPO), str(shim)])}


def starts(tmp_path: Path) -> dict[str, int]:
    """Trainer processes started, by cell id."""
    log = tmp_path / "starts.log"
    counts: dict[str, int] = {}
    for line in log.read_text().splitlines() if log.exists() else []:
        counts[Path(line).name] = counts.get(Path(line).name, 0) + 1
    return counts


def puffctl(tmp_path: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "puffctl", *args, "--dir", str(tmp_path / "ablations")], cwd=REPO,
                          capture_output=True, text=True, env=environment(tmp_path), timeout=timeout)


def start(tmp_path: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "puffctl", *args, "--dir", str(tmp_path / "ablations")], cwd=REPO,
                            env=environment(tmp_path), text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def cell_states(tmp_path: Path, name: str) -> dict[str, dict]:
    return runs.read_json(tmp_path / "ablations" / name / "state.json").get("cells") or {}


def wait_for(predicate, timeout: float = 180.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def spec_file(tmp_path: Path, **data) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({"steps": 8192, "retries": 1, "slots": 2, "metric": "env.episode_return", **data}))
    return path


def test_ablate_batch_end_to_end_with_a_killed_cell_retried_and_a_report(tmp_path):
    spec = spec_file(tmp_path, name="e2e", seeds=2, target=20, variants=[
        {"label": "puff", "profile": "baseline"}, {"label": "gae", "profile": "baseline", "set": {"train.advantage": "gae"}}])
    orchestrator = start(tmp_path, "ablate", "run", str(spec))
    victim: dict = {}

    def first_handle() -> bool:
        for cell_id, current in cell_states(tmp_path, "e2e").items():
            if current.get("handle") and starts(tmp_path).get(cell_id):  # its python is up: a real start
                victim.update(cell=cell_id, pid=current["handle"]["pid"])
                return True
        return False

    wait_for(first_handle, what="a cell to start")
    os.kill(victim["pid"], signal.SIGKILL)
    output, _ = orchestrator.communicate(timeout=300)
    assert orchestrator.returncode == 0, output
    cells = cell_states(tmp_path, "e2e")
    assert {current["status"] for current in cells.values()} == {"completed"}, output
    assert cells[victim["cell"]]["starts"] == 2 and cells[victim["cell"]]["crashes"] == 1
    assert starts(tmp_path) == {cell_id: 2 if cell_id == victim["cell"] else 1 for cell_id in cells}
    assert f"{victim['cell']} " in output and "killed by SIGKILL" in output and "batch e2e: 4 completed" in output
    run_dir = tmp_path / "ablations" / "e2e" / "runs" / victim["cell"]
    assert [event["type"] for event in read_events(run_dir / "events.jsonl")][-1] == "end"
    assert json.loads((run_dir / "launch.json").read_text())["batch"] == "e2e"
    shown = subprocess.run([sys.executable, "-m", "puffctl", "runs", "show", victim["cell"], "--runs-dir", str(run_dir.parent)],
                           cwd=REPO, capture_output=True, text=True, env=environment(tmp_path), timeout=60)
    assert shown.returncode == 0 and "completed" in shown.stdout

    status = puffctl(tmp_path, "ablate", "status", "e2e")
    assert status.returncode == 0 and "seed 1" in status.stdout and status.stdout.count("completed") >= 4
    reported = puffctl(tmp_path, "ablate", "report", "e2e", "--md", str(tmp_path / "r.md"), "--csv", str(tmp_path / "r.csv"),
                       "--png", str(tmp_path / "r.png"))
    assert reported.returncode == 0, reported.stderr
    assert "P(better than puff)" in reported.stdout and "gae" in reported.stdout and "missing" not in reported.stdout
    assert "| gae | 2 |" in (tmp_path / "r.md").read_text()
    assert len((tmp_path / "r.csv").read_text().splitlines()) == 3
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"


def test_ablate_orchestrator_killed_then_resume_runs_only_what_is_missing(tmp_path):
    spec = spec_file(tmp_path, name="crash", seeds=[1, 2], steps=30000, variants=[
        {"label": "ok", "profile": "baseline"},
        {"label": "boom", "profile": "baseline", "set": {"train.learning_rate": 1e30, "train.max_grad_norm": 1e38}}])
    orchestrator = start(tmp_path, "ablate", "run", str(spec))

    def finished_and_running() -> bool:
        statuses = [current["status"] for current in cell_states(tmp_path, "crash").values()]
        return any(s in ("completed", "failed") for s in statuses) and "running" in statuses

    wait_for(finished_and_running, what="one finished cell and one running")
    orchestrator.send_signal(signal.SIGKILL)
    orchestrator.wait(timeout=30)
    before = cell_states(tmp_path, "crash")
    finished = {cell_id for cell_id, current in before.items() if current["status"] in ("completed", "failed")}
    assert finished

    resumed = start(tmp_path, "ablate", "resume", "crash")
    wait_for(lambda: (tmp_path / "ablations" / "crash" / ".lock").read_text().strip() == f"pid {resumed.pid}",
             what="the resume to take the lock")
    second = puffctl(tmp_path, "ablate", "resume", "crash", timeout=60)
    assert second.returncode == 2 and "already being run by pid" in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, output
    after = cell_states(tmp_path, "crash")
    assert starts(tmp_path) == dict.fromkeys(after, 1), output
    for cell_id, current in after.items():
        boom = yaml.safe_load((tmp_path / "ablations" / "crash" / "runs" / cell_id / "config.yaml").read_text())["train"]["learning_rate"] > 1
        assert current["status"] == ("failed" if boom else "completed"), (cell_id, current)
        assert current["starts"] == 1
        if boom:
            assert "non-finite" in current["reason"]
        events = read_events(tmp_path / "ablations" / "crash" / "runs" / cell_id / "events.jsonl")
        assert [event["type"] for event in events].count("start") == 1
    again = puffctl(tmp_path, "ablate", "resume", "crash", timeout=60)
    assert again.returncode == 2 and "--retry-failed" in again.stderr


def test_ablate_ctrl_c_checkpoints_the_cells_and_resume_continues_them(tmp_path):
    spec = spec_file(tmp_path, name="stop", seeds=1, steps=200000, variants=[{"label": "puff", "profile": "baseline"}])
    orchestrator = start(tmp_path, "ablate", "run", str(spec))
    run_dirs = tmp_path / "ablations" / "stop" / "runs"
    wait_for(lambda: any(event["type"] == "progress" for path in run_dirs.glob("*/events.jsonl") for event in read_events(path)),
             what="the cell's first progress event")
    orchestrator.send_signal(signal.SIGINT)
    output, _ = orchestrator.communicate(timeout=120)
    assert orchestrator.returncode == 130, output
    (cell_id, current), = cell_states(tmp_path, "stop").items()
    assert current["status"] == "interrupted" and "1 interrupted" in output
    resumed = puffctl(tmp_path, "ablate", "resume", "stop")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert cell_states(tmp_path, "stop")[cell_id]["status"] == "completed"
    events = read_events(run_dirs / cell_id / "events.jsonl")
    assert [event.get("resumed") for event in events if event["type"] == "start"] == [False, True]
    assert starts(tmp_path) == {cell_id: 2}


def test_ablate_a_live_trainer_the_state_has_no_handle_for_is_adopted_not_deleted(tmp_path):
    """The orchestrator died between starting a cell's trainer and saving its handle: the next
    one must follow that trainer, not delete its run directory and start a second."""
    from puffctl import launch
    from puffctl.batch import engine
    from puffctl.executors.local import LocalExecutor

    spec = spec_file(tmp_path, name="orphan", seeds=1, steps=4096, variants=[{"label": "puff", "profile": "baseline"}])
    batch = engine.create(tmp_path / "ablations", engine.plan(spec))
    (cell,) = batch.cells
    path = launch.prepare(batch.runs_root, cell.cell_id, cell.config, {"batch": "orphan", "cell": cell.cell_id}, exact=True)
    orphan = launch.start(path)  # holds the run lock from here on; the batch state still says pending
    inode = path.stat().st_ino
    try:
        counts = engine.Engine(batch, LocalExecutor(1), poll=0.05).run()
        assert orphan.wait(timeout=300) == 0
    finally:
        if orphan.poll() is None:
            orphan.kill()
    assert counts["completed"] == 1 and batch.state[cell.cell_id].starts == 1
    assert path.stat().st_ino == inode
    events = read_events(path / "events.jsonl")
    assert [event["type"] for event in events if event["type"] in ("start", "end")] == ["start", "end"]
    assert events[-1]["status"] == "completed"
