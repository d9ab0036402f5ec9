"""Checkpoints: everything a run needs to continue exactly, written atomically and verified.

Files are `checkpoints/epoch_<NNNNNNNN>.pt`, each next to a sidecar `epoch_<NNNNNNNN>.pt.json`
(`{"file", "size", "sha256"}`) that is in place before the checkpoint is renamed into place, so
every checkpoint a reader can see can be checked without reading the event stream. Loading
takes the newest checkpoint that matches its sidecar and loads (`newest_intact`), and says
what it skipped.
torch is imported only to save and load: the CLI checks checkpoints without it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from collections.abc import Callable
from typing import Any

SIDECAR = ".json"


class NoIntactCheckpoint(Exception):
    """No checkpoint of the run is intact; the message lists what is wrong with each."""


def sha256_of(path: Path) -> tuple[int, str]:
    """(size, sha256 hex) of a file."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _write_synced(path: Path, write) -> None:
    with open(path, "wb") as file:
        write(file)
        file.flush()
        os.fsync(file.fileno())


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save(run_dir: Path, epoch: int, state: dict[str, Any], keep: int) -> dict[str, Any]:
    """Write `state` to a temporary file, fsync it, write its sidecar, rename it into place;
    prune old ones. Returns {"path" (relative to `run_dir`), "size", "sha256"}. On a write
    error (disk full) nothing is left behind and the older checkpoints are untouched."""
    import torch

    directory = Path(run_dir) / "checkpoints"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"epoch_{epoch:08d}.pt"
    tmp = directory / f".{path.name}.tmp.{os.getpid()}"
    sidecar, sidecar_tmp = sidecar_of(path), directory / f".{path.name}{SIDECAR}.tmp.{os.getpid()}"
    try:
        _write_synced(tmp, lambda file: torch.save(state, file))
        size, digest = sha256_of(tmp)
        record = {"file": path.name, "size": size, "sha256": digest}
        _write_synced(sidecar_tmp, lambda file: file.write(json.dumps(record).encode()))
        os.replace(sidecar_tmp, sidecar)
        os.replace(tmp, path)
        _fsync_dir(directory)
    except OSError as error:
        for leftover in (tmp, sidecar_tmp):
            leftover.unlink(missing_ok=True)
        raise OSError(error.errno, f"checkpoint {path.name} not written: {error.strerror or error}") from error
    prune(run_dir, keep)
    return {"path": str(path.relative_to(run_dir)), "size": size, "sha256": digest}


def prune(run_dir: Path, keep: int) -> None:
    """Keep the newest `keep` checkpoints; drop sidecars without a checkpoint and temporary
    files of killed writers (the caller holds the run lock, so no other writer is live)."""
    directory = Path(run_dir) / "checkpoints"
    for old in all_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
        sidecar_of(old).unlink(missing_ok=True)
    for path in directory.iterdir():
        orphan = path.name.endswith(".pt" + SIDECAR) and not path.with_name(path.name[: -len(SIDECAR)]).exists()
        if orphan or (path.name.startswith(".") and ".tmp." in path.name):
            path.unlink(missing_ok=True)


def sidecar_of(path: Path) -> Path:
    """The sidecar that records a checkpoint's size and sha256."""
    return path.with_name(path.name + SIDECAR)


def all_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoint files (renamed into place, so complete when written), oldest first."""
    directory = Path(run_dir) / "checkpoints"
    return sorted(directory.glob("epoch_*.pt")) if directory.is_dir() else []


def latest(run_dir: Path) -> Path | None:
    """The newest checkpoint file, or None (not verified: see `load_newest_intact`)."""
    found = all_checkpoints(run_dir)
    return found[-1] if found else None


def damage(path: Path) -> str | None:
    """What is wrong with a checkpoint file compared with its sidecar, or None if it matches
    (or predates sidecars: then only loading it can tell)."""
    try:
        record = json.loads(sidecar_of(path).read_text())
        expected_size, expected_sha = int(record["size"]), str(record["sha256"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return "its sidecar is unreadable"
    try:
        size, digest = sha256_of(path)
    except OSError as error:
        return f"unreadable ({error.strerror or error})"
    if size != expected_size:
        return f"{size} bytes, {expected_size} written (truncated)" if size < expected_size else \
            f"{size} bytes, {expected_size} written"
    if digest != expected_sha:
        return "its sha256 differs from the one written"
    return None


def load(path: Path) -> dict[str, Any]:
    """Read a checkpoint (it holds numpy RNG states and pickled envs, so not weights_only)."""
    import torch

    return torch.load(path, map_location="cpu", weights_only=False)


def newest_intact(run_dir: Path, loader: Callable[[Path], Any] | None = None) -> tuple[Path, Any, list[str]]:
    """The newest checkpoint that matches its sidecar (and, given `loader`, loads with it),
    what `loader` returned, and one line per newer checkpoint skipped as damaged.
    Raises NoIntactCheckpoint when none is intact. Without `loader` it needs no torch."""
    skipped: list[str] = []
    for path in reversed(all_checkpoints(run_dir)):
        problem = damage(path)
        if problem is None:
            try:
                return path, loader(path) if loader is not None else None, skipped
            except Exception as error:  # noqa: BLE001 - any unreadable file is damage
                problem = f"does not load ({type(error).__name__}: {error})".splitlines()[0]
        skipped.append(f"{path.relative_to(run_dir)} is damaged: {problem}")
    name, directory = Path(run_dir).name, Path(run_dir) / "checkpoints"
    if not skipped:
        raise NoIntactCheckpoint(f"run {name} has no checkpoint in {directory} to resume from")
    raise NoIntactCheckpoint(f"run {name} has no intact checkpoint to resume from ({'; '.join(skipped)})")
