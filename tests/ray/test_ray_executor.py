"""The Ray executor against a real Ray head on 127.0.0.1 (tests/tooling/ray_head.py): one head
for the module, tiny CartPole cells. Skipped only when `ray` cannot be imported (CI installs it
with the test extra)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from puffctl import runs
from puffctl.batch import engine as batch_engine
from puffctl.batch import state as batch_state
from puffctl.events import read_events

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "tooling"))
from ray_head import RayHead, importable  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.skipif(importable() is not None, reason=importable() or "")]


@pytest.fixture(scope="module")
def head():
    with RayHead() as started:
        yield started


def spec_file(tmp_path: Path, head: RayHead, **data) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({"retries": 1, "metric": "env.episode_return", "where": head.where,
                                    "storage": str(tmp_path / "storage"), **data}))
    return path


def check_stream(events: list[dict], starts: int = 1) -> None:
    """A run's events as a local run writes them: start first, one end per start, progress
    epochs strictly increasing within each start, no line twice."""
    kinds = [event["type"] for event in events]
    assert kinds[0] == "start" and kinds[-1] == "end" and events[-1]["status"] == "completed"
    assert kinds.count("start") == starts and kinds.count("end") <= starts
    lines = [json.dumps(event, sort_keys=True) for event in events]
    assert len(lines) == len(set(lines)), "an event repeated"
    epochs: list[int] = []
    for event in events:
        if event["type"] == "start":
            epochs = []
        elif event["type"] == "progress":
            assert not epochs or event["epoch"] > epochs[-1], "progress epochs not increasing"
            epochs.append(event["epoch"])


def ray_jobs(head: RayHead, cell_id: str) -> list:
    from ray.job_submission import JobSubmissionClient

    return [job for job in JobSubmissionClient(head.url).list_jobs() if (job.metadata or {}).get("puffctl_cell") == cell_id]


def test_ray_2x2_ablation_rebuilds_each_runs_events_like_a_local_run(tmp_path, head):
    from puffctl.executors.ray import RayExecutor

    spec = spec_file(tmp_path, head, name="grid", steps=4096, seeds=2, variants=[
        {"label": "puff", "profile": "baseline"}, {"label": "gae", "profile": "baseline", "set": {"train.advantage": "gae"}}])
    batch = batch_engine.create(tmp_path / "ablations", batch_engine.plan(spec))
    rebuilt: dict[str, bytes] = {}
    queued_behind: list[int] = [0]  # the most jobs of the batch running while one of it waited

    class Watched(RayExecutor):  # what the log stream rebuilt, before the storage copy could fill gaps
        def collect(self, handle, run_dir):
            rebuilt[run_dir.name] = (run_dir / "events.jsonl").read_bytes()
            super().collect(handle, run_dir)

        def _status(self, handle):
            status = super()._status(handle)
            if status == "PENDING":
                running = [job for job in self.client.list_jobs() if job.status.value == "RUNNING"
                           and (job.metadata or {}).get("puffctl_batch") == "grid"]
                queued_behind[0] = max(queued_behind[0], len(running))
            return status

    executor = Watched(head.url, str(tmp_path / "storage"), on_line=lambda _: None)
    assert len(executor.slots()) == 2 * head.cpus, "the head's room plus as many queued"
    counts = batch_engine.Engine(batch, executor, poll=0.1).run()
    assert counts["completed"] == 4, batch.state
    assert queued_behind[0] == head.cpus, "no job waited in Ray's queue behind a full head"
    local = tmp_path / "local"
    cell = batch.cells[0]
    runs.create_run_dir(local, cell.cell_id, exact=True)
    (local / cell.cell_id / "config.yaml").write_text(yaml.safe_dump(cell.config))
    done = subprocess.run([sys.executable, "-m", "trainer", "--config", str(local / cell.cell_id / "config.yaml"),
                           "--run-dir", str(local / cell.cell_id)], cwd=REPO, capture_output=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-2000:]
    reference = [event["type"] for event in read_events(local / cell.cell_id / "events.jsonl")]
    for cell in batch.cells:
        run_dir = batch.run_dir(cell.cell_id)
        stored = tmp_path / "storage" / "grid" / cell.cell_id
        assert rebuilt[cell.cell_id] == (stored / "events.jsonl").read_bytes(), "the log stream lost or changed bytes"
        assert (run_dir / "events.jsonl").read_bytes() == rebuilt[cell.cell_id]
        events = read_events(run_dir / "events.jsonl")
        check_stream(events)
        kinds = [event["type"] for event in events]
        assert sorted(set(kinds)) == sorted(set(reference)) and kinds[:1] + kinds[-1:] == reference[:1] + reference[-1:]
        assert [k for k in kinds if k != "progress"] == [k for k in reference if k != "progress"]
        assert list((run_dir / "checkpoints").iterdir()), "checkpoints not fetched back"
        launch = runs.read_json(run_dir / runs.LAUNCH_FILE)
        assert launch["ray"]["job"].startswith(f"puffctl-grid-{cell.cell_id}-") and launch["ray"]["fetched_back"]
        assert runs.read_json(run_dir / "source.json")["commit"] == runs.read_json(stored / "source.json")["commit"]
        assert batch.state[cell.cell_id].starts == 1 and len(ray_jobs(head, cell.cell_id)) == 1


def test_ray_job_killed_is_retried_and_a_killed_orchestrator_resumes_by_re_adopting(tmp_path, head):
    spec = spec_file(tmp_path, head, name="life", steps=150_000, seeds=2, slots=2,
                     variants=[{"label": "puff", "profile": "baseline", "set": {"train.checkpoint_interval": 5}}])
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "300"}
    root = tmp_path / "ablations"
    orchestrator = subprocess.Popen([sys.executable, "-m", "puffctl", "ablate", "run", str(spec), "--dir", str(root)],
                                    cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def cells() -> dict[str, dict]:
        return runs.read_json(root / "life" / "state.json").get("cells") or {}

    def wait_for(predicate, what: str, timeout: float = 240.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert orchestrator.poll() is None or what == "nothing", f"orchestrator ended: {orchestrator.stdout.read()}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.2)

    def progressing(cell_id: str, kind: str = "progress") -> bool:
        path = root / "life" / "runs" / cell_id / "events.jsonl"
        return path.exists() and any(event["type"] == kind for event in read_events(path))

    wait_for(lambda: len(cells()) == 2 and all(progressing(c) for c in cells()), "both cells' progress in the local events")
    victim, other = sorted(cells())
    wait_for(lambda: progressing(victim, "checkpoint"), "a checkpoint of the cell to kill (its retry resumes from it)")
    status = runs.read_json(tmp_path / "storage" / "life" / victim / "status.json")
    os.kill(status["pid"], signal.SIGKILL)
    wait_for(lambda: cells()[victim]["starts"] == 2 and cells()[victim]["status"] == "running", "the killed cell's retry")
    assert cells()[victim]["crashes"] == 1
    wait_for(lambda: progressing(victim) and len(ray_jobs(head, victim)) == 2, "the retry to start")
    orchestrator.send_signal(signal.SIGKILL)
    orchestrator.wait(timeout=30)
    assert {current["status"] for current in cells().values()} == {"running"}, cells()

    resumed = subprocess.run([sys.executable, "-m", "puffctl", "ablate", "resume", "life", "--dir", str(root)],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "re-adopted" in resumed.stdout
    final = cells()
    assert {current["status"] for current in final.values()} == {"completed"}, resumed.stdout
    assert final[victim]["starts"] == 2 and final[other]["starts"] == 1
    assert len(ray_jobs(head, victim)) == 2 and len(ray_jobs(head, other)) == 1, "a second job for a re-adopted cell"
    for cell_id, starts in ((victim, 2), (other, 1)):
        events = read_events(root / "life" / "runs" / cell_id / "events.jsonl")
        check_stream(events, starts=starts)
    restarted = [event for event in read_events(root / "life" / "runs" / victim / "events.jsonl") if event["type"] == "start"]
    assert restarted[1]["resumed"] is True


def test_ray_where_errors_are_one_line(tmp_path, head):
    from puffctl.errors import PuffctlError
    from puffctl.executors import ray

    with pytest.raises(PuffctlError, match="ray://HOST:PORT"):
        ray.parse_where("ray://bad host")
    with pytest.raises(PuffctlError, match="needs storage"):
        ray.executor(head.where, None)
    with pytest.raises(PuffctlError, match="unreachable"):
        ray.executor("ray://127.0.0.1:1", str(tmp_path))
    spec = spec_file(tmp_path, head, name="nostore", steps=4096, seeds=1, variants=[{"label": "a", "profile": "baseline"}])
    spec.write_text(spec.read_text().replace("storage:", "ignored_storage:"))
    data = yaml.safe_load(spec.read_text())
    data.pop("ignored_storage")
    spec.write_text(yaml.safe_dump(data))
    done = subprocess.run([sys.executable, "-m", "puffctl", "ablate", "run", str(spec), "--dir", str(tmp_path / "a")],
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and "needs storage" in done.stderr
    assert not batch_state.list_batches(tmp_path / "a")
