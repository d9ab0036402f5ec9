"""A tar of a work tree's files for Docker (container sync, image builds), made from the work tree itself."""

from __future__ import annotations

import io
import json
import os
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from puffctl.errors import PuffctlError


@dataclass
class Archive:
    """A tar of a repo's files (in a spooled temp file) and the list of what is in it."""

    data: tempfile.SpooledTemporaryFile
    files: list[str]
    size: int


def repo_root(repo: Path | None = None) -> Path:
    """The top of the git work tree containing repo (default: the current directory)."""
    from trainer import provenance

    try:
        return provenance.repo_root(repo)
    except provenance.ProvenanceError as error:
        raise PuffctlError(f"{repo or Path.cwd()} is not a usable git work tree: {error}") from None


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
    tar.addfile(info, io.BytesIO(data))


def git_archive(repo: Path, extra: dict[str, bytes] | None = None, files: list[str] | None = None) -> Archive:
    """Tar `files` of repo (default: the tracked ones) from its work tree, missing ones skipped, plus extra files."""
    from trainer import provenance

    repo = Path(repo)
    if files is None:
        try:
            files = provenance.tracked_files(repo)
        except provenance.ProvenanceError as error:
            raise PuffctlError(f"{repo} is not a usable git work tree: {error}") from None
    data = tempfile.SpooledTemporaryFile(max_size=64 * 2**20)
    present = []
    with tarfile.open(fileobj=data, mode="w") as tar:
        for path in files:
            full = repo / path
            if not os.path.lexists(full):
                continue
            info = tar.gettarinfo(str(full), arcname=path)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            if info.isreg():
                with open(full, "rb") as handle:
                    tar.addfile(info, handle)
            else:
                tar.addfile(info)
            present.append(path)
        for name, content in (extra or {}).items():
            _add_bytes(tar, name, content)
    size = data.tell()
    data.seek(0)
    return Archive(data, present, size)


def tree_source(repo: Path):
    """The provenance of the tree at `repo` (trainer.provenance.capture) and the files it is made
    of (tracked ones and untracked ones not ignored): what a sync sends and records."""
    from trainer import provenance

    try:
        captured = provenance.capture(repo)
        files = provenance.source_files(repo)
    except provenance.ProvenanceError as error:
        raise PuffctlError(f"cannot send {repo}: {error}") from None
    if captured.patch is None and captured.info["dirty"]:
        raise PuffctlError(f"cannot send {repo}: {captured.info['patch_note']}")
    return captured, files


def tree_archive(repo: Path) -> tuple[Archive, dict]:
    """The tree the provenance describes (tracked files and untracked ones not ignored) with its
    source.json, source.patch and a manifest in STATE_DIR: what a container sync uploads."""
    from trainer import provenance

    captured, files = tree_source(repo)
    state = provenance.STATE_DIR
    extra = {f"{state}/{provenance.SOURCE_FILE}": json.dumps(captured.info, indent=2).encode() + b"\n",
             f"{state}/manifest.txt": "\n".join(files).encode() + b"\n"}
    if captured.patch:
        extra[f"{state}/{provenance.PATCH_FILE}"] = captured.patch
    return git_archive(repo, extra, files=files), captured.info
