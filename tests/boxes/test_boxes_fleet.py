"""The fleet view from recorded nvidia-smi outputs, and `box list --gpus` against the real engine."""

from pathlib import Path

import pytest

from puffctl import boxes, fleet, gpu

DATA = Path(__file__).parent / "data"


def report(name: str) -> gpu.GPUReport:
    text = (DATA / f"{name}_nvidia-smi.txt").read_text() + gpu.QUERY_MARKER + "\n" + (DATA / f"{name}_query.csv").read_text()
    return gpu.parse_probe(text)


def test_slots_show_model_memory_and_holders_from_labels_and_runs():
    h100 = report("h100x8")
    uuid = h100.gpus[3].uuid
    containers = [("ana/dev", [{"Driver": "", "Count": 0, "DeviceIDs": ["0", "1"], "Capabilities": [["gpu"]]}]),
                  ("bo/exp", [{"Count": 0, "DeviceIDs": [uuid]}]),
                  ("cy/dev", None)]
    rows = fleet.slots("gpu1", h100, containers, [("ppo-seed1", "1"), ("sweep-3", "5")])
    assert [row.index for row in rows] == list(range(8))
    assert rows[0].name == "NVIDIA H100 80GB HBM3" and rows[0].memory_mib == 81559
    assert rows[0].holders == ["container ana/dev"]
    assert rows[1].holders == ["container ana/dev", "run ppo-seed1"]
    assert rows[3].holders == ["container bo/exp"]
    assert rows[5].holders == ["run sweep-3"] and rows[7].holders == []
    assert rows[7].idle  # 1 MiB used, 0 % in the recording


def test_count_and_all_requests_hold_the_first_gpus():
    h100 = report("h100x8")
    assert fleet.container_gpus([{"Count": 2}], h100) == [0, 1]
    assert fleet.container_gpus([{"Count": -1}], h100) == list(range(8))
    assert fleet.container_gpus(None, h100) == []


def test_busy_gpus_are_not_idle():
    rows = fleet.slots("ws", report("rtx4090"), [])
    assert (rows[0].utilization, rows[0].memory_used_mib) == (2, 518) and not rows[0].idle


@pytest.mark.docker
def test_box_list_gpus_says_why_a_box_has_no_gpu_rows(config_dir, docker_engine, cli, tmp_path, monkeypatch):
    monkeypatch.setenv("PUFFCTL_RUNS_DIR", str(tmp_path / "runs"))
    boxes.add_box("cpu", docker_engine.url, cpu_only=True, owner_note="lab")
    boxes.add_box("gpu", docker_engine.url)
    boxes.add_box("down", "unix:///nonexistent/docker.sock")
    result = cli("box", "list", "--gpus")
    assert result.exit_code == 0, result.output
    assert "CPU-only box" in result.output and "lab" in result.output
    assert "puffctl-dev:cuda is not on the box" in result.output
    assert "unreachable" in result.output and "0 idle GPU(s) of 0" in result.output
