"""The `puffctl` command line: the root app, its command groups, and one-line errors."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from puffctl.commands import ablate, box, container, profile, runs, toolchain, train
from puffctl.errors import PuffctlError

app = typer.Typer(
    name="puffctl",
    help="Experiment orchestrator for RL research: GPU boxes and their dev containers, the "
    "advantage extension, training profiles with a live profiling table, and a run store.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

for group in (toolchain, train, runs, profile, box, container, ablate):
    group.register(app)


def main() -> None:
    """Console entry point: run the app, turning PuffctlError into one line and its exit code."""
    try:
        app()
    except PuffctlError as error:
        Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {error}", highlight=False)
        sys.exit(error.exit_code)
