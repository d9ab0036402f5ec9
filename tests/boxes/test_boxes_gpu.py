"""nvidia-smi parsing and driver-vs-image CUDA compatibility, on recorded outputs."""

from pathlib import Path

import pytest

from puffctl import gpu

DATA = Path(__file__).parent / "data"


def probe_output(case: str) -> str:
    """What PROBE_SCRIPT prints: plain nvidia-smi, the marker, the query CSV."""
    return (DATA / f"{case}_nvidia-smi.txt").read_text() + gpu.QUERY_MARKER + "\n" + (DATA / f"{case}_query.csv").read_text()


def test_eight_h100_driver_550():
    report = gpu.parse_probe(probe_output("h100x8"))
    assert len(report.gpus) == 8 and report.errors == []
    assert report.driver == "550.54.15" and report.cuda == "12.4"
    assert report.healthy
    assert report.summary() == "8x NVIDIA H100 80GB HBM3 (80 GiB)"
    busy = report.gpus[3]
    assert (busy.index, busy.memory_mib, busy.memory_used_mib, busy.utilization) == (3, 81559, 41837, 97)
    assert busy.bus_id == "00000000:5D:00.0"


def test_one_rtx4090_driver_545():
    report = gpu.parse_probe(probe_output("rtx4090"))
    assert [g.name for g in report.gpus] == ["NVIDIA GeForce RTX 4090"]
    assert report.driver == "545.29.06" and report.cuda == "12.3"
    assert report.summary() == "1x NVIDIA GeForce RTX 4090 (24 GiB)"


def test_no_gpus():
    report = gpu.parse_probe(probe_output("none"))
    assert report.gpus == [] and report.errors == []
    assert not report.healthy and report.driver is None and report.summary() == "none"


def test_flaky_gpu_is_reported_not_dropped():
    report = gpu.parse_probe(probe_output("flaky"))
    assert len(report.gpus) == 7
    assert report.errors == ["GPU0000:5D:00.0: Unknown Error"]
    assert not report.healthy
    # plain nvidia-smi printed only the error: driver from the query, max CUDA from the driver table
    assert report.driver == "550.54.15" and report.cuda == "12.4"


def test_round_trip_through_registry_dict():
    report = gpu.parse_probe(probe_output("h100x8"))
    again = gpu.GPUReport.from_dict(report.to_dict())
    assert again == report


@pytest.mark.parametrize("driver, cuda", [("545.29.06", "12.3"), ("550.54.15", "12.4"), ("550.54.14", "12.4"),
                                          ("550.54.13", "12.3"), ("570.86.10", "12.8"), ("470.82.01", None)])
def test_max_cuda_for_driver(driver, cuda):
    assert gpu.max_cuda_for_driver(driver) == cuda


def test_driver_cuda_must_cover_image_cuda():
    assert gpu.check_cuda("12.4", "12.4.1").ok
    assert gpu.check_cuda("12.8", "12.4").ok
    refused = gpu.check_cuda("12.3", "12.4.1", driver="545.29.06")
    assert not refused.ok
    assert "545.29.06" in refused.reason and "12.3" in refused.reason and "550.54.14" in refused.reason
    assert not gpu.check_cuda("12.9", "13.0").ok
    assert not gpu.check_cuda(None, "12.4").ok
    assert gpu.check_cuda(None, None).ok  # a CPU image needs no driver


def test_cuda_major_minor():
    assert gpu.cuda_major_minor("12.4.1") == "12.4"
    with pytest.raises(ValueError):
        gpu.cuda_major_minor("twelve")


def test_unexpected_query_lines_are_errors():
    gpus, errors = gpu.parse_query("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n")
    assert gpus == [] and errors and "couldn't communicate" in errors[0]
