"""Where puffctl keeps what it can rebuild: extension builds, rendered CLI answers."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """The cache folder: $PUFFCTL_CACHE_DIR, else ~/.cache/puffctl."""
    configured = os.environ.get("PUFFCTL_CACHE_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "puffctl"
