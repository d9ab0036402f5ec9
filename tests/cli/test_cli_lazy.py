"""The lazy root: `puffctl --help` and Tab on the first word import no command module."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from puffctl.cli import COMMANDS, load

REPO = Path(__file__).resolve().parents[2]
ENTRY = ("import atexit, sys; out = sys.argv.pop(1); atexit.register(lambda: open(out, 'w').write(' '.join(sys.modules))); "
         "sys.argv[0] = 'puffctl'; from puffctl.entry import main; main()")


def imported_by(*args: str, env: dict | None = None) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run the console entry point; return its result and every module it had imported at exit."""
    with tempfile.NamedTemporaryFile("r", suffix=".txt") as modules:
        result = subprocess.run([sys.executable, "-c", ENTRY, modules.name, *args], cwd=REPO, capture_output=True,
                                text=True, env={**os.environ, **(env or {})}, timeout=60)
        return result, set(modules.read().split())


def test_root_help_lists_every_command_without_importing_them():
    result, names = imported_by("--help")
    assert result.returncode == 0, result.stderr
    for name, (_, text) in COMMANDS.items():
        assert re.search(rf"^  {name} +{re.escape(' '.join(text.split()[:3]))}", result.stdout, re.M), name
    assert not [n for n in names if n.startswith("puffctl.commands.") or n.split(".")[0] in ("rich", "torch")]


def test_first_word_completion_reads_the_registry_only():
    result, names = imported_by(env={"_PUFFCTL_COMPLETE": "complete_bash", "COMP_WORDS": "puffctl ru", "COMP_CWORD": "1"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["runs"]
    assert not [n for n in names if n.startswith("puffctl.commands.") or n.split(".")[0] in ("rich", "pydantic")]


def test_root_answers_are_kept_then_printed_without_typer(tmp_path):
    cache = {"PUFFCTL_CACHE_DIR": str(tmp_path)}
    tab = {"_PUFFCTL_COMPLETE": "complete_bash", "COMP_WORDS": "puffctl ", "COMP_CWORD": "1"}
    for args, env in ((["--help"], cache), ([], {**cache, **tab})):
        rendered, first = imported_by(*args, env=env)
        kept, second = imported_by(*args, env=env)
        assert rendered.returncode == kept.returncode == 0 and rendered.stdout, rendered.stderr
        assert kept.stdout == rendered.stdout
        assert "typer" in first and not {"typer", "click"} & second
    wide, _ = imported_by("--help", env=cache)
    narrow, _ = imported_by("--help", env={**cache, "COLUMNS": "50"})
    assert max(map(len, narrow.stdout.splitlines())) <= 50 < max(map(len, wide.stdout.splitlines()))
    unwritable, _ = imported_by("--help", env={"PUFFCTL_CACHE_DIR": "/proc/puffctl-cache"})
    assert unwritable.returncode == 0 and unwritable.stdout == wide.stdout


def test_group_completion_loads_that_group():
    result, names = imported_by(env={"_PUFFCTL_COMPLETE": "complete_bash", "COMP_WORDS": "puffctl runs s", "COMP_CWORD": "2"})
    assert result.returncode == 0, result.stderr
    assert "show" in result.stdout.split()
    assert "puffctl.commands.runs" in names and "puffctl.commands.box" not in names


@pytest.mark.parametrize("name", list(COMMANDS))
def test_registry_help_is_the_commands_own(name):
    command = load(name)
    assert command.name == name
    assert command.get_short_help_str(500) == COMMANDS[name][1]
