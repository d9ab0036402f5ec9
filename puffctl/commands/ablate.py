"""`puffctl ablate run|resume|status|ls|report`: scripted ablation batches (docs/ablate.md)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table


console = Console()
ablate_app = typer.Typer(
    help="Ablation batches: a YAML spec of variants x seeds run as ordinary runs, resumable, "
    "reported with seed-aggregated confidence intervals (docs/ablate.md).",
    no_args_is_help=True,
)

DirOption = typer.Option(None, "--dir", metavar="DIR", help="Ablations root (default: $PUFFCTL_ABLATIONS_DIR, else ./ablations).")
SlotsOption = typer.Option(None, "--slots", min=1, help="Cells at once (default: the spec's slots, else cores / train.cpu_threads; on Ray, jobs submitted at once, default twice the cluster's room).")
WhereOption = typer.Option(None, "--where", metavar="local|boxes|B1,B2|ray://HOST:PORT", help="Where cells run (default: the spec's where, else local): boxes = every healthy registered box, one cell per free GPU (per_gpu in the spec for more); ray://HOST:PORT = jobs on a Ray cluster (its dashboard's address; the spec's storage: holds the runs, docs/scale.md).")
ReassignOption = typer.Option(None, "--reassign-after", metavar="DURATION", help="With boxes: restart a cell elsewhere once its box has been unreachable this long (e.g. 10m); it stops itself there first.")
RetryFailed = typer.Option(False, "--retry-failed", help="Also rerun cells whose run failed by divergence (a result otherwise).")
STATUS_STYLE = {"pending": "dim", "running": "cyan", "completed": "green", "failed": "bold red", "crashed": "red",
                "interrupted": "yellow"}
#: Seeds shown as columns of `ablate status`; more are summarised per group.
SEED_COLUMNS = 12
#: Rows of the live table; a bigger batch shows its running cells and the latest to end.
TABLE_ROWS = 30


def _status(status: str) -> str:
    return f"[{STATUS_STYLE.get(status, '')}]{status}[/]"


@ablate_app.command("run")
def run(
    spec_file: Path = typer.Argument(..., metavar="SPEC.yaml", help="The ablation spec (docs/ablate.md)."),
    slots: Optional[int] = SlotsOption,
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate every cell, print them and the estimated time; start nothing."),
    retry_failed: bool = RetryFailed,
    root: Optional[Path] = DirOption,
    where: Optional[str] = WhereOption,
    reassign_after: Optional[str] = ReassignOption,
) -> None:
    """Validate the spec, create the batch ablations/NAME/ and run its cells with a live table.

    Each cell is an ordinary run in ablations/NAME/runs/CELL/ (`puffctl runs show CELL
    --runs-dir ablations/NAME/runs`). Ctrl-C stops the cells (they checkpoint) and
    `puffctl ablate resume NAME` continues. Exit codes: 0 all cells have results, 1 some
    crashed past their retries, 2 bad input, 130 interrupted.
    """
    from puffctl.batch import engine, state

    planned = engine.plan(spec_file)
    count = slots or planned.spec.slots or engine.default_slots(planned.cells)
    if dry_run:
        _print_plan(planned, count)
        return
    executor = _executor(planned.spec, where, reassign_after, count, slots or planned.spec.slots)
    batch = engine.create(state.ablations_root(root), planned)
    console.print(f"batch [bold]{escape(batch.name)}[/]: {len(batch.cells)} cells on {len(executor.slots())} slot(s) in {escape(str(batch.path))}", highlight=False)
    raise typer.Exit(_run_batch(batch, executor, retry_failed))


@ablate_app.command("resume")
def resume(
    name: str = typer.Argument(..., metavar="NAME"),
    slots: Optional[int] = SlotsOption,
    retry_failed: bool = RetryFailed,
    root: Optional[Path] = DirOption,
    where: Optional[str] = WhereOption,
    reassign_after: Optional[str] = ReassignOption,
) -> None:
    """Continue a batch: run only missing, crashed, interrupted or lost cells; re-adopt live ones."""
    from puffctl.batch import engine, state

    batch = state.open_batch(state.ablations_root(root), name)
    engine.resume_check(batch, retry_failed=retry_failed)
    count = slots or batch.spec.slots or engine.default_slots(batch.cells)
    raise typer.Exit(_run_batch(batch, _executor(batch.spec, where, reassign_after, count, slots or batch.spec.slots),
                                retry_failed))


def _executor(spec, where: Optional[str], reassign_after: Optional[str], count: int, asked: Optional[int]):
    """Where the batch's cells run: `--where`, else the spec's `where` (puffctl.executors.choose)."""
    from puffctl.executors import choose

    return choose(where if where is not None else spec.raw.get("where"), local_slots=count, slots=asked,
                  storage=spec.raw.get("storage"), per_gpu=spec.raw.get("per_gpu", 1), reassign_after=reassign_after,
                  on_line=lambda text: console.print(text, markup=False, highlight=False))


def _print_plan(planned, slots: int) -> None:
    from puffctl.batch import engine
    from puffctl.dashboard import fit_width, human_count, human_duration
    from trainer.config import steps_to_train

    def steps(config: dict) -> str:
        total = config["train"]["total_timesteps"]
        stop = steps_to_train(config)
        return human_count(stop) + (f" of {human_count(total)}" if stop < total else "")

    fit_width(console)
    table = Table(title=f"{escape(planned.spec.name)}: {len(planned.cells)} cells (dry run)")
    for column in ("cell", "group", "seed", "profile", "env", "steps", "overrides"):
        table.add_column(column)
    for cell in planned.cells:
        table.add_row(cell.cell_id, escape(cell.group), str(cell.seed), cell.profile, cell.config["env"]["name"],
                      steps(cell.config), escape(" ".join(cell.sets)) or "-")
    console.print(table)
    seconds = engine.estimate(planned.cells, slots, startup=engine.GUESS_STARTUP, sps=engine.GUESS_SPS)
    console.print(f"estimated {human_duration(seconds)} on {slots} slot(s) (a rough guess: {engine.GUESS_STARTUP:.0f} s startup "
                  f"and {human_count(engine.GUESS_SPS)} SPS per cell, a CartPole cell on one CPU core)", highlight=False)


def _run_batch(batch, executor, retry_failed: bool) -> int:
    """Run the engine with the live table (a terminal) or one line per change; the exit code."""
    from rich.live import Live

    from puffctl.batch.engine import Engine
    from puffctl.build import ensure_built
    from puffctl.dashboard import fit_width
    fit_width(console)
    ensure_built(console)  # once for the batch, as `puffctl train` does for a run
    if console.is_terminal:
        with Live(console=console, auto_refresh=False, transient=False) as live:
            last = [0.0]

            def redraw(engine: Engine, cell_id: str | None) -> None:
                now = time.monotonic()
                if now - last[0] > 0.25 or cell_id is None:
                    last[0] = now
                    live.update(batch_table(engine), refresh=True)

            engine = Engine(batch, executor, on_change=redraw, retry_failed=retry_failed)
            counts = engine.run()
            live.update(batch_table(engine), refresh=True)
    else:
        seen: dict[str, str] = {}

        def line(engine: Engine, cell_id: str | None) -> None:
            if cell_id is None:
                return
            current = engine.batch.state[cell_id]
            if seen.get(cell_id) == current.status:
                return
            seen[cell_id] = current.status
            console.print(change_line(engine, cell_id), markup=False, highlight=False)

        engine = Engine(batch, executor, on_change=line, retry_failed=retry_failed)
        counts = engine.run()
    summary = ", ".join(f"{count} {status}" for status, count in counts.items() if count)
    console.print(f"batch {batch.name}: {summary}; report: puffctl ablate report {batch.name}", markup=False, highlight=False)
    if engine.stopping:
        return 130
    return 1 if counts["crashed"] or counts["pending"] else 0


def change_line(engine, cell_id: str) -> str:
    """One line for a cell's status change (non-terminal output)."""
    from puffctl.dashboard import human_count, human_duration, human_value

    cell = next(item for item in engine.batch.cells if item.cell_id == cell_id)
    current = engine.batch.state[cell_id]
    counts = engine.batch.counts()
    done = counts["completed"] + counts["failed"] + counts["crashed"]
    text = f"[{done}/{len(engine.batch.cells)}] {cell_id} {cell.group} seed {cell.seed}: {current.status}"
    if current.status == "running":
        text += f" on {current.slot} " + ("(re-adopted)" if cell_id in engine.adopted else f"(start {current.starts})")
    elif current.status in ("completed", "failed"):
        text += f", {human_count(current.steps)} steps, {engine.batch.spec.metric} {human_value(current.metric)}"
        if current.started and current.ended:
            text += f" in {human_duration(current.ended - current.started)}"
    if current.reason:
        text += f" ({current.reason})"
    if current.status in ("completed", "failed", "crashed", "pending") and engine.eta() is not None:
        text += f"; batch ETA {human_duration(engine.eta())}"
    return text


def batch_table(engine) -> Table:
    """The live batch table: one row per cell that is running or has run, plus the batch ETA."""
    from puffctl.dashboard import human_count, human_duration, human_value

    batch = engine.batch
    counts = batch.counts()
    eta = engine.eta()
    table = Table(title=f"{escape(batch.name)}: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n)
                  + f"; batch ETA {human_duration(eta) if eta is not None else '-'}")
    for column in ("cell", "variant", "seed", "status", "slot", "steps", "SPS", batch.spec.metric, "ETA"):
        table.add_column(escape(column), justify="right" if column in ("seed", "steps", "SPS", "ETA") else "left")
    shown = batch.cells
    if len(shown) > TABLE_ROWS:  # running cells, then the latest to end
        ended = sorted((c for c in shown if batch.state[c.cell_id].ended and batch.state[c.cell_id].status != "running"),
                       key=lambda c: batch.state[c.cell_id].ended or 0.0, reverse=True)
        running = [c for c in shown if batch.state[c.cell_id].status == "running"]
        shown = running + ended[:max(0, TABLE_ROWS - len(running))]
        table.caption = f"{len(batch.cells) - len(shown)} more cells: puffctl ablate status {batch.name}"
    for cell in shown:
        current = batch.state[cell.cell_id]
        live = engine.live.get(cell.cell_id)
        running = current.status == "running" and live is not None
        table.add_row(
            cell.cell_id, escape(cell.group), str(cell.seed), _status(current.status),
            current.slot or "-" if current.status == "running" else "-",
            human_count(live.steps if running else current.steps or None),
            human_count(live.sps) if running else "-",
            human_value(live.metric if running else current.metric),
            human_duration(live.eta) if running and live.eta is not None else "-",
        )
    return table


@ablate_app.command("status")
def status(name: str = typer.Argument(..., metavar="NAME"), root: Optional[Path] = DirOption) -> None:
    """The grid: variant x seed, each cell's status and final metric (from the batch state only: fast)."""
    from puffctl.batch import state
    from puffctl.dashboard import fit_width, human_value

    fit_width(console)
    batch = state.open_batch(state.ablations_root(root), name, configs=False)
    seeds = batch.spec.seeds
    counts = batch.counts()
    table = Table(title=f"{escape(batch.name)} ({batch.spec.metric}): " + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
    table.add_column("variant")
    groups: dict[str, dict[int, str]] = {}
    for cell in batch.cells:
        current = batch.state[cell.cell_id]
        text = _status(current.status)
        if current.status in ("completed", "failed") and current.metric is not None:
            text += f" {human_value(current.metric)}"
        groups.setdefault(cell.group, {})[cell.seed] = text
    if len(seeds) <= SEED_COLUMNS:
        for seed in seeds:
            table.add_column(f"seed {seed}")
        for group, cells in groups.items():
            table.add_row(escape(group), *(cells.get(seed, "-") for seed in seeds))
    else:
        for column in state.STATUSES:
            table.add_column(column, justify="right")
        for group in groups:
            statuses = [batch.state[cell.cell_id].status for cell in batch.cells if cell.group == group]
            table.add_row(escape(group), *(str(statuses.count(column) or "-") for column in state.STATUSES))
    console.print(table)


@ablate_app.command("ls")
def ls(root: Optional[Path] = DirOption) -> None:
    """The batches under the ablations root, with their cell counts by status."""
    from puffctl.batch import state
    from puffctl.dashboard import fit_width

    fit_width(console)
    table = Table(title=f"ablations in {escape(str(state.ablations_root(root)))}")
    for column in ("name", "cells", *state.STATUSES, "metric"):
        table.add_column(column, justify="left" if column in ("name", "metric") else "right")
    found = state.list_batches(state.ablations_root(root))
    for name in found:
        batch = state.open_batch(state.ablations_root(root), name, configs=False)
        counts = batch.counts()
        table.add_row(escape(name), str(len(batch.cells)), *(str(counts[s] or "-") for s in state.STATUSES), escape(batch.spec.metric))
    console.print(table)
    if not found:
        console.print("[dim]no batches[/]")


@ablate_app.command("report")
def report(
    name: str = typer.Argument(..., metavar="NAME"),
    md: Optional[Path] = typer.Option(None, "--md", metavar="FILE", help="Also write the table as Markdown."),
    csv_file: Optional[Path] = typer.Option(None, "--csv", metavar="FILE", help="Also write one CSV row per variant."),
    png: Optional[Path] = typer.Option(None, "--png", metavar="FILE", help="Also plot the learning curves with 95% CI bands."),
    last: float = typer.Option(10.0, "--last", metavar="K", help="A run's final metric: its mean over the last K% of the common step grid."),
    root: Optional[Path] = DirOption,
) -> None:
    """Per variant: final metric (mean, IQM) with 95% bootstrap CIs over seeds at equal env steps,
    P(improvement) over the baseline, steps to target, SPS, wall time; missing cells listed."""
    from puffctl.batch import report as batch_report
    from puffctl.batch import state
    from puffctl.dashboard import fit_width, sparkline

    fit_width(console)
    batch = state.open_batch(state.ablations_root(root), name, configs=False)
    result = batch_report.build(batch, last_percent=last)
    table = Table(title=f"{escape(result.name)}: {escape(result.metric)} ({'higher' if result.higher_is_better else 'lower'} is better), "
                        f"baseline {escape(result.baseline)}")
    for column in [*batch_report.columns(result), "curve"]:
        table.add_column(escape(column), justify="left" if column in ("group", "curve") else "right")
    for group, row in zip(result.groups, batch_report.rows(result)):
        values = result.curves.get(group.group)
        spark = sparkline(list(values.mean(axis=0)), width=20) if values is not None and len(values) else ""
        table.add_row(*(escape(item) for item in row), spark)
    console.print(table)
    for line in batch_report.notes(result):
        console.print(line, markup=False, highlight=False)
    written = []
    try:
        if md is not None:
            md.write_text(batch_report.to_markdown(result), encoding="utf-8")
            written.append(str(md))
        if csv_file is not None:
            csv_file.write_text(batch_report.to_csv(result), encoding="utf-8")
            written.append(str(csv_file))
    except OSError as error:
        from puffctl.errors import PuffctlError

        raise PuffctlError(f"cannot write {error.filename}: {error.strerror or error}") from None
    if png is not None:
        batch_report.plot(result, png)
        written.append(str(png))
    if written:
        console.print(f"wrote {', '.join(written)}", markup=False, highlight=False)


def register(app: typer.Typer) -> None:
    """Add the `ablate` group to the root app."""
    app.add_typer(ablate_app, name="ablate")
