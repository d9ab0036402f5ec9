"""`puffctl eval RUN`: play a checkpoint without training; the eval score apart from the training score."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from puffctl.errors import PuffctlError

console = Console()


def evaluate(
    run_id: str = typer.Argument(..., metavar="RUN", help="Run id, pinned name or run directory."),
    checkpoint: Optional[int] = typer.Option(None, "--checkpoint", metavar="EPOCH", help="The checkpoint of this epoch (default: the latest)."),
    episodes: int = typer.Option(32, "--episodes", min=1, max=4096, help="Scored episodes, played in parallel (one per sub-env)."),
    deterministic: bool = typer.Option(False, "--deterministic", help="The most likely action (the mean for continuous actions) instead of sampling."),
    seed: int = typer.Option(12345, "--seed", help="Env seed of the eval episodes (the run's own seed is for training)."),
    random_actions: bool = typer.Option(False, "--random", help="Baseline: uniformly random actions instead of the policy."),
    render: Optional[str] = typer.Option(None, "--render", metavar="ansi|FILE.gif", help="Also play one episode on screen (ansi, built-in envs) or into a GIF (gymnasium envs with rgb_array rendering)."),
    runs_dir: Optional[Path] = typer.Option(None, "--runs-dir", metavar="DIR", help="Runs root (default: $PUFFCTL_RUNS_DIR, else ./runs)."),
) -> None:
    """Play a run's checkpoint without training: the eval score with a 95% CI, next to the training score.

    The result is appended to the run's evals.jsonl. --render plays one more episode:
    `ansi` on the terminal (built-in envs), or FILE.gif for gymnasium envs.
    """
    from puffctl import curves, runs

    root = runs.runs_root(runs_dir)
    path = curves.resolve(root, run_id)
    try:
        import yaml

        config = yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise PuffctlError(f"run {path.name} has no readable config.yaml: {error}") from None
    if render is not None and render != "ansi" and not render.endswith(".gif"):
        raise PuffctlError(f"--render {render!r}: use ansi, or a file name ending in .gif")
    chosen = pick_checkpoint(path, checkpoint, random_actions)

    from trainer import evaluate as playing
    from trainer.envs import EnvError

    if render is not None:
        try:
            playing.check_render(config["env"]["name"], "ansi" if render == "ansi" else "rgb_array")
        except ValueError as error:
            raise PuffctlError(f"--render {render}: {error}") from None
    what = "random actions" if random_actions else f"{chosen.name}" + (" (deterministic)" if deterministic else "")
    try:
        with console.status(f"playing {episodes} episodes of {escape(config['env']['name'])} with {escape(what)}"):
            result = playing.score(config, chosen, episodes, seed=seed, deterministic=deterministic, random_actions=random_actions)
        if render is not None:
            show_render(playing, config, chosen, render, seed, deterministic)
    except (EnvError, ValueError, RuntimeError) as error:
        raise PuffctlError(f"eval of {path.name}: {error}") from None
    ci = result.ci95
    interval = f" [{ci[0]:.4g}, {ci[1]:.4g}] 95% CI" if ci else ""
    state = runs.load_state(path)
    training = state.returns[-1] if state.returns else None
    console.print(f"[bold]eval[/]      {result.mean:.4g}{interval}  over {len(result.returns)} episodes "
                  f"(mean length {sum(result.lengths) / len(result.lengths):.4g}) with {escape(what)}", highlight=False)
    if training is not None:
        console.print(f"[bold]training[/]  {training:.4g}  ({escape(state.return_key or 'return')}, last reading, "
                      f"{state.agent_steps:,} steps; sampled actions, exploring)", highlight=False)
    record = {"time": time.time(), "checkpoint": None if chosen is None else chosen.name, "random": random_actions,
              "deterministic": deterministic, "seed": seed, "episodes": len(result.returns), "mean": result.mean,
              "ci95": list(ci) if ci else None, "mean_length": sum(result.lengths) / len(result.lengths)}
    try:
        with (path / "evals.jsonl").open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
    except OSError as error:
        console.print(f"[yellow]warning:[/] could not record the eval in {escape(str(path))}: {error.strerror}")


def pick_checkpoint(path: Path, epoch: int | None, random_actions: bool) -> Path | None:
    """The checkpoint file to play (None for --random)."""
    if random_actions:
        return None
    files = sorted((path / "checkpoints").glob("epoch_*.pt"))
    if not files:
        raise PuffctlError(f"run {path.name} has no checkpoint to evaluate")
    if epoch is None:
        return files[-1]
    wanted = path / "checkpoints" / f"epoch_{epoch:08d}.pt"
    if wanted not in files:
        have = ", ".join(str(int(f.stem.split("_")[1])) for f in files)
        raise PuffctlError(f"run {path.name} has no checkpoint of epoch {epoch} (it has: {have})")
    return wanted


def show_render(playing, config: dict, chosen: Path | None, render: str, seed: int, deterministic: bool) -> None:
    """Play one rendered episode: ANSI frames on the terminal, or RGB frames into a GIF."""
    if render == "ansi":
        from rich.live import Live
        from rich.text import Text

        with Live(console=console, auto_refresh=False) as live:
            def show(frame: object) -> None:
                live.update(Text.from_ansi(str(frame)), refresh=True)
                time.sleep(0.05 if console.is_terminal else 0.0)

            episode_return = playing.render_episode(config, chosen, seed=seed, deterministic=deterministic, mode="ansi", show=show)
        console.print(f"rendered episode: return {episode_return:.4g}", highlight=False)
        return
    frames: list = []
    episode_return = playing.render_episode(config, chosen, seed=seed, deterministic=deterministic, mode="rgb_array",
                                            show=frames.append)
    path = playing.write_gif(frames, Path(render))
    console.print(f"wrote {escape(str(path))}: {len(frames)} frames, episode return {episode_return:.4g}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add `eval` to the root app."""
    app.command("eval")(evaluate)
