"""The `puffctl` command line: a light root that imports a command group only when it runs.

`COMMANDS` is the one registry: a new group is one entry (its module exposes `register(app)`).
The root's help and shell completion read the registry's help lines, so `puffctl --help` and a
Tab on the first word import no command module (and no rich).
"""

from __future__ import annotations

import importlib
import os
import sys

import click
import typer
from typer.core import TyperGroup

from puffctl.errors import PuffctlError

#: command name -> (module whose `register(app)` adds it, the one-line help `puffctl --help` shows).
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("puffctl.commands.train", "Train a profile and watch it: summary, SPS, where each epoch's time goes, losses, env stats."),
    "ablate": ("puffctl.commands.ablate", "Ablation batches: a YAML spec of variants x seeds run as ordinary runs, resumable, reported with seed-aggregated confidence intervals (docs/ablate.md)."),
    "sweep": ("puffctl.commands.sweep", "Hyperparameter sweeps: a YAML spec of searched keys (linear, log, logit, pow2, int spaces) tuned by Optuna (random, its default, or cost-aware), each trial a fresh run through the ablation engine, resumable, reported with the cost/score Pareto front (docs/sweep.md)."),
    "eval": ("puffctl.commands.evaluate", "Play a run's checkpoint without training: the eval score with a 95% CI, next to the training score."),
    "runs": ("puffctl.commands.runs", "The local run store: list, show, tail, attach, stop, compare, pin, checkout, rm."),
    "profile": ("puffctl.commands.profile", "Named training profiles (profiles/*.yaml): list, show, validate."),
    "build": ("puffctl.commands.toolchain", "Compile the C++/CUDA advantage ops, cached by source hash and torch/CUDA version."),
    "doctor": ("puffctl.commands.toolchain", "Check Python, torch, CUDA, nvcc, the C++ compiler and the extension; each with a hint."),
    "box": ("puffctl.commands.box", "GPU boxes: Docker engines reached over unix:// or ssh://, their health and dev image."),
    "container": ("puffctl.commands.container", "Dev containers on your boxes: labelled with their owner; others' are never touched."),
}

class LazyGroup(TyperGroup):
    """A typer group whose commands come from `COMMANDS`, each module imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(dict.fromkeys([*COMMANDS, *self.commands]))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            self.commands[cmd_name] = load(cmd_name)
        return self.commands.get(cmd_name)

    def get_help_option(self, ctx: click.Context):
        option = super().get_help_option(ctx)
        if option is not None:
            option.default = False  # typer's default None sends every Tab through its pydantic coercion
        return option

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][1]) for name in COMMANDS]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def shell_complete(self, ctx: click.Context, incomplete: str) -> list:
        from click.shell_completion import CompletionItem

        names = [CompletionItem(name, help=text) for name, (_, text) in COMMANDS.items() if name.startswith(incomplete)]
        return names + click.Command.shell_complete(self, ctx, incomplete)

def load(name: str) -> click.Command:
    """Import the module behind command `name` and return its click command (a group or a command)."""
    module = importlib.import_module(COMMANDS[name][0])
    holder = typer.Typer()
    module.register(holder)
    return typer.main.get_group(holder).commands[name]

app = typer.Typer(
    name="puffctl",
    cls=LazyGroup,
    help="Experiment orchestrator for RL research: GPU boxes and their dev containers, the "
    "advantage extension, training profiles with a live profiling table, and a run store.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

@app.callback()
def root() -> None:
    """The root group: its commands come from COMMANDS."""

def main() -> None:
    """Console entry point: run the app, turning PuffctlError into one line and its exit code.

    `_PUFFCTL_COMPLETE=source_bash puffctl` prints the bash completion script (zsh, fish too);
    the root has no --install-completion option because its parameter types would cost every Tab.
    """
    if os.environ.get("_PUFFCTL_COMPLETE"):
        from typer.completion import completion_init

        completion_init()
    try:
        app()
    except PuffctlError as error:
        from rich.console import Console

        Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {error}", highlight=False)
        sys.exit(error.exit_code)
