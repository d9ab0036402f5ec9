"""Checkpoints: everything a run needs to continue exactly, written atomically.

Files are `checkpoints/epoch_<NNNNNNNN>.pt`; the newest complete one is the run's state.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch


def save(run_dir: Path, epoch: int, state: dict[str, Any], keep: int) -> Path:
    """Write `state` to a temporary file, fsync it and os.replace it into place; prune old ones.
    Returns the path relative to `run_dir`."""
    directory = Path(run_dir) / "checkpoints"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"epoch_{epoch:08d}.pt"
    tmp = directory / f".{path.name}.tmp.{os.getpid()}"
    with open(tmp, "wb") as file:
        torch.save(state, file)
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, path)
    for old in all_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return path.relative_to(run_dir)


def all_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    directory = Path(run_dir) / "checkpoints"
    return sorted(directory.glob("epoch_*.pt")) if directory.is_dir() else []


def latest(run_dir: Path) -> Path | None:
    """The newest complete checkpoint, or None."""
    found = all_checkpoints(run_dir)
    return found[-1] if found else None


def load(path: Path) -> dict[str, Any]:
    """Read a checkpoint (it holds numpy RNG states and pickled envs, so not weights_only)."""
    return torch.load(path, map_location="cpu", weights_only=False)
