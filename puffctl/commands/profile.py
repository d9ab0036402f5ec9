"""`puffctl profile list|show|validate`: the named training profiles."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from puffctl.errors import PuffctlError

console = Console()
profile_app = typer.Typer(help="Named training profiles (profiles/*.yaml): list, show, validate.", no_args_is_help=True)


@profile_app.command("list")
def list_profiles() -> None:
    """Table of the named profiles: name, extends, env, algorithm and description."""
    from puffctl import profiles
    from puffctl.dashboard import fit_width

    fit_width(console)
    table = Table(title="profiles")
    for column in ("name", "extends", "env", "algorithm", "description"):
        table.add_column(column, overflow="fold" if column == "description" else "ellipsis")
    for name in profiles.available():
        try:
            profile = profiles.load(name)
            config = profiles.resolve(profile.overrides, f"profile {name}")
        except PuffctlError as error:
            table.add_row(name, "", "", "[red]invalid[/]", escape(str(error)))
            continue
        table.add_row(
            name, profile.extends, str(config["env"]["name"]), profiles.algorithm(config), escape(profile.description)
        )
    console.print(table)


@profile_app.command("show")
def show(
    name: str = typer.Argument(..., help="Profile name (profiles/NAME.yaml) or a YAML file path."),
    resolved: bool = typer.Option(False, "--resolved", help="Show the full config the trainer gets: every key, defaults included."),
) -> None:
    """Print a profile with its `extends` chain merged (or fully resolved with --resolved)."""
    from rich.syntax import Syntax

    from puffctl import profiles

    profile = profiles.load(name)
    chain = " <- ".join(path.stem for path in profile.chain)
    console.print(f"[dim]# {profile.name}: {escape(str(profile.path))}  (chain: {escape(chain)})[/]", highlight=False)
    if resolved:
        data = profiles.resolve(profile.overrides, f"profile {profile.name}")
        console.print(f"[dim]# algorithm: {profiles.algorithm(data)}[/]", highlight=False)
    else:
        data = profile.merged
    console.print(Syntax(profiles.to_yaml(data), "yaml", theme="ansi_dark", background_color="default"))


@profile_app.command("validate")
def validate(file: Path = typer.Argument(..., help="A profile YAML file (may extend a named profile).")) -> None:
    """Check a profile file against the trainer's config schema; exit 2 with the first problem."""
    from puffctl import profiles

    if not file.is_file():
        raise PuffctlError(f"no such profile file: {file}")
    profile = profiles.load(str(file.resolve()))
    config = profiles.resolve(profile.overrides, str(file))
    console.print(
        f"[green]ok[/] {escape(str(file))}: env {escape(str(config['env']['name']))}, {profiles.algorithm(config)}, "
        f"{config['train']['total_timesteps']:,} steps",
        highlight=False,
    )


def register(app: typer.Typer) -> None:
    """Add the `profile` group to the root app."""
    app.add_typer(profile_app, name="profile")
