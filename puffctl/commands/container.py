"""`puffctl container ...`: your dev containers on a box (up, ls, sync, exec, shell, logs, down)."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

console = Console()
group = typer.Typer(help="Dev containers on your boxes: labelled with their owner; others' are never touched.",
                    no_args_is_help=True)

TARGET_HELP = "BOX or BOX/NAME (NAME defaults to 'dev')."


@group.command("up")
def up(
    box_name: str = typer.Argument(..., metavar="BOX", help="The box to run the container on."),
    name: str = typer.Option("dev", "--name", help="Your name for this container on the box."),
    gpus: str = typer.Option(None, "--gpus", help="all, a count (2) or device ids (0,1); default none."),
    image: str = typer.Option(None, "--image", help="Image (default: the box's dev image, puffctl-dev:cuda or :cpu)."),
    shm_size: str = typer.Option("8g", "--shm-size", help="/dev/shm size (DataLoader workers need more than 64m)."),
    cpus: float = typer.Option(None, "--cpus", help="CPU limit, e.g. 8 or 2.5."),
    network: str = typer.Option(None, "--network", help="Docker network mode (default: the engine's)."),
) -> None:
    """Start your dev container on BOX, creating it (with a workspace volume) if needed."""
    from puffctl import boxes, containers

    box = boxes.get_box(box_name)
    with boxes.open_box(box_name) as engine:
        container, created = containers.up(engine, box, name=name, image=image, gpus=gpus, shm_size=shm_size,
                                           cpus=cpus, network=network)
    verb = "created" if created else "already there, running"
    console.print(f"[green]{verb}[/] {box_name}/{container.name} ({container.engine_name}, {container.image}, "
                  f"gpus {container.gpus}); next: puffctl container sync {box_name}/{container.name}", highlight=False)


@group.command("info")
def info(target: str = typer.Argument(..., metavar="BOX[/NAME]", help=TARGET_HELP)) -> None:
    """Image and build args (CUDA, torch), Python and key packages inside, workspace commit, extension, disk."""
    from puffctl import boxes, containers
    from puffctl.container_info import container_info

    box_name, name = containers.parse_target(target)
    with boxes.open_box(box_name) as engine:
        found = container_info(engine, name)
    labels = found.labels
    console.print(f"[bold]{box_name}/{found.name}[/] ({found.engine_name}): {found.status}", highlight=False)
    console.print(f"[bold]image[/]      {found.image} ({found.image_id}); CUDA {labels.get('puffctl.cuda') or '-'}, "
                  f"torch {labels.get('puffctl.torch') or '-'}"
                  + (f", base {labels['puffctl.base']}" if labels.get("puffctl.base") else ""), highlight=False)
    inside = found.inside
    if not inside:
        console.print("[dim]not running: start it with `puffctl container up` to see inside[/]")
        return
    packages = ", ".join(f"{k} {v}" for k, v in inside["packages"].items() if v) or "-"
    console.print(f"[bold]python[/]     {inside['python']} ({inside['executable']})", highlight=False)
    console.print(f"[bold]packages[/]   {packages}", highlight=False)
    source = inside.get("source")
    if source:
        dirty = f"dirty (diff sha256 {str(source.get('diff_hash'))[:12]})" if source.get("dirty") else "clean"
        console.print(f"[bold]workspace[/]  {source.get('commit')} {dirty}", highlight=False)
    else:
        console.print(f"[bold]workspace[/]  never synced (`puffctl container sync {box_name}/{found.name}`)", highlight=False)
    extension = inside.get("extension")
    built = "not built (the trainer uses the pure-torch ops)" if not extension else \
        extension.get("error") or f"{extension['flavor']} build at {extension['path']}"
    console.print(f"[bold]extension[/]  {built}", highlight=False)
    console.print(f"[bold]disk[/]       {inside['workspace_bytes'] / 2**20:.1f} MiB in /workspace", highlight=False)


@group.command("ls")
def ls(box_name: str = typer.Argument(None, metavar="[BOX]", help="One box (default: every registered box).")) -> None:
    """puffctl dev containers of every owner, yours marked."""
    from puffctl import boxes, containers

    names = [box_name] if box_name else sorted(boxes.load_registry())
    if box_name:
        boxes.get_box(box_name)
    found = containers.list_on_boxes(names)
    if box_name and isinstance(found[0][1], Exception):
        raise found[0][1]
    me = boxes.owner()
    table = Table(title="dev containers")
    for column in ("box", "name", "owner", "status", "image", "gpus", "shm", "created", "engine name"):
        table.add_column(column)
    for name, listed in found:
        for c in listed if isinstance(listed, list) else []:
            who = f"[bold]{c.owner}[/] (you)" if c.owner == me else c.owner
            table.add_row(name, c.name, who, c.status, c.image, c.gpus, f"{c.shm_mib}m", c.created, c.engine_name)
    console.print(table)
    for name, listed in found:
        if not isinstance(listed, list):
            console.print(f"[red]unreachable[/] {listed}", highlight=False, soft_wrap=True)


@group.command("sync")
def sync(
    target: str = typer.Argument(..., metavar="BOX[/NAME]", help=TARGET_HELP),
    repo: Path = typer.Option(None, "--repo", help="Git work tree to send (default: the one you are in)."),
) -> None:
    """Copy the tree into /workspace (tracked files and untracked ones not ignored), with its provenance."""
    from puffctl import archive, boxes, containers

    box_name, name = containers.parse_target(target)
    root = archive.repo_root(repo)
    with boxes.open_box(box_name) as engine, console.status(f"syncing {root} to {target}"):
        result = containers.sync(engine, name, root)
    dirty = " (dirty)" if result.source["dirty"] else ""
    commit = (result.source["commit"] or "no commit")[:12]
    console.print(f"[green]synced[/] {result.files} files ({result.bytes / 2**20:.1f} MiB) to {box_name}/{name}:"
                  f"/workspace at {commit}{dirty}; removed {result.removed} no longer tracked", highlight=False)


@group.command("exec")
def exec_(
    target: str = typer.Argument(..., metavar="BOX[/NAME]", help=TARGET_HELP),
    command: list[str] = typer.Argument(..., metavar="-- CMD...", help="The command and its arguments."),
    env: list[str] = typer.Option([], "--env", "-e", help="KEY=VALUE for the command; repeatable."),
    workdir: str = typer.Option("/workspace", "--workdir", "-w", help="Working directory in the container."),
) -> None:
    """Run a command in your dev container, streaming its output; exits with the command's exit code."""
    from puffctl import boxes, containers
    from puffctl.errors import PuffctlError

    variables = {}
    for item in env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise PuffctlError(f"bad --env {item!r}: use KEY=VALUE")
        variables[key] = value
    box_name, name = containers.parse_target(target)

    def show(kind: str, data: bytes) -> None:
        stream = sys.stdout if kind == "stdout" else sys.stderr
        stream.buffer.write(data)
        stream.flush()

    with boxes.open_box(box_name) as engine:
        container = containers.resolve(engine, name, verb="exec in")
        if container.status != "running":
            raise PuffctlError(f"container {container.name} is {container.status}: "
                               f"`puffctl container up {box_name} --name {name}` first")
        stream = containers.exec_stream(engine, container.id, command, env=variables or None, workdir=workdir)
        try:
            for kind, data in stream:
                show(kind, data)
        except KeyboardInterrupt:
            console.print(f"\nstopped watching; the command keeps running in {container.name} "
                          f"(exec {stream.id[:12]})", highlight=False)
            raise typer.Exit(130) from None
        code = stream.exit_code
    raise typer.Exit(code)


@group.command("shell")
def shell(target: str = typer.Argument(..., metavar="BOX[/NAME]", help=TARGET_HELP)) -> None:
    """An interactive shell (bash if the image has it) in your dev container."""
    from puffctl import boxes, containers

    box_name, name = containers.parse_target(target)
    with boxes.open_box(box_name) as engine:
        code = containers.shell(engine, name)
    raise typer.Exit(code)


@group.command("logs")
def logs(
    target: str = typer.Argument(..., metavar="BOX[/NAME]", help=TARGET_HELP),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new output."),
    tail: int = typer.Option(None, "--tail", help="Only the last N lines."),
) -> None:
    """Output of your dev container's main process."""
    from puffctl import boxes, containers

    box_name, name = containers.parse_target(target)
    with boxes.open_box(box_name) as engine:
        try:
            for chunk in containers.logs(engine, name, follow=follow, tail=tail):
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
        except KeyboardInterrupt:
            pass


@group.command("down")
def down(
    target: str = typer.Argument(..., metavar="BOX[/NAME]", help=TARGET_HELP),
    purge: bool = typer.Option(False, "--purge", help="Also delete the container's /workspace volume (run dirs!)."),
) -> None:
    """Stop and remove your dev container (never anyone else's, never a non-puffctl one)."""
    from puffctl import boxes, containers

    box_name, name = containers.parse_target(target)
    with boxes.open_box(box_name) as engine:
        removed = containers.down(engine, name, purge=purge)
    kept = "workspace volume deleted" if purge else "workspace volume kept (--purge deletes it)"
    console.print(f"[green]removed[/] {removed} on {box_name}; {kept}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add the `container` group to the root app."""
    app.add_typer(group, name="container")
