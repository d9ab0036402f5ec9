"""The fleet view: per box, per GPU, what it is, how busy it is and whose container or run holds it.

GPU facts come from nvidia-smi in a throwaway container (boxes.probe_gpus); holders from the
puffctl labels and GPU requests of the dev containers on the box, and from the local run store's
runs on that box (their --gpu). A GPU is idle when nothing computes on it and it holds almost no
memory, whoever has reserved it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from puffctl.errors import PuffctlError

if TYPE_CHECKING:
    from puffctl.boxes import Box
    from puffctl.engine import Engine
    from puffctl.gpu import GPUReport

#: At most this much used memory (MiB) and 0 % utilization: the GPU counts as idle.
IDLE_MEMORY_MIB = 500


@dataclass
class GPUSlot:
    """One GPU of one box as the fleet view shows it."""

    box: str
    index: int
    name: str
    memory_used_mib: int
    memory_mib: int
    utilization: int | None
    holders: list[str] = field(default_factory=list)

    @property
    def idle(self) -> bool:
        return (self.utilization or 0) == 0 and self.memory_used_mib <= IDLE_MEMORY_MIB


@dataclass
class BoxGPUs:
    """A box's GPUs, or why they could not be read."""

    box: Box
    slots: list[GPUSlot] = field(default_factory=list)
    error: str | None = None


def container_gpus(device_requests: list[dict] | None, report: GPUReport) -> list[int]:
    """GPU indices a container's DeviceRequests hold: all (-1), a count (the first N), or ids (indices or UUIDs)."""
    indices = [gpu.index for gpu in report.gpus]
    held: list[int] = []
    for request in device_requests or []:
        ids = request.get("DeviceIDs") or []
        if ids:
            by_uuid = {gpu.uuid: gpu.index for gpu in report.gpus}
            held += [int(i) if str(i).isdigit() else by_uuid[i] for i in ids if str(i).isdigit() or i in by_uuid]
        elif request.get("Count"):
            held += indices if request["Count"] == -1 else indices[: request["Count"]]
    return sorted(set(held))


def slots(box: str, report: GPUReport, containers: Iterable[tuple[str, list[dict] | None]],
          box_runs: Iterable[tuple[str, str]] = ()) -> list[GPUSlot]:
    """The fleet rows of one box from its nvidia-smi report, its dev containers' (who, DeviceRequests)
    and the runs on it as (run id, CUDA_VISIBLE_DEVICES)."""
    rows = {gpu.index: GPUSlot(box, gpu.index, gpu.name, gpu.memory_used_mib, gpu.memory_mib, gpu.utilization)
            for gpu in report.gpus}
    for who, requests in containers:
        for index in container_gpus(requests, report):
            if index in rows:
                rows[index].holders.append(f"container {who}")
    for run_id, visible in box_runs:
        for part in (visible or "").split(","):
            if part.strip().isdigit() and int(part) in rows:
                rows[int(part)].holders.append(f"run {run_id}")
    return [rows[index] for index in sorted(rows)]


def box_gpus(engine: Engine, box: Box, box_runs: list[tuple[str, str]]) -> BoxGPUs:
    """Probe a connected box's GPUs and who holds them."""
    from puffctl import boxes

    if box.cpu_only:
        return BoxGPUs(box, error="CPU-only box")
    try:
        report = boxes.probe_gpus(engine, box.default_image) if boxes._image_present(engine, box.default_image) \
            else None
    except PuffctlError as error:
        return BoxGPUs(box, error=str(error).split(": ", 1)[-1])
    if report is None:
        return BoxGPUs(box, error=f"{box.default_image} is not on the box to run nvidia-smi in (`puffctl box provision {box.name}`)")
    listed = engine.client.api.containers(filters={"label": f"{boxes.LABEL_PURPOSE}=dev"})
    held = []
    for container in listed:
        labels = container.get("Labels") or {}
        requests = engine.client.api.inspect_container(container["Id"])["HostConfig"].get("DeviceRequests")
        held.append((f"{labels.get(boxes.LABEL_OWNER, '?')}/{labels.get(boxes.LABEL_NAME, '?')}", requests))
    found = BoxGPUs(box, slots(box.name, report, held, box_runs))
    if report.errors:
        found.error = "; ".join(report.errors)
    return found


def fleet(runs_root=None) -> list[BoxGPUs]:
    """Every registered box's GPUs, reached in parallel; an unreachable box carries its error."""
    from concurrent.futures import ThreadPoolExecutor

    from puffctl import boxes, remote, runs

    registered = list(boxes.load_registry().values())
    on_box: dict[str, list[tuple[str, str]]] = {}
    for run in runs.list_runs(runs.runs_root(runs_root), status="running"):
        where = remote.Remote.of(run.launch)
        if where is not None and where.gpus:
            on_box.setdefault(where.box, []).append((run.run_id, where.gpus))

    def one(box: Box) -> BoxGPUs:
        try:
            with boxes.open_box(box.name) as engine:
                return box_gpus(engine, box, on_box.get(box.name, []))
        except PuffctlError as error:
            return BoxGPUs(box, error=f"unreachable: {error}")

    if not registered:
        return []
    with ThreadPoolExecutor(max_workers=min(8, len(registered))) as pool:
        return list(pool.map(one, registered))
