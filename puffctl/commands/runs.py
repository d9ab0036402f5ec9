"""`puffctl runs list|show|tail|rm`: the local run store."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from puffctl.errors import PuffctlError

console = Console()
runs_app = typer.Typer(help="The local run store: list, show, tail, attach, stop, compare, pin, checkout, rm.\n\nRuns live in ./runs, $PUFFCTL_RUNS_DIR or --runs-dir.", no_args_is_help=True)

RunsDir = typer.Option(None, "--runs-dir", help="Runs root (default: $PUFFCTL_RUNS_DIR, else ./runs).")
STATUS_STYLE = {"running": "cyan", "completed": "green", "failed": "bold red", "interrupted": "yellow", "lost": "red",
                "unreachable": "magenta"}


def _when(stamp: float | None) -> str:
    return "-" if stamp is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(stamp))


@runs_app.command("list")
def list_runs(
    status: Optional[str] = typer.Option(None, "--status", help="Only runs in this status: running, completed, failed, interrupted, lost, unreachable (a box run whose box does not answer)."),
    profile: Optional[str] = typer.Option(None, "--profile", help="Only runs launched from this profile."),
    runs_dir: Optional[Path] = RunsDir,
) -> None:
    """Table of runs, newest first: id, profile, env, status, steps, SPS, best return, started, duration."""
    from puffctl import remote, runs
    from puffctl.dashboard import fit_width, human_count, human_duration, human_value

    fit_width(console)
    root = runs.runs_root(runs_dir)
    found = runs.list_runs(root, profile=profile)
    for run_id, now in remote.remote_statuses(found).items():
        next(run for run in found if run.run_id == run_id).status = now
    if status is not None:
        runs.check_status(status)
        found = [run for run in found if run.status == status]
    table = Table(title=f"runs in {escape(str(root))}")
    for column in ("id", "profile", "env", "box", "status", "steps", "SPS", "best return", "started", "duration"):
        table.add_column(column, justify="right" if column in ("steps", "SPS", "best return", "duration") else "left")
    for run in found:
        state = run.state
        table.add_row(
            run.run_id,
            run.profile or "-",
            run.env_name or "-",
            (run.launch.get("remote") or {}).get("box", "-"),
            f"[{STATUS_STYLE.get(run.status, 'none')}]{run.status}[/]",
            human_count(state.agent_steps),
            human_count(state.sps),
            human_value(state.best_return),
            _when(state.started or run.launch.get("created")),
            human_duration(state.duration),
        )
    console.print(table)
    if not found:
        console.print("[dim]no runs[/]")


@runs_app.command("show")
def show(run_id: str = typer.Argument(..., metavar="RUN"), runs_dir: Optional[Path] = RunsDir) -> None:
    """A run's final table, status and failure reason, git commit, checkpoints and resolved config."""
    from rich.syntax import Syntax

    from puffctl import runs
    from puffctl.dashboard import fit_width, render
    from trainer.runlock import describe

    fit_width(console)
    run = runs.get_run(runs.runs_root(runs_dir), run_id)
    run.state.status, run.state.reason = run.status, run.reason
    console.print(render(run.state))
    console.print()
    style = STATUS_STYLE.get(run.status, "none")
    console.print(f"[bold]status[/]   [{style}]{run.status}[/]" + (f": {escape(run.reason)}" if run.reason else ""), highlight=False)
    if run.status == "lost":
        console.print(f"         [dim]status.json says running, but pid {run.status_file.get('pid')} is gone and no process holds the run (killed or crashed)[/]")
    elif run.holder is not None:
        console.print(f"         [dim]held by {escape(describe(run.holder))}[/]")
    if run.state.damaged_lines:
        lines = ", ".join(map(str, run.state.damaged_lines))
        console.print(f"[yellow]warning[/]: events.jsonl line(s) {lines} are damaged (a writer was killed mid-line); skipped them", highlight=False)
    console.print(f"[bold]profile[/]  {escape(run.profile or '-')}" + (f"  --set {' '.join(run.launch['sets'])}" if run.launch.get("sets") else ""), highlight=False)
    git = run.state.git or runs.read_json(run.path / "source.json") or None
    if git:
        dirty = f"dirty (diff sha256 {str(git.get('diff_hash'))[:12]})" if git.get("dirty") else "clean"
        console.print(f"[bold]git[/]      {git.get('commit')} {dirty}", highlight=False)
        if git.get("dirty"):
            stored = (run.path / "source.patch").is_file()
            console.print(f"         [dim]{'patch stored: puffctl runs checkout ' + run.run_id if stored else escape(git.get('patch_note') or 'no source.patch: the uncommitted changes cannot be restored')}[/]", highlight=False)
    else:
        console.print("[bold]git[/]      unknown (not run from a git checkout)")
    console.print(f"[bold]started[/]  {_when(run.state.started)}  host {escape(run.state.host or '-')}  device {escape(run.state.device or '-')}", highlight=False)
    evals = runs.read_jsonl(run.path / "evals.jsonl") if (run.path / "evals.jsonl").is_file() else []
    for record in evals[-3:]:
        ci = record.get("ci95")
        interval = f" [{ci[0]:.4g}, {ci[1]:.4g}]" if ci else ""
        what = "random actions" if record.get("random") else record.get("checkpoint")
        console.print(f"[bold]eval[/]     {record.get('mean', float('nan')):.4g}{interval} over {record.get('episodes')} episodes, {escape(str(what))}"
                      + (" (deterministic)" if record.get("deterministic") else ""), highlight=False)
    files = run.checkpoint_files()
    console.print(f"[bold]checkpoints[/] ({len(files)})")
    for path in files:
        console.print(f"  {escape(str(path.relative_to(run.path)))}  {path.stat().st_size / 1e6:.2f} MB  {_when(path.stat().st_mtime)}", highlight=False)
    config_path = run.path / "config.yaml"
    if config_path.is_file():
        console.print("[bold]config[/] (resolved)")
        console.print(Syntax(config_path.read_text(encoding="utf-8"), "yaml", theme="ansi_dark", background_color="default"))


@runs_app.command("tail")
def tail(
    run_id: str = typer.Argument(..., metavar="RUN"),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep showing new events until the run ends."),
    runs_dir: Optional[Path] = RunsDir,
) -> None:
    """The live table of a run from its events (running or finished); -f follows it."""
    from puffctl import runs
    from puffctl.dashboard import Dashboard, fit_width, render
    from puffctl.events import RunState, Tail, follow as follow_events

    fit_width(console)
    root = runs.runs_root(runs_dir)
    run = runs.get_run(root, run_id)
    reader = Tail(run.path / "events.jsonl")
    state = RunState(run_id=run.run_id)
    for event in reader.read():
        state.apply(event)
    state.note_damaged(reader.damaged)
    if not follow or run.status != "running":
        console.print(render(state))
        if follow:
            console.print(f"[dim]run {run.run_id} is {run.status}; nothing to follow[/]")
        return
    checked = [time.monotonic()]

    def gone() -> bool:
        if time.monotonic() - checked[0] < 1.0:
            return False
        checked[0] = time.monotonic()
        return runs.get_run(root, run_id).status != "running"

    try:
        with Dashboard(console) as board:
            board.start(state)
            for event in follow_events(reader, stop=gone):
                state.apply(event)
                board.update(state, event)
            board.stop(state)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    final = runs.get_run(root, run_id)
    if final.status == "lost":
        console.print(f"[red]lost[/]: run {run_id} stopped without an end event (pid {final.status_file.get('pid')} is gone)")


@runs_app.command("compare")
def compare(
    names: list[str] = typer.Argument(..., metavar="RUN...", help="Run ids, pinned names or run directories; the first is the reference."),
    metric: Optional[str] = typer.Option(None, "--metric", metavar="KEY", help="What to compare: an env stat (default: the return), losses.KEY, or sps."),
    png: Optional[Path] = typer.Option(None, "--png", metavar="FILE", help="Also write the overlaid curves to this PNG."),
    runs_dir: Optional[Path] = RunsDir,
) -> None:
    """Runs side by side: overlaid curves, the metric at matched steps (25/50/75/100% of the
    shortest run) with the difference to the first run, SPS, and the config and provenance
    keys that differ."""
    from puffctl import compare as comparing, runs
    from puffctl.dashboard import fit_width, human_count, human_value

    fit_width(console)
    result = comparing.compare(runs.runs_root(runs_dir), names, metric)
    colors = ("cyan", "magenta", "green", "yellow", "blue", "red", "white")
    table = Table(title=f"{escape(result.metric)} at matched steps (difference to {escape(result.curves[0].run_id)})")
    table.add_column("run")
    for step in result.matched_steps:
        table.add_column(human_count(step), justify="right")
    table.add_column("SPS (median)", justify="right")
    values = result.values_at_matched()
    for index, (curve, row, sps) in enumerate(zip(result.curves, values, result.sps())):
        cells = []
        for column, value in enumerate(row):
            base = values[0][column]
            delta = "" if index == 0 or value is None or base is None else f" ({value - base:+.4g})"
            cells.append(human_value(value) + delta)
        table.add_row(f"[{colors[index % len(colors)]}]{escape(curve.run_id)}[/]", *cells, human_count(sps))
    console.print(table)
    grid, low, high, end = comparing.text_plot(result.curves, width=max(20, min(console.width - 12, 100)))
    for number, cells in enumerate(grid):
        label = human_value(high) if number == 0 else human_value(low) if number == len(grid) - 1 else ""
        line = f"{label:>9} |" + "".join(" " if cell is None else f"[{colors[cell % len(colors)]}]\u2022[/]" for cell in cells)
        console.print(line, highlight=False)
    console.print(f"{'':>9} 0{'agent steps':^{len(grid[0]) - 8}}{human_count(end):>7}", highlight=False)
    for title, rows in (("config", result.config_diff), ("provenance", result.provenance_diff)):
        if not rows:
            console.print(f"[dim]{title}: the same in every run[/]")
            continue
        diff = Table(title=f"{title} that differs")
        diff.add_column("key")
        for curve in result.curves:
            diff.add_column(escape(curve.run_id))
        for key, cells in rows:
            diff.add_row(escape(key), *(escape("-" if cell is None else str(cell)) for cell in cells))
        console.print(diff)
    if png is not None:
        console.print(f"wrote {escape(str(comparing.png_plot(result, png)))}", highlight=False)


@runs_app.command("pin")
def pin(
    run_id: Optional[str] = typer.Argument(None, metavar="RUN", help="Run id or run directory to pin (omit to list the pins)."),
    name: Optional[str] = typer.Option(None, "--as", metavar="NAME", help="The reference's name, for `train --against NAME` and compare."),
    runs_dir: Optional[Path] = RunsDir,
) -> None:
    """Pin a run as a named reference ("the good curve"); with no RUN, list the pins."""
    from puffctl import curves, runs

    root = runs.runs_root(runs_dir)
    if run_id is None:
        for pinned, target in sorted(curves.pins(root).items()):
            console.print(f"{escape(pinned):<20} {escape(target)}", highlight=False)
        return
    if not name:
        raise PuffctlError("name the reference: puffctl runs pin RUN --as NAME")
    path = curves.pin(root, run_id, name)
    console.print(f"pinned {escape(str(path))} as [bold]{escape(name)}[/]", highlight=False)


@runs_app.command("checkout")
def checkout(
    run_id: str = typer.Argument(..., metavar="RUN", help="Run id, pinned name or run directory."),
    into: Optional[Path] = typer.Option(None, "--into", metavar="DIR", help="Where to recreate the code (default: next to the repository, REPO-RUN)."),
    repo: Optional[Path] = typer.Option(None, "--repo", metavar="DIR", help="The git repository that has the run's commit (default: the one you are in)."),
    runs_dir: Optional[Path] = RunsDir,
) -> None:
    """Recreate the exact code of a run: a git worktree at its commit with its uncommitted
    changes (source.patch, untracked files included) applied, verified against the diff hash."""
    from puffctl import curves, runs
    from trainer import provenance

    path = curves.resolve(runs.runs_root(runs_dir), run_id)
    source = provenance.read(path)
    if source is None:
        raise PuffctlError(f"run {path.name} has no {provenance.SOURCE_FILE}: its code was not in a git checkout")
    try:
        top = provenance.repo_root(repo)
        target = into or top.parent / f"{top.name}-{path.name}"
        restored = provenance.restore(top, source, target)
    except provenance.ProvenanceError as error:
        raise PuffctlError(f"checkout of {path.name}: {error}") from None
    state = "with its uncommitted changes" if source.info.get("dirty") else "clean"
    console.print(f"checked out {escape(path.name)} at {source.info['commit'][:12]} ({state}) in {escape(str(restored))}", highlight=False)


def _remote_run(run_id: str, runs_dir: Optional[Path]):
    from puffctl import remote, runs

    run = runs.get_run(runs.runs_root(runs_dir), run_id)
    where = remote.Remote.of(run.launch)
    if where is None:
        raise PuffctlError(f"run {run_id!r} ran on this machine, not on a box; follow it with `puffctl runs tail {run_id} -f`")
    return run, where


@runs_app.command("attach")
def attach(
    run_id: str = typer.Argument(..., metavar="RUN"),
    no_dashboard: bool = typer.Option(False, "--no-dashboard", help="No table: print only warnings and the final line."),
    stop_on_interrupt: bool = typer.Option(False, "--stop-on-interrupt", help="Ctrl-C stops the run (checkpoint first) instead of detaching."),
    runs_dir: Optional[Path] = RunsDir,
) -> None:
    """Re-attach to a run on a box: the table resumes where the local copy of its events ends.

    When the run has ended its directory is copied back into the local run store.
    """
    from puffctl import launch
    from puffctl.commands.train import watch_remote

    run, where = _remote_run(run_id, runs_dir)
    if run.launch["remote"].get("copied_back"):
        raise PuffctlError(f"run {run_id!r} ended and is already copied back; see `puffctl runs show {run_id}`")
    state, offset = launch.history(run.path)
    raise typer.Exit(watch_remote(run.path, where, state, offset, quiet=no_dashboard,
                                  stop_on_interrupt=stop_on_interrupt, runs_dir=runs_dir))


@runs_app.command("stop")
def stop(
    run_id: str = typer.Argument(..., metavar="RUN"),
    now: bool = typer.Option(False, "--now", help="Kill it at once instead of letting it checkpoint."),
    runs_dir: Optional[Path] = RunsDir,
) -> None:
    """Stop a run on a box the way Ctrl-C stops a local one: it checkpoints, then exits (status interrupted)."""
    from puffctl import boxes, remote

    run, where = _remote_run(run_id, runs_dir)
    with boxes.open_box(where.box) as engine:
        facts = remote.probe(engine, where)
        if not facts["alive"]:
            raise PuffctlError(f"run {run_id!r} is not running on {where.box} (status {facts['status'] or 'unknown'})")
        remote.stop(engine, where, at_once=now)
    console.print(f"asked {run_id} on {where.box} to {'stop at once' if now else 'checkpoint and stop'}; "
                  f"`puffctl runs attach {run_id}` follows it to the end and copies it back", highlight=False)


@runs_app.command("rm")
def remove(
    run_id: str = typer.Argument(..., metavar="RUN"),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    runs_dir: Optional[Path] = RunsDir,
) -> None:
    """Delete a run directory (asks first; refuses while the run is still running)."""
    from puffctl import runs

    root = runs.runs_root(runs_dir)
    run = runs.get_run(root, run_id)
    if not yes:
        typer.confirm(f"delete run {run.run_id} ({run.status}, {run.state.agent_steps:,} steps) in {run.path}?", abort=True)
    runs.remove_run(root, run_id)
    console.print(f"removed {escape(str(run.path))}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add the `runs` group to the root app."""
    app.add_typer(runs_app, name="runs")
