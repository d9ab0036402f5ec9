"""`puffctl box ...`: register Docker engines (local or over SSH), see them, check and provision them."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from puffctl.errors import PuffctlError

console = Console()
group = typer.Typer(help="GPU boxes: Docker engines reached over unix:// or ssh://, their health and dev image.",
                    no_args_is_help=True)

_MARKS = {"pass": "[green]pass[/]", "fail": "[red]fail[/]", "skip": "[yellow]skip[/]"}


@group.command("add")
def add(
    name: str = typer.Argument(..., help="Short name for the box: lowercase letters, digits, '-', '_'."),
    host: str = typer.Option(..., "--host", help="ssh://user@host[:port] (your ssh config and agent apply) "
                             "or unix:///var/run/docker.sock."),
    cpu_only: bool = typer.Option(False, "--cpu-only", help="A box without GPUs: GPU checks are skipped, "
                                  "the CPU image is its default."),
    owner_note: str = typer.Option("", "--owner", help="Whose box it is / who to ask, shown in `box list`."),
) -> None:
    """Register a box (nothing is contacted; run `puffctl box check NAME` next)."""
    from puffctl import boxes

    box = boxes.add_box(name, host, cpu_only=cpu_only, owner_note=owner_note)
    console.print(f"[green]added[/] box [bold]{box.name}[/] at {box.host}"
                  f"{' (CPU only)' if box.cpu_only else ''}; next: puffctl box check {box.name}", highlight=False)


@group.command("set")
def set_(
    name: str = typer.Argument(..., help="The box to change."),
    host: str = typer.Option(None, "--host", help="A new ssh:// or unix:// address."),
    owner_note: str = typer.Option(None, "--owner", help="Whose box it is / who to ask ('' clears it)."),
    cpu_only: bool = typer.Option(None, "--cpu-only/--gpus", help="Mark it CPU-only, or as a GPU box."),
) -> None:
    """Change a box's address, owner note or CPU-only mark (nothing is contacted)."""
    from puffctl import boxes

    if host is None and owner_note is None and cpu_only is None:
        raise PuffctlError("nothing to change: give --host, --owner or --cpu-only/--gpus")
    box = boxes.set_box(name, host=host, owner_note=owner_note, cpu_only=cpu_only)
    console.print(f"box [bold]{box.name}[/]: {box.host}{' (CPU only)' if box.cpu_only else ''}"
                  f"{f', owner {box.owner}' if box.owner else ''}", highlight=False)


@group.command("list")
def list_(
    gpus: bool = typer.Option(False, "--gpus", help="The fleet view: per box, per GPU, model, memory used, "
                              "utilization, whose container or run holds it; idle GPUs flagged (runs nvidia-smi now)."),
) -> None:
    """Every box: owner, reachable?, Docker version, GPUs, driver/CUDA (from the last check), puffctl containers."""
    from puffctl import boxes
    from puffctl.gpu import GPUReport

    if gpus:
        _fleet()
        return

    statuses = boxes.list_status()
    if not statuses:
        console.print("no boxes yet: puffctl box add NAME --host ssh://user@host")
        return
    table = Table(title="boxes")
    for column in ("box", "owner", "host", "reachable", "docker", "gpus", "driver / max CUDA", "containers (mine)", "health"):
        table.add_column(column)
    for status in statuses:
        box, health = status.box, status.box.health
        report = GPUReport.from_dict(health["gpus"]) if health.get("gpus") else None
        gpus = "cpu only" if box.cpu_only else (report.summary() if report else "? (run box check)")
        driver = f"{report.driver} / {report.cuda}" if report and report.driver else "-"
        when = f" {_age(health['checked'])} ago" if health.get("checked") else ""
        state = health.get("status", "unchecked")
        colour = {"healthy": "green", "unhealthy": "red"}.get(state, "yellow")
        failed = f" ({', '.join(health.get('failed', []))})" if health.get("failed") else ""
        table.add_row(box.name, box.owner or "-", box.host,
                      "[green]yes[/]" if status.reachable else "[red]no[/]",
                      f"{status.docker_version} (API {status.api_version})" if status.reachable else "-",
                      gpus, driver,
                      f"{status.containers_running}/{status.containers_total} ({status.mine_running})"
                      if status.reachable else "-",
                      f"[{colour}]{state}[/]{failed}{when}")
    console.print(table)
    for status in statuses:
        if not status.reachable:
            console.print(f"[red]unreachable[/] {status.error}", highlight=False, soft_wrap=True)


def _fleet() -> None:
    from puffctl import fleet

    found = fleet.fleet()
    if not found:
        console.print("no boxes yet: puffctl box add NAME --host ssh://user@host")
        return
    table = Table(title="fleet")
    for column in ("box", "owner", "gpu", "model", "memory used", "util", "held by", ""):
        table.add_column(column, justify="right" if column in ("gpu", "memory used", "util") else "left")
    idle = 0
    for entry in found:
        for slot in entry.slots:
            idle += slot.idle
            table.add_row(entry.box.name, entry.box.owner or "-", str(slot.index), slot.name,
                          f"{slot.memory_used_mib / 1024:.1f} / {slot.memory_mib / 1024:.0f} GiB",
                          "-" if slot.utilization is None else f"{slot.utilization}%",
                          ", ".join(slot.holders) or "-", "[green]idle[/]" if slot.idle else "")
        if entry.error:
            table.add_row(entry.box.name, entry.box.owner or "-", "-", f"[yellow]{escape(entry.error)}[/]",
                          "", "", "", "")
    console.print(table)
    console.print(f"{idle} idle GPU(s) of {sum(len(entry.slots) for entry in found)}", highlight=False)


def _age(then: float) -> str:
    seconds = max(0, time.time() - then)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


@group.command("rm")
def rm(name: str = typer.Argument(..., help="The box to forget.")) -> None:
    """Forget a box. Its containers stay on the box untouched."""
    from puffctl import boxes

    box = boxes.remove_box(name)
    console.print(f"removed box [bold]{box.name}[/] ({box.host})", highlight=False)


def _print_report(report) -> None:
    for line in report.lines:
        console.print(f"{_MARKS[line.status]}  [bold]{line.name}[/]: {line.detail}", highlight=False)
        if line.status == "fail" and line.hint:
            console.print(f"      fix: {line.hint}", highlight=False)
    state = "[green]healthy[/]" if report.healthy else "[red]unhealthy[/] (marked in `puffctl box list`)"
    console.print(f"box [bold]{report.box.name}[/]: {state}")


@group.command("check")
def check(
    name: str = typer.Argument(..., help="The box to check."),
    image: str = typer.Option(None, "--image", help="Image to run the probes in (default: the box's dev image)."),
    min_disk_gb: float = typer.Option(20.0, "--min-disk-gb", help="Free disk Docker needs, in GiB."),
    shm_size: str = typer.Option("8g", "--shm-size", help="Shared memory to test a container with."),
) -> None:
    """Engine and API, NVIDIA runtime, GPUs in a container, driver vs image CUDA, disk, /dev/shm."""
    from puffctl import boxes

    report = boxes.check_box(name, image=image, min_disk_gb=min_disk_gb, shm_size=shm_size)
    _print_report(report)
    if not report.healthy:
        raise typer.Exit(1)


@group.command("provision")
def provision(
    name: str = typer.Argument(..., help="The box to build the dev image on."),
    variant: str = typer.Option("cuda", "--variant", help="cuda (CUDA devel base) or cpu."),
    build_arg: list[str] = typer.Option([], "--build-arg", help="KEY=VALUE overriding a build argument "
                                        "(BASE_IMAGE, IMAGE_CUDA, TORCH_VERSION, TORCH_INDEX_URL, TORCH_CUDA_ARCH_LIST); repeatable."),
    dockerfile: str = typer.Option("containers/Dockerfile", "--dockerfile", help="Dockerfile, relative to the repo."),
    repo: Path = typer.Option(None, "--repo", help="The git work tree to send as build context (default: this one)."),
    tag: str = typer.Option(None, "--tag", help="Image tag (default: puffctl-dev:<variant>)."),
    network: str = typer.Option(None, "--network", help="Network for RUN steps (default: the engine's)."),
    check_after: bool = typer.Option(True, "--check/--no-check", help="Run `box check` with the new image."),
    min_disk_gb: float = typer.Option(20.0, "--min-disk-gb", help="Free disk the check requires, in GiB."),
    match: bool = typer.Option(False, "--match-driver", help="Pick the newest known CUDA devel base the box's driver "
                               "(from its last `box check`) supports, and the torch built for it; recorded as image labels."),
    torch_index: str = typer.Option(None, "--torch-index", metavar="ROOT", envvar="PUFFCTL_TORCH_INDEX",
                                    help="Root of PyTorch's wheel index, for torch builds not on the default index "
                                    "(ROOT/cu118 ...)."),
) -> None:
    """Build or update the dev image on the box (context: the repo's git-tracked files), then check it."""
    from rich.status import Status

    from puffctl import boxes
    from puffctl.archive import repo_root

    box = boxes.get_box(name)
    root = repo_root(repo)
    matched = None
    if match:
        if variant != "cuda" or box.cpu_only:
            raise PuffctlError("--match-driver picks a CUDA base: it goes with a GPU box and --variant cuda")
        driver = (box.health.get("gpus") or {}).get("driver")
        if not driver:
            raise PuffctlError(f"no driver known for box {name}: run `puffctl box check {name}` first")
        matched = boxes.match_driver(driver, torch_index)
        index = matched["TORCH_INDEX_URL"]
        console.print(f"driver {driver}: CUDA {matched['IMAGE_CUDA']} base {matched['BASE_IMAGE']}, "
                      f"torch {matched['TORCH_VERSION']}{f' from {index}' if index else ''}", highlight=False, markup=False)
    started = time.monotonic()
    with boxes.open_box(name) as engine, Status(f"building on {name}: sending context", console=console) as status:
        def on_line(line: str) -> None:
            if line.startswith("Step ") or line.startswith("Successfully"):
                console.print(f"  {line}", highlight=False, markup=False)
            status.update(f"building on {name} ({time.monotonic() - started:.0f} s): {line[:100]}")

        image = boxes.provision(engine, box, root, variant=variant, overrides=build_arg, dockerfile=dockerfile,
                                tag=tag, on_line=on_line, network_mode=network, matched=matched)
        status.stop()
        console.print(f"[green]built[/] {image} on {name} in {time.monotonic() - started:.0f} s", highlight=False)
        if check_after:
            report = boxes.run_checks(engine, box, image, min_disk_gb=min_disk_gb)
            boxes.record_check(report)
    if check_after:
        _print_report(report)
        if not report.healthy:
            raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add the `box` group to the root app."""
    app.add_typer(group, name="box")
