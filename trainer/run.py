"""One training run's life: the run directory, the event stream, checkpoints, signals, failure.

The algorithm lives in trainer/train.py; this module wraps it in what docs/events.md promises:
start / progress / checkpoint / message / end events, status.json, true resume, SIGINT/SIGTERM
-> checkpoint and `interrupted` (exit 130), a non-finite loss -> `failed` (exit 1) with the
last good checkpoint left intact.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import yaml

from trainer import checkpoint, distributed, provenance, runlock
from trainer.config import ConfigError, steps_to_train
from trainer.events import EventWriter, Silent
from trainer.watchdog import Watchdog

EXIT_COMPLETED, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


class RunError(Exception):
    """A bad request about the run itself (resume a completed run, reuse a run dir): exit 2."""


class Window:
    """Means of episode infos (numbers only) finished since the window was last read."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, episodes: list[dict]) -> None:
        for episode in episodes:
            for key, value in episode.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.sums[key] = self.sums.get(key, 0.0) + value
                    self.counts[key] = self.counts.get(key, 0) + 1

    def take(self) -> tuple[dict[str, float], dict[str, int]]:
        """The sums and counts since the last read; starts a new window."""
        taken = self.sums, self.counts
        self.sums, self.counts = {}, {}
        return taken

    def read(self) -> dict[str, float]:
        sums, counts = self.take()
        return {key: sums[key] / counts[key] for key in sums}


class Run:
    """Drives a Trainer through its epochs and reports everything as events."""

    def __init__(self, config: dict, run_dir: Path, resume: bool, events_stdout: bool,
                 group: distributed.Group | None = None) -> None:
        self.config = config
        self.group = group or distributed.Group()
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.events_stdout = events_stdout
        self.stop_signal: str | None = None
        self.events: EventWriter | None = None
        self.warned_envs = False
        self.final_metrics: dict = {}
        self.trained = False  # has this process finished an epoch (and so may move status.json's progress)
        self.ended = False  # the end event is written (torchrun's SIGTERM to the ranks may still come)

    def prepare(self) -> tuple[dict | None, list[str]]:
        """Check the run directory; return the checkpoint state to resume from (None for a new
        run) and one warning per damaged newer checkpoint skipped. Raises RunError, leaving
        the run directory as it was."""
        run_dir = self.run_dir
        state, skipped = None, []
        if self.resume:
            status = run_dir / "status.json"
            if status.is_file():
                try:
                    recorded = json.loads(status.read_text()).get("status")
                except ValueError:
                    recorded = None
                if recorded == "completed":
                    raise RunError(f"run {run_dir.name} already completed; nothing to resume")
            try:
                path, state, damaged = checkpoint.newest_intact(run_dir, checkpoint.load)
            except checkpoint.NoIntactCheckpoint as error:
                raise RunError(str(error)) from None
            if damaged:
                skipped = [f"{line}; resuming from {path.relative_to(run_dir)} (epoch {state.get('epoch')})"
                           for line in damaged]
        elif (run_dir / "events.jsonl").exists() and (run_dir / "events.jsonl").stat().st_size:
            raise RunError(f"{run_dir} already holds a run; pass --resume to continue it")
        if self.group.rank == 0:  # every rank checks (and refuses alike); rank 0 writes
            (run_dir / "config.yaml").write_text(yaml.safe_dump(self.config, sort_keys=False))
        return state, skipped

    def _on_signal(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.ended:
            return
        if self.stop_signal is None:
            self.stop_signal = name
            if self.events is not None:
                self.events.message("warning", f"{name}: finishing this epoch, then checkpoint and stop "
                                               "(press Ctrl-C again to stop at once)")
            return
        if self.events is not None:
            reason = f"second {name}: stopped at once, without a final checkpoint"
            self.events.emit("end", status="interrupted", reason=reason,
                             epoch=self.events.status["epoch"],
                             agent_steps=self.events.status["agent_steps"], metrics={})
            self.events.update_status(status="interrupted", reason=reason)
        os._exit(EXIT_INTERRUPTED)

    def execute(self) -> int:
        """Train to the end (or a signal or a failure); return the exit code."""
        import torch

        from trainer import envs as envs_module
        from trainer.profiler import Profiler, Utilization
        from trainer.train import LOSS_KEYS, Diverged, Trainer, select_device

        resume_state, skipped = self.prepare()
        config, run_dir = self.config, self.run_dir
        train_cfg, logger_cfg = config["train"], config["logger"]
        group = self.group
        device = group.device(select_device(train_cfg["device"]))
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError("train.device=cuda but no CUDA device is available (use auto or cpu)")
        if train_cfg["cuda_launch_blocking"]:
            os.environ["CUDA_LAUNCH_BLOCKING"] = "1"
        torch.set_num_threads(train_cfg["cpu_threads"] or max((os.cpu_count() or 1) // group.world_size, 1))

        if group.rank == 0:
            events = self.events = EventWriter(run_dir, config, to_stdout=self.events_stdout)
        else:
            events = self.events = Silent()
        events.update_status(status="running")
        for line in skipped:
            events.message("warning", line)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        trainer = None
        try:
            profiler = Profiler(window=logger_cfg["sps_window"])
            try:
                trainer = Trainer(distributed.rank_config(config, group.rank), device, profiler, group)
            except envs_module.EnvError as error:
                raise ConfigError(f"env.name={config['env']['name']!r}: {error}") from None
            exact = True
            if resume_state is not None:
                exact = trainer.load_state_dict(resume_state)
                if not exact:
                    events.message("warning", "this env could not be saved: resumed with fresh episodes "
                                              "(weights, optimizer and RNG restored)")
                written = 1 + len(resume_state.get("ranks", {}))
                if written != group.world_size:
                    low, high = sorted((written, group.world_size))
                    ranks = f"rank {low}" if high - low == 1 else f"ranks {low}-{high - 1}"
                    change = "fresh episodes" if group.world_size > written else "episodes dropped"
                    events.message("info", f"resumed on {group.world_size} rank(s) from a checkpoint of {written} "
                                           f"({ranks}: {change}; docs/scale.md)")
            return self._loop(trainer, profiler, Utilization(device.type), LOSS_KEYS)
        except Diverged as error:
            reason = f"{error} (try a lower train.learning_rate); last good checkpoint kept"
            self._end(trainer, "failed", reason, self.final_metrics, cause="diverged")
            return EXIT_FAILED
        except ConfigError as error:
            events.update_status(status="failed", reason=str(error))
            raise
        except Exception as error:  # noqa: BLE001 - a crash still ends the stream
            traceback.print_exc(file=sys.stderr)
            reason = f"{type(error).__name__}: {error}".splitlines()[0]
            self._end(trainer, "failed", reason, self.final_metrics, cause="error")
            return EXIT_FAILED
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if trainer is not None:
                trainer.close()
            events.close()

    def _loop(self, trainer, profiler, utilization, loss_keys) -> int:
        config, events = self.config, self.events
        total_steps = steps_to_train(config)
        interval = config["train"]["checkpoint_interval"]
        progress_interval = config["logger"]["progress_interval"]
        group = self.group
        source = provenance.record(self.run_dir, Path(__file__).resolve().parent.parent) if group.rank == 0 else None
        events.emit("start", config=config, git=source, host=socket.gethostname(),
                    device=str(trainer.device), params=trainer.policy_params, total_steps=total_steps,
                    resumed=self.resume, epoch=trainer.epoch, agent_steps=trainer.agent_steps,
                    world_size=group.world_size)
        if source and source.get("patch_note"):
            events.message("warning", f"{source['patch_note']}: `puffctl runs checkout` cannot restore this run's code")
        profiler.mark(trainer.epoch, trainer.agent_steps)
        window, last_env, losses = Window(), {}, {key: None for key in loss_keys}
        watchdog, halt_on, halting = Watchdog(config["watchdog"]), set(config["train"]["halt_on"]), []
        last_progress = time.perf_counter()
        while trainer.agent_steps < total_steps:
            window.add(trainer.evaluate())
            losses = trainer.train()
            self.trained = True
            profiler.mark(trainer.epoch, trainer.agent_steps)
            alarms = watchdog.check(losses, profiler.sps()) if group.rank == 0 else []
            for alarm in alarms:
                if alarm.name not in halt_on:
                    events.message("warning", f"watchdog {alarm.name}: {alarm.text}")
            halting = [alarm for alarm in alarms if alarm.name in halt_on] or halting  # kept until the ranks agree
            done = trainer.agent_steps >= total_steps
            now = time.perf_counter()
            # every rank takes the same branches: a signal to any rank stops them all
            stopping, reporting, halt = group.agree(self.stop_signal is not None,
                                                    done or now - last_progress >= progress_interval, bool(halting),
                                                    now=done)
            if halt:
                self._checkpoint(trainer)
                losses, env, _ = self._reduce(losses, window, profiler)
                reason = (f"halted by watchdog {halting[0].name} (train.halt_on): {halting[0].text}; checkpoint kept"
                          if halting else "halted by a watchdog")
                self._end(trainer, "failed", reason, {"losses": losses, "env": env or last_env}, cause="diverged")
                return EXIT_FAILED
            if reporting or stopping:
                last_progress = now
                losses, env, perf = self._reduce(losses, window, profiler)
                last_env = env or last_env
                self.final_metrics = {"losses": losses, "env": last_env}
                self._progress(trainer, profiler, utilization, losses, env, perf)
            if interval and trainer.epoch % interval == 0 and not done and not stopping:
                self._checkpoint(trainer)
            if stopping:
                self._checkpoint(trainer)
                self._end(trainer, "interrupted", f"stopped by {self.stop_signal or 'a signal to another rank'}",
                          {"losses": losses, "env": last_env})
                return EXIT_INTERRUPTED
        self._checkpoint(trainer)
        self._end(trainer, "completed", None, {"losses": losses, "env": last_env})
        return EXIT_COMPLETED

    def _reduce(self, losses: dict, window: Window, profiler) -> tuple[dict, dict, dict]:
        """The losses, episode means and timings of every rank (on rank 0; the others get their own):
        losses and timings averaged over the ranks, episodes pooled. Collective."""
        if self.group.world_size == 1:
            return losses, window.read(), profiler.perf()
        parts = self.group.gather((losses, *window.take(), profiler.perf()))
        if parts is None:
            return losses, {}, {}
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        for _, rank_sums, rank_counts, _ in parts:
            for key, value in rank_sums.items():
                sums[key] = sums.get(key, 0.0) + value
                counts[key] = counts.get(key, 0) + rank_counts[key]
        mean = lambda values: sum(values) / len(values)  # noqa: E731
        losses = {key: mean([part[0][key] for part in parts]) if isinstance(value, (int, float)) else value
                  for key, value in losses.items()}
        perf = {phase: {key: mean([part[3][phase][key] for part in parts]) for key in node}
                for phase, node in parts[0][3].items()}
        return losses, {key: sums[key] / counts[key] for key in sums}, perf

    def _progress(self, trainer, profiler, utilization, losses: dict, env: dict, perf: dict) -> None:
        sps = profiler.sps()
        total = steps_to_train(self.config)
        remaining = max(total - trainer.agent_steps, 0)
        self.events.emit(
            "progress", epoch=trainer.epoch, agent_steps=trainer.agent_steps, total_steps=total,
            sps=sps, uptime=profiler.uptime(), eta=remaining / sps if sps > 0 else None,
            perf=perf, losses=losses, env=env, util=utilization.read())
        self.events.update_status(epoch=trainer.epoch, agent_steps=trainer.agent_steps)

    def _checkpoint(self, trainer) -> None:
        """Rank 0 writes the checkpoint: the shared state and every rank's own (`ranks`). Collective."""
        group = self.group
        parts = group.gather(trainer.rank_state() if group.rank > 0 else None)
        if group.rank > 0:
            return
        state = trainer.state_dict()
        if group.world_size > 1:
            state["ranks"] = {rank: part for rank, part in enumerate(parts) if rank > 0}
        saved = checkpoint.save(self.run_dir, trainer.epoch, state, keep=self.config["train"]["keep_checkpoints"])
        if trainer.envs_unsaved and not self.warned_envs:
            self.warned_envs = True
            self.events.message("warning", f"checkpoints cannot hold this env's state ({trainer.envs_unsaved}); "
                                           "a resume restarts its episodes")
        self.events.emit("checkpoint", **saved, epoch=trainer.epoch, agent_steps=trainer.agent_steps)

    def _end(self, trainer, status: str, reason: str | None, metrics: dict, cause: str | None = None) -> None:
        """The end event and the final status.json; status.json keeps the progress it had when
        this process trained no epoch (a failed start never regresses it)."""
        epoch = trainer.epoch if trainer is not None else self.events.status["epoch"]
        steps = trainer.agent_steps if trainer is not None else self.events.status["agent_steps"]
        try:
            if reason and status == "failed":
                self.events.message("error", reason)
            self.events.emit("end", status=status, reason=reason, cause=cause, epoch=epoch, agent_steps=steps, metrics=metrics)
            self.ended = True
        except OSError as error:  # the stream cannot be written (disk full): status.json still says why
            print(f"error: {error}", file=sys.stderr)
        progress = {"epoch": epoch, "agent_steps": steps} if self.trained else {}
        try:
            self.events.update_status(status=status, reason=reason, **progress)
        except OSError as error:
            print(f"error: status.json not written: {error}", file=sys.stderr)


def run(config: dict, run_dir: Path, resume: bool = False, events_stdout: bool = False,
        lock_fd: int | None = None) -> int:
    """Train `config` in `run_dir`, holding its lock throughout (taken here, or adopted from the
    launcher's `lock_fd`); return the exit code (0 completed, 1 failed, 130 interrupted).
    Under torchrun (WORLD_SIZE > 1) this is one rank: rank 0 holds the lock, unless the group's
    launcher (`python -m trainer.distributed`) already does.
    Raises ConfigError, RunError or runlock.RunLocked for bad input (exit 2)."""
    run_dir = Path(run_dir)
    if resume and not run_dir.is_dir():
        raise RunError(f"no run directory {run_dir} to resume")
    world_size, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    requested = config["train"]["world_size"]
    if world_size != requested and not resume:
        raise ConfigError(f"train.world_size={requested} but this trainer is {world_size} process(es): start it with "
                          f"`python -m trainer.distributed --nproc {requested} ...` (puffctl train does)")
    config["train"]["world_size"] = world_size  # a resume may run on another number of ranks
    run_dir.mkdir(parents=True, exist_ok=True)
    if rank > 0 or (lock_fd is None and distributed.parent_holds_lock(run_dir)):
        lock = contextlib.nullcontext()  # held by rank 0, or by the launcher of the group
    elif lock_fd is not None:
        lock = runlock.adopt(lock_fd, run_dir, "trainer")
    else:
        lock = runlock.acquire(run_dir, "trainer")
    from trainer.train import select_device

    with lock:
        group = distributed.Group.start(select_device(config["train"]["device"]).type)
        try:
            return Run(config, run_dir, resume, events_stdout, group).execute()
        finally:
            group.close()
