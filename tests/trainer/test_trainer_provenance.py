"""One provenance on every path: a launch, a synced container tree, the trainer alone, a checkout."""

from __future__ import annotations

import hashlib
import os
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from puffctl.archive import tree_archive
from trainer import provenance


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.invalid", *args],
                          check=True, capture_output=True, text=True).stdout


@pytest.fixture
def dirty_repo(tmp_path) -> Path:
    """Committed text and binary files, then: a text edit, a binary edit, a staged edit, a new
    untracked file in a new folder, a deleted file, and an ignored file."""
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    (repo / "pkg" / "train.py").write_text("lr = 0.01\n")
    (repo / "weights.bin").write_bytes(bytes(range(256)) * 4)
    (repo / "gone.txt").write_text("to be deleted\n")
    (repo / ".gitignore").write_text("*.log\n")
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "init")
    (repo / "pkg" / "train.py").write_text("lr = 0.02\n")
    (repo / "weights.bin").write_bytes(bytes(range(255, -1, -1)) * 4)
    (repo / "README.md").write_text("staged\n")
    git(repo, "add", "README.md")
    (repo / "new" / "deep").mkdir(parents=True)
    (repo / "new" / "deep" / "idea.py").write_text("print('untracked')\n")
    (repo / "gone.txt").unlink()
    (repo / "train.log").write_text("ignored\n")
    return repo


def tree_bytes(root: Path, files: list[str]) -> dict[str, bytes]:
    return {name: (root / name).read_bytes() for name in files if (root / name).is_file()}


def test_patch_covers_tracked_binary_staged_and_untracked_but_not_ignored(dirty_repo):
    source = provenance.capture(dirty_repo)
    patch = source.patch.decode()
    for name in ("pkg/train.py", "weights.bin", "README.md", "new/deep/idea.py", "gone.txt"):
        assert f"b/{name}" in patch or f"a/{name}" in patch, name
    assert "train.log" not in patch and "GIT binary patch" in patch
    assert source.info["diff_hash"] == hashlib.sha256(source.patch).hexdigest() and source.info["dirty"]
    assert git(dirty_repo, "status", "--porcelain").splitlines()[-1] == "?? new/", "the user's index is untouched"


def test_an_edit_within_the_second_the_index_was_written_is_seen(tmp_path):
    """Git's racy-clean rule: an entry whose stat matches but whose mtime is not older than the
    index is compared by content. A scratch index with a fresh mtime would call the edit clean."""
    repo = tmp_path / "repo"
    repo.mkdir()
    path = repo / "a.py"
    path.write_text("x = 1\n")
    past = (time.time_ns() - 100 * 10**9,) * 2
    os.utime(path, ns=past)
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "one")
    path.write_text("x = 2\n")
    os.utime(path, ns=past)
    os.utime(repo / ".git" / "index", ns=past)
    assert git(repo, "diff", "--name-only") == "a.py\n", "git itself sees the edit"
    assert provenance.capture(repo).info["dirty"]


def test_the_hash_is_the_same_on_every_path(dirty_repo, tmp_path):
    launched = tmp_path / "runs" / "launched"
    local = provenance.record(launched, dirty_repo)  # what `puffctl train` writes before the trainer starts

    alone = tmp_path / "runs" / "alone"
    alone.mkdir(parents=True)
    assert provenance.record(alone, dirty_repo) == local  # the trainer without source.json asks git itself
    assert provenance.record(launched, Path("/nonexistent")) == local  # the trainer reads what launch stored

    archive, synced_info = tree_archive(dirty_repo)  # what `puffctl container sync` uploads
    workspace = tmp_path / "workspace"
    with tarfile.open(fileobj=archive.data) as tar:
        tar.extractall(workspace, filter="data")
    assert synced_info == local
    in_container = tmp_path / "runs" / "in-container"
    assert provenance.record(in_container, workspace) == local  # the trainer in the container (no .git there)
    files = provenance.source_files(dirty_repo)
    assert tree_bytes(workspace, files) == tree_bytes(dirty_repo, files), "the container gets the described tree"

    restored = provenance.restore(dirty_repo, provenance.read(launched), tmp_path / "checkout")
    assert provenance.capture(restored).info["diff_hash"] == local["diff_hash"]
    for run in (launched, alone, in_container):
        assert (run / provenance.PATCH_FILE).read_bytes() == (launched / provenance.PATCH_FILE).read_bytes()


def test_checkout_reproduces_the_dirty_tree_byte_for_byte(dirty_repo, tmp_path):
    run = tmp_path / "run"
    provenance.record(run, dirty_repo)
    into = provenance.restore(dirty_repo, provenance.read(run), tmp_path / "code")
    files = provenance.source_files(dirty_repo)
    assert provenance.source_files(into) == files
    assert tree_bytes(into, files) == tree_bytes(dirty_repo, files)
    assert (into / "new" / "deep" / "idea.py").read_text() == "print('untracked')\n"
    assert not (into / "gone.txt").exists() and not (into / "train.log").exists()


def test_checkout_refuses_a_tampered_patch(dirty_repo, tmp_path):
    run = tmp_path / "run"
    provenance.record(run, dirty_repo)
    patch = run / provenance.PATCH_FILE
    patch.write_bytes(patch.read_bytes().replace(b"lr = 0.02", b"lr = 0.99"))
    with pytest.raises(provenance.ProvenanceError, match="does not match the recorded diff hash"):
        provenance.restore(dirty_repo, provenance.read(run), tmp_path / "code")
    assert not (tmp_path / "code").exists()


def test_a_patch_over_the_cap_is_hashed_but_not_stored(dirty_repo):
    full = provenance.capture(dirty_repo)
    capped = provenance.capture(dirty_repo, cap=100)
    assert capped.patch is None and capped.info["diff_hash"] == full.info["diff_hash"]
    assert "over the" in capped.info["patch_note"]


def test_clean_tree_and_no_repository(tmp_path, dirty_repo):
    git(dirty_repo, "add", "-A")
    git(dirty_repo, "commit", "-qm", "all")
    clean = provenance.capture(dirty_repo)
    assert clean.patch is None and clean.info["dirty"] is False and clean.info["diff_hash"] is None
    plain = tmp_path / "plain"
    plain.mkdir()
    assert provenance.record(tmp_path / "run", plain) is None
