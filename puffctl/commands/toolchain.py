"""`puffctl build` and `puffctl doctor`: the advantage extension and the toolchain around it."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

console = Console()


def build(
    clean: bool = typer.Option(False, "--clean", help="Delete cached builds for these sources first and compile from scratch."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show every compiler command and its full output."),
    flavor: str = typer.Option("auto", "--flavor", help="auto (CUDA when torch has CUDA and nvcc exists), cpu or cuda."),
) -> None:
    """Compile the C++/CUDA advantage ops, cached by source hash and torch/CUDA version."""
    from puffctl import build as build_module

    result = build_module.build(clean=clean, verbose=verbose, flavor=flavor, console=console)
    state = "cached build, nothing to compile" if result.cached else f"built in {result.seconds:.1f} s"
    console.print(f"[green]ok[/] {result.flavor} extension: {state}\n   {result.library}")


def doctor() -> None:
    """Check Python, torch, CUDA, nvcc, the C++ compiler and the extension; each with a hint."""
    from puffctl import doctor as doctor_module

    checks = doctor_module.run_checks()
    table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    for column in ("", "check", "detail", "hint"):
        table.add_column(column, overflow="fold")
    for check in checks:
        mark = "[green]ok[/]" if check.ok else ("[red]problem[/]" if check.required else "[yellow]problem[/]")
        table.add_row(mark, check.name, check.detail, "" if check.ok else check.hint)
    console.print(table)
    if not all(check.ok for check in checks if check.required):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add `build` and `doctor` to the root app."""
    app.command()(build)
    app.command()(doctor)
