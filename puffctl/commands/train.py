"""`puffctl train PROFILE`: validate, start the trainer, and show the live profiling table."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from puffctl.errors import PuffctlError

console = Console()
LOGGERS = ("local", "neptune")


def train(
    profile: Optional[str] = typer.Argument(None, metavar="PROFILE", help="Profile name (see `puffctl profile list`) or a YAML file."),
    env: Optional[str] = typer.Option(None, "--env", metavar="NAME", help="Environment to train on (sets env.name)."),
    sets: list[str] = typer.Option([], "--set", metavar="KEY=VALUE", help="Override a config key, e.g. --set train.learning_rate=0.01 (YAML value; repeatable)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed (sets train.seed)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Total agent steps (sets train.total_timesteps)."),
    name: Optional[str] = typer.Option(None, "--name", help="Run id (default: PROFILE-<UTC time>); must be new."),
    runs_dir: Optional[Path] = typer.Option(None, "--runs-dir", metavar="DIR", help="Runs root (default: $PUFFCTL_RUNS_DIR, else ./runs)."),
    logger: Optional[str] = typer.Option(None, "--logger", metavar="local|neptune", help="local, or neptune (also logs to Neptune; offline without NEPTUNE_API_TOKEN)."),
    resume: Optional[str] = typer.Option(None, "--resume", metavar="RUN", help="Continue run RUN from its latest checkpoint (same id, its own config); a run on a box resumes on its box."),
    detach: bool = typer.Option(False, "--detach", help="Start the run and return; watch it with `puffctl runs tail RUN -f`."),
    no_dashboard: bool = typer.Option(False, "--no-dashboard", help="No table: print only the run id, warnings and the final line."),
    against: Optional[str] = typer.Option(None, "--against", metavar="RUN", help="Show a reference run's metric at the same step, with the difference: a pinned name (`puffctl runs pin`), run id or run dir. Default: the profile's `reference:`."),
    box: Optional[str] = typer.Option(None, "--box", metavar="BOX", help="Train on this box, in your dev container there (code synced first); Ctrl-C detaches, the run goes on."),
    gpu: Optional[str] = typer.Option(None, "--gpu", metavar="i|i,j", help="With --box: the GPU(s) the trainer sees (CUDA_VISIBLE_DEVICES)."),
    container: str = typer.Option("dev", "--container", metavar="NAME", help="With --box: your dev container to train in."),
    stop_on_interrupt: bool = typer.Option(False, "--stop-on-interrupt", help="With --box: Ctrl-C stops the run (checkpoint first) instead of detaching."),
    nproc: Optional[int] = typer.Option(None, "--nproc", metavar="N", help="One run on N processes through torchrun (sets train.world_size): each rank steps its own envs (seed + rank), gradients are averaged, rank 0 writes. With --box and --gpu, rank i uses the i-th GPU listed; with --resume, continue on N ranks. See docs/scale.md."),
) -> None:
    """Train a profile and watch it: summary, SPS, where each epoch's time goes, losses, env stats.

    Ctrl-C asks the trainer to checkpoint and stop (status interrupted, resumable with
    --resume); a second Ctrl-C stops it at once. Exit codes: 0 completed, 1 failed,
    2 bad input, 130 interrupted.
    """
    from puffctl import launch, profiles, runs
    from puffctl.events import RunState

    root = runs.runs_root(runs_dir)
    box_flags = gpu is not None or container != "dev" or stop_on_interrupt
    if box is None and resume is None and box_flags:
        raise PuffctlError("--gpu, --container and --stop-on-interrupt go with --box BOX")
    if nproc is not None and nproc < 1:
        raise PuffctlError(f"--nproc {nproc} must be >= 1")
    gpus = head = None
    if box is not None and resume is None:
        from puffctl import remote

        gpus = remote.parse_gpus(gpu)
        if nproc is not None and gpus is not None and nproc > len(gpus.split(",")):
            raise PuffctlError(f"--nproc {nproc} needs a GPU per rank: --gpu {gpus} lists {len(gpus.split(','))}")
        remote.check_box(box, gpus)
        head = remote.head_start(box)
    if logger is not None and logger not in LOGGERS:
        raise PuffctlError(f"--logger {logger!r}: expected one of {', '.join(LOGGERS)}")
    if resume is not None:
        given = [flag for flag, value in (("--env", env), ("--set", sets), ("--seed", seed), ("--steps", steps), ("--name", name), ("--logger", logger)) if value]
        if given:
            raise PuffctlError(f"--resume continues a run with its own config; drop {', '.join(given)}")
        run = runs.get_run(root, resume)
        if profile is not None and run.profile and profile != run.profile:
            raise PuffctlError(f"run {resume!r} was trained from profile {run.profile!r}, not {profile!r}")
        if isinstance(run.launch.get("remote"), dict):
            from puffctl import remote

            where = remote.Remote.of(run.launch)
            gpus = remote.check_resume(run, where, box, container, gpu)
            box, container = where.box, where.container
            head = remote.head_start(box)
        elif box is not None or box_flags:
            raise PuffctlError(f"run {resume!r} ran on this machine and resumes here: drop --box, --gpu, --container "
                               f"and --stop-on-interrupt")
        else:
            launch.check_resumable(run)
        runs.ensure_writable(root)
        path = run.path
        if nproc is not None:
            launch.set_world_size(path, nproc)
        against = against or run.launch.get("against")
        reference = load_reference(root, against) if against else None
        state, offset = launch.history(path)
    else:
        if profile is None:
            raise PuffctlError("missing PROFILE (see `puffctl profile list`), or --resume RUN")
        if name is not None:
            runs.check_run_id(name)
            if (root / name).exists():
                raise PuffctlError(f"run {name!r} already exists in {root}; pick another --name")
        loaded = profiles.load(profile)
        if nproc is not None:
            sets = [*sets, f"train.world_size={nproc}"]
        config = profiles.build_config(loaded, sets=sets, env=env, seed=seed, steps=steps, logger=logger)
        runs.ensure_writable(root)
        against = against or loaded.reference or None
        reference = load_reference(root, against) if against else None
        record = {"profile": loaded.name, "profile_file": str(loaded.path), "sets": list(sets), "env": config["env"]["name"],
                  "against": against}
        path = launch.prepare(root, name or loaded.name, config, record, exact=name is not None,
                              source=head.tree.result()[0] if head is not None else None)  # the tree sent to the box
        state, offset = RunState(run_id=path.name), 0

    if box is not None:
        raise typer.Exit(train_on_box(path, box, container, gpus, detach=detach, quiet=no_dashboard,
                                      stop_on_interrupt=stop_on_interrupt, runs_dir=runs_dir, head=head,
                                      resumed=(state, offset) if resume is not None else None))
    if detach:
        from puffctl.build import ensure_built

        ensure_built(console)
        process = launch.start(path, resume=resume is not None)
        console.print(
            f"started [bold]{path.name}[/] (pid {process.pid}) in {escape(str(path))}\n"
            f"watch: puffctl runs tail {path.name} -f{runs_flag(runs_dir)}",
            highlight=False,
        )
        return
    raise typer.Exit(run_attached(path, state, offset, resume=resume is not None, quiet=no_dashboard, runs_dir=runs_dir,
                                  reference=reference))


def load_reference(root: Path, name: str):
    """The reference run's return curve for the live table."""
    from puffctl import curves
    from puffctl.dashboard import Reference

    path = curves.resolve(root, name)
    curve = curves.read_curve(path, curves.default_metric(path))
    if not curve.steps:
        raise PuffctlError(f"--against {name}: run {path.name} has no {curve.metric} readings to compare with")
    return Reference(name if name == path.name else f"{name} ({path.name})", curve)


def run_attached(path: Path, state, offset: int, *, resume: bool, quiet: bool, runs_dir: Optional[Path], reference=None) -> int:
    """Start the trainer and show the run until it exits; returns the CLI's exit code.

    The table goes on screen first, before the extension check and the trainer's imports.
    """
    from puffctl import launch
    from puffctl.build import ensure_built
    from puffctl.dashboard import Dashboard, event_line, fit_width, human_duration, human_value

    fit_width(console)
    def show_quiet(current, event: dict) -> None:
        if event.get("type") == "start" or (event.get("type") == "message" and event.get("level") in ("warning", "error")):
            line = event_line(current, event)
            if line:
                console.print(line, markup=False, highlight=False)

    def begin() -> subprocess.Popen:
        try:
            ensure_built(console)
        except KeyboardInterrupt:
            if not resume:
                shutil.rmtree(path, ignore_errors=True)
            raise typer.Exit(130) from None
        return launch.start(path, resume=resume)

    if quiet:
        console.print(f"run {path.name}: {path}", markup=False, highlight=False)
        outcome = launch.watch(begin(), path, show_quiet, state=state, offset=offset)
    else:
        with Dashboard(console, reference=reference) as board:
            board.start(state)
            outcome = launch.watch(begin(), path, board.update, state=state, offset=offset)
            board.stop(outcome.state)
    final = outcome.state
    if outcome.exit_code == 2 and not final.progress_count:
        detail = launch.last_line(path / "stdout.log").removeprefix("error: ")
        raise PuffctlError(f"the trainer refused the run: {detail}")
    best = f", best {final.return_key} {human_value(final.best_return)}" if final.best_return is not None else ""
    style = {"completed": "green", "interrupted": "yellow"}.get(final.status, "bold red")
    reason = f" ({escape(final.reason)})" if final.reason else ""
    console.print(
        f"[{style}]{final.status}[/]{reason}: run {path.name}, {final.agent_steps:,} steps in "
        f"{human_duration(final.duration)}{best}",
        highlight=False,
    )
    if final.status == "interrupted":
        console.print(f"resume with: puffctl train --resume {path.name}{runs_flag(runs_dir)}", markup=False, highlight=False)
    return outcome.exit_code


def train_on_box(path: Path, box: str, container: str, gpus: Optional[str], *, detach: bool, quiet: bool,
                 stop_on_interrupt: bool, runs_dir: Optional[Path], head=None, resumed=None) -> int:
    """Sync the code to BOX, start the trainer in the dev container there, and follow it like a local run.

    `head`: remote.head_start(box), begun before the local checks; `resumed`: (state, offset) of a
    run on BOX to continue from its latest checkpoint there. The connection that started the run
    follows it (no second handshake before the table).
    """
    from puffctl import boxes, remote
    from puffctl.events import RunState

    head = head or remote.head_start(box)
    engine = None
    try:
        engine = boxes.connect_box(box, head.mux)
        dev = remote.running_container(engine, container)
        source, sync_s = remote.synced_source(engine, container, head.repo, container=dev, tree=head.tree.result())
        where = remote.start(engine, path, container, gpus, source, resume=resumed is not None,
                             need_checkpoint=resumed is not None, container=dev)
    except BaseException as error:
        if engine is not None:
            engine.close()
        if resumed is None:
            shutil.rmtree(path, ignore_errors=True)
        elif isinstance(error, PuffctlError):
            raise PuffctlError(f"cannot resume {path.name}: {error}", exit_code=error.exit_code) from None
        raise
    synced = "code already synced" if sync_s is None else f"code synced in {sync_s:.1f} s"
    console.print(f"{'resumed' if resumed else 'started'} [bold]{path.name}[/] on {box}/{container}"
                  f"{f' (GPU {gpus})' if gpus else ''}: {synced}", highlight=False)
    if detach:
        engine.close()
        console.print(f"watch: puffctl runs attach {path.name}{runs_flag(runs_dir)}", markup=False, highlight=False)
        return 0
    state, offset = resumed or (RunState(run_id=path.name), 0)
    return watch_remote(path, where, state, offset, quiet=quiet, stop_on_interrupt=stop_on_interrupt, runs_dir=runs_dir,
                        engine=engine)


def watch_remote(path: Path, where, state, offset: int, *, quiet: bool, stop_on_interrupt: bool,
                 runs_dir: Optional[Path], engine=None) -> int:
    """Show a remote run's events as they arrive, then copy it back; Ctrl-C detaches (or stops it, if asked).

    `engine`: an open connection to the run's box, to follow with first (closed when done with).
    """
    from puffctl import boxes, remote
    from puffctl.dashboard import Dashboard, event_line, fit_width, human_duration
    from puffctl.events import Tail

    fit_width(console)
    tail = Tail(path / "events.jsonl", offset)
    board = None

    def show() -> None:
        for event in tail.read():
            state.apply(event)
            if board is not None:
                board.update(state, event)
            elif event.get("type") == "start" or (event.get("type") == "message" and event.get("level") in ("warning", "error")):
                line = event_line(state, event)
                if line:
                    console.print(line, markup=False, highlight=False)

    def warn(text: str) -> None:
        state.message = ("warning", text)
        if board is not None:
            board.update(state, {"type": "message", "level": "warning", "text": text})
        else:
            console.print(f"warning: {text}", markup=False, highlight=False)

    def reconnecting(why: str) -> None:
        warn(f"connection to {where.box} lost; reconnecting ({why})")

    stopping = False
    with contextlib.ExitStack() as stack:
        board = None if quiet else stack.enter_context(Dashboard(console))
        if board is not None:
            board.start(state)
        while True:
            try:
                handed, engine = engine, None  # follow() closes it
                returncode = remote.follow(path, where, show, on_reconnect=reconnecting, engine=handed)
                break
            except KeyboardInterrupt:
                if not stop_on_interrupt or stopping:
                    if board is not None:
                        board.stop(state)
                    console.print(f"detached: {path.name} goes on on {where.box}; re-attach with "
                                  f"puffctl runs attach {path.name}{runs_flag(runs_dir)}", markup=False, highlight=False)
                    return 0
                stopping = True
                with boxes.open_box(where.box) as engine:
                    remote.stop(engine, where)
                warn("stopping: the trainer checkpoints and exits (Ctrl-C again to detach)")
        for event in tail.finish():
            state.apply(event)
        with boxes.open_box(where.box) as engine:
            remote.copy_back(engine, path, where)
        if board is not None:
            board.stop(state)
    if returncode != 0 and not state.finished:
        from puffctl.launch import last_line

        state.status, state.reason = "failed", last_line(path / "stdout.log") or f"the trainer exited with code {returncode}"
    style = {"completed": "green", "interrupted": "yellow"}.get(state.status, "bold red")
    console.print(f"[{style}]{state.status}[/]: run {path.name} on {where.box}, {state.agent_steps:,} steps in "
                  f"{human_duration(state.duration)}; copied back to {escape(str(path))}", highlight=False)
    return {"completed": 0, "interrupted": 130}.get(state.status, 1)


def runs_flag(runs_dir: Optional[Path]) -> str:
    """The --runs-dir flag to repeat in a hint ("" for the default root)."""
    return "" if runs_dir is None else f" --runs-dir {runs_dir}"


def register(app: typer.Typer) -> None:
    """Add `train` to the root app."""
    app.command()(train)
