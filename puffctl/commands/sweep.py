"""`puffctl sweep run|resume|status|report`: cost-aware hyperparameter sweeps (docs/sweep.md)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console()
sweep_app = typer.Typer(
    help="Hyperparameter sweeps: a YAML spec of searched keys (linear, log, logit, pow2, int spaces) "
    "tuned by Optuna (random, its default, or cost-aware), each trial a fresh run through the "
    "ablation engine, resumable, reported with the cost/score Pareto front (docs/sweep.md).",
    no_args_is_help=True,
)

DirOption = typer.Option(None, "--dir", metavar="DIR", help="Sweeps root (default: $PUFFCTL_SWEEPS_DIR, else ./sweeps).")
SlotsOption = typer.Option(None, "--slots", min=1, help="Trial cells at once (default: the spec's slots; on Ray, jobs submitted at once).")
STATE_STYLE = {"waiting": "dim", "running": "cyan", "completed": "green", "failed": "red"}
#: Trials shown in the live table: the running ones plus the latest and best finished.
LIVE_ROWS = 20


@sweep_app.command("run")
def run(
    spec_file: Path = typer.Argument(..., metavar="SPEC.yaml", help="The sweep spec (docs/sweep.md)."),
    slots: Optional[int] = SlotsOption,
    root: Optional[Path] = DirOption,
) -> None:
    """Validate the spec, create sweeps/NAME/ (its Optuna study in study.db) and run trials with a live table.

    Trial 1 is every key at its centre. Each trial is an ordinary run per seed in
    sweeps/NAME/runs/tNNN-sS/. Ctrl-C stops the running trials (they checkpoint) and
    `puffctl sweep resume NAME` continues. Exit codes: 0 done, 1 some trials crashed,
    2 bad input, 130 interrupted.
    """
    from puffctl.errors import PuffctlError
    from puffctl.sweep import runner, spec

    parsed = spec.load(spec_file)
    directory = runner.sweeps_root(root)
    if (directory / parsed.name).exists():
        raise PuffctlError(f"sweep {parsed.name!r} already exists in {directory}: `puffctl sweep resume {parsed.name}` "
                           "continues it; set another name in the spec for a new one")
    sweep = runner.create(directory, spec_file)
    count = slots or sweep.spec.slots
    console.print(f"sweep [bold]{escape(sweep.spec.name)}[/]: {sweep.spec.trials} trials x {sweep.spec.seeds} seed(s), "
                  f"{sweep.spec.method} search over {len(sweep.spec.search)} key(s), {count} slot(s), in {escape(str(sweep.path))}",
                  highlight=False)
    raise typer.Exit(_run(sweep, count))


@sweep_app.command("resume")
def resume(name: str = typer.Argument(..., metavar="NAME"), slots: Optional[int] = SlotsOption, root: Optional[Path] = DirOption) -> None:
    """Continue a sweep: rerun interrupted or lost trials, re-adopt live ones, ask for the rest of the budget."""
    from puffctl.sweep import runner

    sweep = runner.open_sweep(runner.sweeps_root(root), name)
    raise typer.Exit(_run(sweep, slots or sweep.spec.slots))


def _run(sweep, slots: int) -> int:
    """Run the sweep's engine with the live trial table (or one line per finished trial)."""
    from rich.live import Live

    from puffctl.batch.engine import Engine
    from puffctl.dashboard import fit_width

    fit_width(console)
    executor = _executor(sweep.spec, slots)
    sweep.reconcile()
    told = {record.number for record in sweep.tuner.trials() if record.state in ("completed", "failed")}

    def lines(engine: Engine, cell_id: str | None) -> None:
        sweep.settle(engine, cell_id)
        for record in sweep.tuner.trials():
            if record.state in ("completed", "failed") and record.number not in told:
                told.add(record.number)
                console.print(trial_line(sweep, record), markup=False, highlight=False)

    if console.is_terminal:
        with Live(console=console, auto_refresh=False, transient=False) as live:
            last = [0.0]

            def redraw(engine: Engine, cell_id: str | None) -> None:
                sweep.settle(engine, cell_id)
                now = time.monotonic()
                if now - last[0] > 0.5 or cell_id is None:
                    last[0] = now
                    live.update(trials_table(sweep, engine), refresh=True)

            engine = sweep.engine(executor, redraw)
            engine.run()
            live.update(trials_table(sweep, engine), refresh=True)
    else:
        engine = sweep.engine(executor, lines)
        engine.run()
    records = sweep.tuner.trials()
    done = sum(record.state == "completed" for record in records)
    failed = sum(record.state == "failed" for record in records)
    best = sweep.tuner.best()
    from puffctl.dashboard import human_value

    best_text = f"; best trial {best.number + 1}: {sweep.spec.metric} {human_value(best.score)}" if best else ""
    console.print(f"sweep {sweep.spec.name}: {done} completed, {failed} failed of {sweep.spec.trials}{best_text}; "
                  f"report: puffctl sweep report {sweep.spec.name}", markup=False, highlight=False)
    if engine.stopping:
        return 130
    return 1 if sweep.batch.counts()["crashed"] else 0


def _executor(spec, slots: int):
    """Trials as local processes on `slots` slots, or as jobs on the Ray cluster of `where: ray://...`."""
    from puffctl.executors import choose

    return choose(spec.where, local_slots=slots, slots=slots, storage=spec.run_storage,
                  on_line=lambda text: console.print(text, markup=False, highlight=False))


def trial_line(sweep, record) -> str:
    """One line per finished trial (non-terminal output)."""
    from puffctl.dashboard import human_count, human_value

    params = " ".join(f"{key}={human_value(value)}" for key, value in record.params.items())
    if record.state == "failed":
        return f"trial {record.number + 1}: failed ({record.reason}) {params}"
    best = sweep.tuner.best()
    mark = " (best so far)" if best is not None and best.number == record.number else ""
    return f"trial {record.number + 1}: {sweep.spec.metric} {human_value(record.score)}, cost {human_count(record.cost)}{mark}  {params}"


def trials_table(sweep, engine=None, limit: int | None = LIVE_ROWS) -> Table:
    """Trials with their values, state, metric and cost; running ones show live steps and metric.
    With a `limit`, the running trials, the latest finished ones and the best."""
    from puffctl.dashboard import human_count, human_value
    from puffctl.sweep.runner import trial_of

    records = sweep.tuner.trials()
    best = sweep.tuner.best()
    keys = list(sweep.spec.search)
    counts = {state: sum(r.state == state for r in records) for state in ("running", "completed", "failed")}
    best_text = f"best trial {best.number + 1} ({human_value(best.score)})" if best else "no result yet"
    table = Table(title=f"{escape(sweep.spec.name)}: {len(records)}/{sweep.spec.trials} trials, "
                        + ", ".join(f"{n} {s}" for s, n in counts.items() if n) + f"; {best_text}")
    for column in ("trial", "state", *keys, sweep.spec.metric, f"cost ({sweep.spec.cost})"):
        table.add_column(escape(column), justify="left" if column in ("state",) else "right")
    live = {}
    if engine is not None:
        for cell_id, numbers in engine.live.items():
            if engine.batch.state[cell_id].status == "running":
                live.setdefault(trial_of(cell_id), []).append(numbers)
    shown = [r for r in records if r.state == "running"]
    finished = [r for r in reversed(records) if r.state != "running"]
    shown += finished if limit is None else finished[: max(0, limit - len(shown))]
    if best is not None and best not in shown:
        shown.append(best)
    for record in sorted(shown, key=lambda r: r.number):
        style = STATE_STYLE.get(record.state, "")
        metric = record.score
        cost = record.cost
        if record.state == "running" and record.number in live:
            values = [item.metric for item in live[record.number] if item.metric is not None]
            metric = sum(values) / len(values) if values else None
            cost = sum(item.steps for item in live[record.number]) if sweep.spec.cost == "steps" else None
        label = f"{record.number + 1}" + (" *" if best is not None and record.number == best.number else "")
        table.add_row(label, f"[{style}]{record.state}[/]", *(human_value(record.params.get(key)) for key in keys),
                      human_value(metric), human_count(cost) if cost is not None else "-")
    return table


@sweep_app.command("status")
def status(name: str = typer.Argument(..., metavar="NAME"), root: Optional[Path] = DirOption) -> None:
    """Every trial: its values, state, metric and cost, the best marked with *."""
    from puffctl.dashboard import fit_width
    from puffctl.sweep import runner

    fit_width(console)
    sweep = runner.open_sweep(runner.sweeps_root(root), name)
    console.print(trials_table(sweep, limit=None))


@sweep_app.command("report")
def report(
    name: str = typer.Argument(..., metavar="NAME"),
    top: int = typer.Option(5, "--top", min=1, help="How many of the best trials to list."),
    png: Optional[Path] = typer.Option(None, "--png", metavar="DIR", help="Write pareto.png and effects.png here (default: the sweep directory)."),
    export: Optional[Path] = typer.Option(None, "--export", metavar="FILE", help="Write the best trial (or --trial N) as a profile, e.g. profiles/tuned.yaml."),
    trial_number: Optional[int] = typer.Option(None, "--trial", metavar="N", help="The trial to export (default: the best)."),
    root: Optional[Path] = DirOption,
) -> None:
    """The best trials, the cost/score Pareto front, per-parameter effect plots, and --export of the winner."""
    from puffctl.dashboard import fit_width, human_count, human_value
    from puffctl.sweep import report as sweep_report
    from puffctl.sweep import runner

    fit_width(console)
    sweep = runner.open_sweep(runner.sweeps_root(root), name)
    ranked = sweep_report.ranked(sweep)
    keys = list(sweep.spec.search)
    front = {record.number for record in sweep.tuner.pareto()}
    table = Table(title=f"{escape(sweep.spec.name)}: best {min(top, len(ranked))} of {len(ranked)} completed trials "
                        f"({sweep.spec.metric}, {sweep.spec.direction})")
    for column in ("rank", "trial", *keys, sweep.spec.metric, f"cost ({sweep.spec.cost})", "Pareto"):
        table.add_column(escape(column), justify="right")
    for rank, record in enumerate(ranked[:top], 1):
        table.add_row(str(rank), str(record.number + 1), *(human_value(record.params[key]) for key in keys),
                      human_value(record.score), human_count(record.cost), "yes" if record.number in front else "")
    console.print(table)
    failed = [record for record in sweep.tuner.trials() if record.state == "failed"]
    if failed:
        console.print(f"{len(failed)} failed trial(s): " + "; ".join(f"{r.number + 1} ({r.reason})" for r in failed[:5]),
                      markup=False, highlight=False)
    if not ranked:
        return
    directory = png or sweep.path
    sweep_report.plot_pareto(sweep, directory / "pareto.png")
    sweep_report.plot_effects(sweep, directory / "effects.png")
    console.print(f"wrote {directory / 'pareto.png'}, {directory / 'effects.png'}", markup=False, highlight=False)
    if export is not None:
        record = sweep_report.trial(sweep, trial_number)
        sweep_report.export(sweep, record, export)
        console.print(f"wrote {export} (trial {record.number + 1}): puffctl train {export}", markup=False, highlight=False)


def register(app: typer.Typer) -> None:
    """Add the `sweep` group to the root app."""
    app.add_typer(sweep_app, name="sweep")
