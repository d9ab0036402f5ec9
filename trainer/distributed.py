"""One run across N processes (ranks) through torchrun: the launch command, and the collectives the loop needs.

`python -m trainer.distributed --nproc N TRAINER-ARGS` starts torch's own launcher
(torch.distributed.run, standalone, in this process) with N copies of `python -m trainer`. It
holds the run's lock for the whole group (adopted from `--lock-fd`, or taken here) and exits
with the code of the rank that failed first (2 refused, 1 failed, 130 interrupted).

Each rank steps its own env.num_envs envs with its own seed (train.seed + rank) and collects
its own batch; rank 0's parameters are broadcast at the start and after a resume, and every
minibatch's gradients are averaged across ranks (one flat all-reduce) before clipping and the
optimizer step, so every rank's parameters stay identical. Rank 0 alone writes events,
status.json and checkpoints. One process (no torchrun) is a `Group` of one whose collectives
do nothing. Imports torch only inside functions: the CLI builds the launch command from here.
"""

from __future__ import annotations

import copy
import hashlib
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

#: Set to a directory to have every rank append a hash of its parameters after each update (tests).
HASH_ENV = "PUFFCTL_PARAM_HASHES"
#: How often, in seconds, ranks compare their stop/report/halt flags: a signal is answered within this plus an epoch.
AGREE_SECONDS = 0.1


def command(world_size: int, trainer_args: list[str], python: str = sys.executable) -> list[str]:
    """The command that trains with `trainer_args` on `world_size` ranks (plain `python -m trainer` for one)."""
    if world_size <= 1:
        return [python, "-m", "trainer", *trainer_args]
    return [python, "-m", "trainer.distributed", "--nproc", str(world_size), *trainer_args]


def rank_config(config: dict, rank: int) -> dict:
    """The config rank `rank` trains with: the run's, with train.seed + rank (its own envs and draws)."""
    if rank == 0:
        return config
    config = copy.deepcopy(config)
    config["train"]["seed"] += rank
    return config


def parent_holds_lock(run_dir: Path) -> bool:
    """Whether this process's parent (the launcher of its group) holds the run's lock."""
    from trainer import runlock

    held = runlock.holder(run_dir)
    return bool(held) and held.get("pid") == os.getppid() and held.get("host") == socket.gethostname()


class Group:
    """This process's place in the run: rank, world size, and the collectives (no-ops for one rank)."""

    def __init__(self, rank: int = 0, world_size: int = 1, local_rank: int = 0) -> None:
        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank
        self.objects = None  # gloo group for pickled objects (the default group may be NCCL)
        self.hashes: Path | None = None
        self.updates = 0
        self.pending: list[bool] | None = None  # flags raised since the ranks last agreed
        self.gap, self.epochs_since, self.agreed_at = 1, 0, time.perf_counter()  # agree every `gap` epochs

    @classmethod
    def start(cls, device_type: str) -> Group:
        """Join the group torchrun started (its RANK/WORLD_SIZE environment), or a group of one."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return cls()
        import torch
        import torch.distributed as dist

        _die_with_parent()
        group = cls(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
        if device_type == "cuda":
            torch.cuda.set_device(group.local_rank)
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
        group.objects = dist.new_group(backend="gloo") if device_type == "cuda" else dist.group.WORLD
        if os.environ.get(HASH_ENV):
            group.hashes = Path(os.environ[HASH_ENV]) / f"rank{group.rank}.txt"
        return group

    def device(self, device):
        """This rank's device: CUDA device LOCAL_RANK when training on CUDA."""
        import torch

        if device.type == "cuda" and self.world_size > 1:
            return torch.device("cuda", self.local_rank)
        return device

    def broadcast_parameters(self, module) -> None:
        """Make every rank's parameters and buffers rank 0's."""
        if self.world_size == 1:
            return
        import torch.distributed as dist

        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)

    def average_gradients(self, module) -> None:
        """Replace each gradient with its mean over the ranks (one all-reduce of them all, flattened)."""
        if self.world_size == 1:
            return
        import torch
        import torch.distributed as dist

        grads = [p.grad for p in module.parameters() if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for grad in grads:
            grad.copy_(flat[offset:offset + grad.numel()].view_as(grad))
            offset += grad.numel()

    def updated(self, module) -> None:
        """After an optimizer step: append the parameters' hash to this rank's file when $PUFFCTL_PARAM_HASHES asks."""
        if self.hashes is None:
            return
        digest = hashlib.sha256()
        for param in module.parameters():
            digest.update(param.detach().cpu().contiguous().numpy().tobytes())
        self.updates += 1
        self.hashes.parent.mkdir(parents=True, exist_ok=True)
        with self.hashes.open("a") as file:
            file.write(f"{self.updates} {digest.hexdigest()}\n")

    def agree(self, *flags: bool, now: bool = False) -> list[bool]:
        """Each flag, true on any rank since the ranks last agreed (one small all-reduce): ranks stop,
        report and halt together. Called once per epoch; with several ranks they agree about every
        AGREE_SECONDS (and whenever `now`, which must be the same on every rank): between agreements
        every flag reads false and is kept for the next, so short epochs do not pay a collective each."""
        if self.world_size == 1:
            return list(flags)
        self.pending = [any(pair) for pair in zip(flags, self.pending or flags)]
        self.epochs_since += 1
        if self.epochs_since < self.gap and not now:
            return [False] * len(flags)
        import torch
        import torch.distributed as dist

        clock = time.perf_counter()
        gap = max(1, int(AGREE_SECONDS * self.epochs_since / max(clock - self.agreed_at, 1e-9)))
        values = torch.tensor([*map(int, self.pending), gap], dtype=torch.int64)
        dist.all_reduce(values, op=dist.ReduceOp.MAX, group=self.objects)
        *agreed, self.gap = values.tolist()
        self.pending, self.epochs_since, self.agreed_at = None, 0, clock
        return [bool(value) for value in agreed]

    def minimum(self, value: int) -> int:
        """The smallest `value` over the ranks (so every rank runs as many minibatches)."""
        if self.world_size == 1:
            return value
        import torch
        import torch.distributed as dist

        tensor = torch.tensor([value], dtype=torch.int64)
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN, group=self.objects)
        return int(tensor.item())

    def gather(self, value: Any) -> list[Any] | None:
        """Every rank's `value` in rank order on rank 0 (None elsewhere)."""
        if self.world_size == 1:
            return [value]
        import torch.distributed as dist

        gathered = [None] * self.world_size if self.rank == 0 else None
        dist.gather_object(value, gathered, dst=0, group=self.objects)
        return gathered

    def close(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def _die_with_parent() -> None:
    """Ask Linux to kill this rank when its launcher dies (torchrun starts ranks in sessions of
    their own, so a launcher killed outright would otherwise leave them training without the lock)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG


def main(argv: list[str] | None = None) -> int:
    """`python -m trainer.distributed --nproc N TRAINER-ARGS`: torchrun, holding the run's lock for its ranks."""
    import argparse

    from trainer import runlock

    parser = argparse.ArgumentParser(prog="python -m trainer.distributed",
                                     description="Train one run on N ranks through torch.distributed.run.")
    parser.add_argument("--nproc", type=int, required=True, help="ranks (processes) on this machine")
    parser.add_argument("--run-dir", type=Path, required=True, help="the run directory (passed on to the trainer)")
    parser.add_argument("--lock-fd", type=int, metavar="FD", help="an inherited descriptor holding the run's lock")
    args, rest = parser.parse_known_args(argv)
    if args.nproc < 1:
        print(f"error: --nproc {args.nproc} must be >= 1", file=sys.stderr)
        return 2
    if "--resume" in rest and not args.run_dir.is_dir():
        print(f"error: no run directory {args.run_dir} to resume", file=sys.stderr)
        return 2
    args.run_dir.mkdir(parents=True, exist_ok=True)
    role = f"torchrun ({args.nproc} ranks)"
    try:
        lock = runlock.adopt(args.lock_fd, args.run_dir, role) if args.lock_fd is not None \
            else runlock.acquire(args.run_dir, role)
    except runlock.RunLocked as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    import logging

    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # the failing rank's own line stays last
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    launch = parse_args(["--standalone", f"--nproc-per-node={args.nproc}", "--module", "trainer",
                         "--run-dir", str(args.run_dir), *rest])
    with lock:
        try:
            run(launch)
        except ChildFailedError as error:
            rank, failure = error.get_first_failure()
            if failure.exitcode != 2:  # a refusal's reason is the rank's own last line
                print(f"error: rank {rank} exited with code {failure.exitcode}", file=sys.stderr)
            return failure.exitcode if failure.exitcode > 0 else 1
        except SignalException as error:
            print(f"error: stopped by {error.sigval.name}", file=sys.stderr)
            return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
