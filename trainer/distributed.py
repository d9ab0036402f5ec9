"""One run across N processes (ranks) through torchrun: the launch command, and the collectives the loop needs.

`python -m trainer.distributed --nproc N TRAINER-ARGS` starts torch's own launcher
(torch.distributed.run, standalone, in this process) with N copies of `python -m trainer`. It
holds the run's lock for the whole group (adopted from `--lock-fd`, or taken here) and exits
with the code of the rank that failed first (2 refused, 1 failed, 130 interrupted).

Each rank steps its own env.num_envs envs with its own seed (train.seed + rank) and collects
its own batch; rank 0's parameters are broadcast at the start and after a resume, and every
minibatch's gradients are averaged across ranks (one flat collective) before clipping and the
optimizer step, so every rank's parameters stay identical; the ranks' stop/report/halt flags ride
on that exchange, so agreeing on them costs no collective of its own. Rank 0 alone writes events,
status.json and checkpoints. One process (no torchrun) is a `Group` of one whose collectives
do nothing. Imports torch only inside functions: the CLI builds the launch command from here.
"""

from __future__ import annotations

import copy
import hashlib
import os
import socket
import sys
from pathlib import Path
from typing import Any

#: Set to a directory to have every rank append a hash of its parameters after each update (tests).
HASH_ENV = "PUFFCTL_PARAM_HASHES"


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
        self.outbox: list[bool] = []  # flags raised here since the last gradient exchange
        self.inbox = None  # the ranks' summed flags from the exchanges since the last agree (a tensor)

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
        else:
            bind_to_cpu_share(group.local_rank, int(os.environ.get("LOCAL_WORLD_SIZE", world_size)))
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
        """Replace each gradient with its mean over the ranks (one collective for them all, flattened),
        and exchange the flags raised since the last exchange along with them (see `agree`)."""
        if self.world_size == 1:
            return
        import torch

        grads = [p.grad for p in module.parameters() if p.grad is not None]
        flags = torch.tensor(self.outbox, dtype=grads[0].dtype, device=grads[0].device)
        total = self._sum(torch.cat([*(g.reshape(-1) for g in grads), flags]))
        offset = 0
        for grad in grads:
            grad.copy_(total[offset:offset + grad.numel()].view_as(grad)).div_(self.world_size)
            offset += grad.numel()
        summed = total[offset:]
        self.inbox = summed if self.inbox is None else self.inbox + summed
        self.outbox = [False] * len(self.outbox)

    def _sum(self, tensor, group=None):
        """`tensor` summed over the ranks, bit for bit the same on each. Gloo sums by all-gather and
        a local sum in rank order: its all-reduce takes two exchange rounds to the gather's one, and
        these tensors are small (about 2 ms against 0.9 ms per call on a 2-core VM)."""
        import torch.distributed as dist

        if dist.get_backend(group) != "gloo":
            dist.all_reduce(tensor, group=group)
            return tensor
        every = tensor.new_empty(self.world_size * tensor.numel())
        dist.all_gather_single(every, tensor, group=group)
        return every.view(self.world_size, -1).sum(0)

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
        """Each flag, true on any rank by the last gradient exchange: ranks stop, report and halt
        together. Called once per epoch, after training. A flag raised here travels with the next
        epoch's first gradient exchange, so it is agreed one epoch later at no collective of its own;
        `now` (the same on every rank, as at the run's end) agrees everything raised so far at once.
        A flag agreed true answers every raise of it up to this call."""
        if self.world_size == 1:
            return list(flags)
        import torch

        self.outbox = [any(pair) for pair in zip(flags, self.outbox or flags)]
        summed = torch.zeros(len(flags))
        if self.inbox is not None and self.inbox.numel():  # exchanges before the first agree carry no flags
            summed += self.inbox.cpu()
        if now:
            summed = summed + self._sum(torch.tensor(self.outbox, dtype=torch.float32), self.objects)
        agreed = [value > 0 for value in summed.tolist()]
        self.outbox = [raised and not done for raised, done in zip(self.outbox, agreed)]  # answered by this agreement
        self.inbox = None
        return agreed

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


def bind_to_cpu_share(local_rank: int, local_ranks: int) -> None:
    """Bind this CPU rank to its own equal share of the CPUs the launcher may use, when there is at
    least one each. Unbound, the scheduler moves ranks and their gloo threads across the cores at
    every collective: on 2 cores each rank's compute ran 20-35% slower than one process's."""
    if not hasattr(os, "sched_setaffinity"):
        return
    cpus = sorted(os.sched_getaffinity(0))
    share = len(cpus) // local_ranks
    if share >= 1:
        os.sched_setaffinity(0, cpus[local_rank * share:(local_rank + 1) * share])


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
