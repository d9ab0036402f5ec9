"""The console entry point: `puffctl --help` and a Tab on the first word answered from a cache.

Both answers depend only on the root's code, the request and the terminal width, yet rendering
them imports typer and click, half of the startup. The first request renders through
`puffctl.cli` and keeps the output; later ones print it importing neither. Anything else (and
zsh or fish completion) runs `puffctl.cli` directly.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import sys
from contextlib import redirect_stdout
from importlib.util import find_spec
from pathlib import Path

from trainer.cache import cache_root


def main() -> None:
    """Print the kept answer when the request has one; else run the CLI (keeping its answer when it may)."""
    key = cache_key(sys.argv, os.environ)
    from_cache = cache_root() / "cli" / f"{key}.txt" if key else None
    if from_cache is not None:
        try:
            sys.stdout.write(from_cache.read_text())
            return
        except OSError:
            pass
    from puffctl.cli import main as run

    if from_cache is None:
        run()
        return
    code: int | str | None = 0
    with redirect_stdout(io.StringIO()) as captured:
        try:
            run()
        except SystemExit as done:
            code = done.code
    sys.stdout.write(captured.getvalue())
    if code in (0, None):
        keep(from_cache, captured.getvalue())
    sys.exit(code)


def cache_key(argv: list[str], environ: dict | os._Environ) -> str | None:
    """The key of a request whose answer is kept (root `--help`, bash completion of the first
    word), from everything the answer depends on; None for any other request."""
    completing = environ.get("_PUFFCTL_COMPLETE")
    if completing:
        if completing != "complete_bash" or environ.get("COMP_CWORD") != "1":
            return None
        request = [completing, environ.get("COMP_WORDS", "")]
    elif argv[1:] == ["--help"]:
        request = ["--help"]
    else:
        return None
    digest = hashlib.sha256(Path(__file__).with_name("cli.py").read_bytes())
    for library in ("typer", "click"):
        spec = find_spec(library)
        stat = os.stat(spec.origin) if spec and spec.origin else None
        request.append(f"{library}:{spec.origin if spec else None}:{stat.st_mtime_ns if stat else 0}")
    for part in (*request, argv[0], str(shutil.get_terminal_size().columns), sys.version):
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()[:32]


def keep(path: Path, text: str) -> None:
    """Store an answer atomically; a cache that cannot be written only costs the next call time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        partial.write_text(text)
        os.replace(partial, path)
    except OSError:
        pass
