"""Benchmark runs on a box over loopback ssh://: sync time, time to the first table line, event
latency, and lost/duplicated events across forced disconnects.

Starts the test tooling's private dockerd and sshd (root needed) and the Python test image,
then over ssh:// (box `lab`, a dev container from that image):

1. `puffctl train --box` with the code not yet synced: the sync time;
2. again, code synced: seconds to the first table line (the "started" line; the table follows it
   at once) and to the trainer's start event;
3. --starts times `train --box --detach`, code synced, each after the previous trainer ended:
   wall seconds to the "started" line, and the CLI's wall and CPU seconds (user+sys, its own
   process) to its exit; medians, with the 1-minute load average around them (a shared machine
   inflates the wall seconds, less so the CPU seconds);
4. one run followed in-process while the ssh master is killed --disconnects times (0: skipped):
   each progress event's latency (its arrival here minus its `time`, the clock is shared), and
   whether the local events.jsonl equals the box's byte for byte.

    python bench/remote_runs.py [--starts 5] [--disconnects 20] [--steps 400000] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "tooling"))

import boxes_realparts as realparts  # noqa: E402


def timed_train(env: dict, name: str, steps: int, *, detach: bool = False) -> dict:
    """Run `puffctl train --box lab` to its exit; seconds from the call to its first lines, its wall and CPU seconds."""
    began = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "puffctl", "train", "baseline", "--box", "lab", "--name", name,
                                "--steps", str(steps), "--no-dashboard", *(["--detach"] if detach else [])], env=env,
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    marks, lines = {}, []
    for line in process.stdout:
        lines.append(line.rstrip())
        if "started" in line and "started" not in marks:
            marks["started"] = time.monotonic() - began
        if "] start:" in line and "first_event" not in marks:
            marks["first_event"] = time.monotonic() - began
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    marks.update(lines=lines, wall=time.monotonic() - began, cpu=usage.ru_utime + usage.ru_stime,
                 returncode=process.returncode)
    return marks


def wait_until_ended(name: str) -> None:
    """Until the trainer of run `name` on box lab has exited (so it does not load the next measurement)."""
    from puffctl import boxes, runs
    from puffctl.remote import Remote, probe

    where = Remote.of(runs.read_json(Path(os.environ["PUFFCTL_RUNS_DIR"]) / name / runs.LAUNCH_FILE))
    with boxes.open_box("lab") as box:
        while probe(box, where)["alive"]:
            time.sleep(0.5)


def timed_starts(env: dict, count: int) -> dict:
    """`train --box --detach` `count` times, code synced, one trainer at a time: medians and the load around them."""
    loads, started, walls, cpus = [os.getloadavg()[0]], [], [], []
    for index in range(count):
        marks = timed_train(env, f"start{index}", 2048, detach=True)
        assert marks["returncode"] == 0, marks["lines"]
        started.append(marks["started"])
        walls.append(marks["wall"])
        cpus.append(marks["cpu"])
        wait_until_ended(f"start{index}")
    loads.append(os.getloadavg()[0])
    return {"starts": count, "start_started_s_median": statistics.median(started), "start_started_s_min": min(started),
            "start_cli_wall_s_median": statistics.median(walls), "start_cli_cpu_s_median": statistics.median(cpus),
            "start_load_1min": f"{loads[0]:.1f} -> {loads[1]:.1f}"}


def follow_with_disconnects(path: Path, where, disconnects: int, interval: float) -> dict:
    """Follow a remote run in this process while a thread kills its ssh master `disconnects` times."""
    from puffctl import remote

    latencies, killed, seen = [], [0], [0]
    local = path / "events.jsonl"
    done = threading.Event()

    def on_bytes() -> None:
        data = local.read_bytes()
        lines = data[seen[0]:].split(b"\n")
        complete = lines[:-1]
        seen[0] += sum(len(line) + 1 for line in complete)
        now = time.time()
        for line in complete:
            event = json.loads(line)
            if event.get("type") == "progress":
                latencies.append(now - event["time"])

    def killer() -> None:
        while killed[0] < disconnects and not done.wait(interval):
            for pid in realparts.ssh_masters(os.getpid()):
                os.kill(pid, signal.SIGKILL)
                killed[0] += 1
                break

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    code = remote.follow(path, where, on_bytes, reconnect_for=60)
    done.set()
    thread.join()
    return {"latencies": latencies, "disconnects": killed[0], "returncode": code}


def disconnect_run(env: dict, scratch: Path, args: argparse.Namespace) -> dict:
    """One detached run followed here through --disconnects killed ssh masters: loss, duplicates, latency."""
    import io
    import tarfile

    from puffctl import boxes, runs
    from puffctl.remote import Remote

    launched = subprocess.run([sys.executable, "-m", "puffctl", "train", "baseline", "--box", "lab", "--name",
                               "faults", "--steps", str(args.steps), "--detach"], env=env, cwd=REPO,
                              capture_output=True, text=True, check=True)
    path = scratch / "runs" / "faults"
    where = Remote.of(runs.read_json(path / runs.LAUNCH_FILE))
    followed = follow_with_disconnects(path, where, args.disconnects, args.interval)
    with boxes.open_box("lab") as box:
        stream, _ = box.client.api.get_archive(where.container_id, where.events)
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
            remote_bytes = tar.extractfile(tar.next()).read()
    local_bytes = (path / "events.jsonl").read_bytes()
    local_lines, remote_lines = local_bytes.splitlines(), remote_bytes.splitlines()
    return {
        "disconnects": followed["disconnects"], "events_remote": len(remote_lines), "events_local": len(local_lines),
        "identical": local_bytes == remote_bytes,
        "duplicated": len(local_lines) - len(set(local_lines)),
        "lost": len(set(remote_lines) - set(local_lines)),
        "latency_median_s": statistics.median(followed["latencies"]) if followed["latencies"] else None,
        "latency_p90_s": statistics.quantiles(followed["latencies"], n=10)[-1] if len(followed["latencies"]) > 9 else None,
        "trainer_started": launched.stdout.strip().splitlines()[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--starts", type=int, default=5, help="detached starts timed, code synced")
    parser.add_argument("--disconnects", type=int, default=20, help="forced disconnects in one followed run (0: skip)")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between forced disconnects")
    parser.add_argument("--steps", type=int, default=400_000, help="steps of the disconnect run (it must outlast them)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "remote_runs.json")
    args = parser.parse_args()
    console = Console()
    scratch = Path(tempfile.mkdtemp(prefix="pf-bench-remote-"))
    engine = realparts.start_dockerd()
    sshd = None
    try:
        realparts.build_python_image(engine.url)
        sshd = realparts.start_sshd(engine.url)
        os.environ.update(PUFFCTL_CONFIG_DIR=str(scratch / "config"), PUFFCTL_OWNER="bench",
                          PUFFCTL_RUNS_DIR=str(scratch / "runs"), PUFFCTL_SSH_CONFIG=str(sshd.client_config))
        from puffctl import boxes, containers

        boxes.add_box("lab", f"ssh://{sshd.alias}", cpu_only=True)
        with boxes.open_box("lab") as box:
            containers.up(box, boxes.get_box("lab"), image=realparts.PYTHON_IMAGE, network="none")
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        cold = timed_train(env, "cold", 20_000)
        sync_line = next(line for line in cold["lines"] if "started" in line)
        warm = timed_train(env, "warm", 20_000)
        result = {"sync_line": sync_line, "warm_started_s": warm.get("started"),
                  "warm_first_event_s": warm.get("first_event"), "cold_started_s": cold.get("started"),
                  **timed_starts(env, args.starts)}
        if args.disconnects:
            result.update(disconnect_run(env, scratch, args))
        result["load_1min"] = os.getloadavg()[0]
    finally:
        if sshd is not None:
            sshd.stop()
        engine.stop()
    table = Table(title="runs on a box over loopback ssh://")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key, value in result.items():
        table.add_row(key, f"{value:.3f}" if isinstance(value, float) else str(value))
    console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
