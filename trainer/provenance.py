"""Where a run's code came from: the commit, the patch of everything uncommitted, and its hash.

One definition for every path (a local launch, a container sync, the trainer on its own, and
`puffctl runs checkout`): the patch is `git diff --binary HEAD` with the untracked files that
are not ignored added as new files, so one tree gets one hash wherever it is described.
A run directory keeps `source.json` and, when the tree was dirty, `source.patch` next to it.
Imports no torch (the CLI uses it).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

SOURCE_FILE = "source.json"
PATCH_FILE = "source.patch"
#: Where a synced tree (a container's /workspace) carries the provenance of the tree it came from.
STATE_DIR = ".puffctl"
#: A patch larger than this is hashed but not stored (the run then cannot be checked out exactly).
PATCH_CAP = 16 * 2**20
#: Flags that make the patch independent of the user's git config (colour, prefixes, renames, drivers).
DIFF = ("diff", "--binary", "--no-color", "--no-ext-diff", "--no-textconv", "--no-renames",
        "--src-prefix=a/", "--dst-prefix=b/", "HEAD")


class ProvenanceError(Exception):
    """Git is missing, the directory is not a work tree, or a patch does not restore its tree."""


@dataclass
class Source:
    """A tree's provenance (`info`, what source.json holds) and its patch (None when over the cap)."""

    info: dict
    patch: bytes | None


def git(repo: Path, *args: str, env: dict | None = None, stdin: bytes | None = None) -> bytes:
    """Run git in `repo`; its stdout, or ProvenanceError with git's last line."""
    try:
        done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, input=stdin, env=env, timeout=120)
    except FileNotFoundError:
        raise ProvenanceError("git is not installed") from None
    if done.returncode != 0:
        last = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or [f"exit code {done.returncode}"]
        raise ProvenanceError(f"git {args[0]} in {repo}: {last[0]}")
    return done.stdout


def repo_root(start: Path | None = None) -> Path:
    """The top of the git work tree containing `start` (default: the current directory)."""
    start = Path(start) if start else Path.cwd()
    if not start.is_dir():
        raise ProvenanceError(f"{start} is not a directory")
    return Path(git(start, "rev-parse", "--show-toplevel").decode().strip())


def tracked_files(repo: Path) -> list[str]:
    """`git ls-files`: the tracked files."""
    return [p for p in git(repo, "ls-files", "-z").decode().split("\0") if p]


def untracked_files(repo: Path) -> list[str]:
    """The untracked files that are not ignored (what the patch adds as new files)."""
    return [p for p in git(repo, "ls-files", "--others", "--exclude-standard", "-z").decode().split("\0") if p]


def source_files(repo: Path) -> list[str]:
    """The files of the tree the provenance describes: tracked and untracked-but-not-ignored."""
    return sorted(set(tracked_files(repo)) | set(untracked_files(repo)))


def capture(repo: Path, cap: int = PATCH_CAP) -> Source:
    """The provenance of work tree `repo`: commit, dirty, diff_hash (sha256 of the patch) and the patch.

    The untracked files join the diff through intent-to-add entries in a scratch copy of the
    index, so the user's index is never touched and no objects are written.
    """
    repo = Path(repo)
    commit = git(repo, "rev-parse", "--verify", "HEAD").decode().strip()
    untracked = untracked_files(repo)
    with tempfile.TemporaryDirectory() as scratch:
        index = Path(scratch) / "index"
        real = Path(git(repo, "rev-parse", "--path-format=absolute", "--git-path", "index").decode().strip())
        if real.is_file():
            # copy2 keeps the index's mtime: git's check for files changed within the second the
            # index was written compares against it, and a fresh mtime would report them clean.
            shutil.copy2(real, index)
        env = {**os.environ, "GIT_INDEX_FILE": str(index)}
        for start in range(0, len(untracked), 500):
            git(repo, "add", "--intent-to-add", "--", *untracked[start:start + 500], env=env)
        digest, kept, size = _stream_diff(repo, env, cap)
    info = {"commit": commit, "dirty": size > 0, "diff_hash": digest if size else None,
            "patch_bytes": size, "untracked": len(untracked)}
    if size and kept is None:
        info["patch_note"] = (f"uncommitted changes not stored: the patch is {size / 2**20:.1f} MiB, over the "
                              f"{cap / 2**20:.0f} MiB cap (large untracked files? add them to .gitignore)")
    return Source(info, kept if size else None)


def _stream_diff(repo: Path, env: dict, cap: int) -> tuple[str, bytes | None, int]:
    """sha256 of the diff, its bytes (None past `cap`, so memory stays bounded) and its size."""
    process = subprocess.Popen(["git", "-C", str(repo), *DIFF], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    digest, chunks, size = hashlib.sha256(), [], 0
    for chunk in iter(lambda: process.stdout.read(1 << 20), b""):
        digest.update(chunk)
        size += len(chunk)
        if size <= cap:
            chunks.append(chunk)
    error = process.stderr.read()
    if process.wait() != 0:
        raise ProvenanceError(f"git diff in {repo}: {error.decode(errors='replace').strip()}")
    return digest.hexdigest(), (b"".join(chunks) if size <= cap else None), size


def write(directory: Path, source: Source) -> None:
    """Store `source` in `directory`: source.json, and source.patch when there is one."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if source.patch is not None:
        (directory / PATCH_FILE).write_bytes(source.patch)
    (directory / SOURCE_FILE).write_text(json.dumps(source.info, indent=2) + "\n")


def read(directory: Path) -> Source | None:
    """The provenance stored in `directory`, or None when it holds none (or an unreadable one)."""
    try:
        info = json.loads((Path(directory) / SOURCE_FILE).read_text())
    except (OSError, ValueError):
        return None
    patch_path = Path(directory) / PATCH_FILE
    dirty = isinstance(info, dict) and info.get("dirty")
    return Source(info, patch_path.read_bytes() if dirty and patch_path.is_file() else None)


def record(run_dir: Path, code_root: Path) -> dict | None:
    """The run's provenance, stored in `run_dir` on first call; None when the code has none.

    Looks in the run directory (the launcher recorded it), then in a synced tree's STATE_DIR,
    then asks git, but only when `code_root` is the top of its own work tree (an installed
    package inside some other project's repository is not identified by that repository).
    """
    stored = read(run_dir)
    if stored is not None:
        return stored.info
    source = read(Path(code_root) / STATE_DIR)
    if source is None:
        try:
            if repo_root(code_root).resolve() != Path(code_root).resolve():
                return None
            source = capture(code_root)
        except ProvenanceError:
            return None
    write(run_dir, source)
    return source.info


def restore(repo: Path, source: Source, into: Path) -> Path:
    """Recreate the described tree: a git worktree of `repo` at the commit, the patch applied,
    verified by recomputing the hash. Refuses a patch whose bytes do not match the recorded hash."""
    info, into = source.info, Path(into).resolve()
    if info.get("dirty"):
        if source.patch is None:
            raise ProvenanceError(info.get("patch_note") or f"the run's {PATCH_FILE} is missing: cannot restore its uncommitted changes")
        if hashlib.sha256(source.patch).hexdigest() != info.get("diff_hash"):
            raise ProvenanceError(f"{PATCH_FILE} does not match the recorded diff hash (edited or truncated): refusing to apply it")
    if into.exists():
        raise ProvenanceError(f"{into} already exists; pick another --into")
    try:
        git(repo, "cat-file", "-e", f"{info['commit']}^{{commit}}")
    except ProvenanceError:
        raise ProvenanceError(f"commit {info['commit']} is not in {repo} (fetch it first)") from None
    git(repo, "worktree", "add", "--detach", "--quiet", str(into), info["commit"])
    try:
        if source.patch:
            git(into, "apply", "--binary", "--whitespace=nowarn", "-", stdin=source.patch)
        again = capture(into).info
        if again["diff_hash"] != info.get("diff_hash"):
            raise ProvenanceError(f"the restored tree hashes to {again['diff_hash']}, not {info.get('diff_hash')}")
    except BaseException:
        git(repo, "worktree", "remove", "--force", str(into))
        raise
    return into
