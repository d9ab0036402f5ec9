"""Fixtures shared by every test area."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def compiled_ops() -> str:
    """The compiled advantage ops, built once (or found in the cache) and loaded; their flavour."""
    from rich.console import Console

    from puffctl.build import build
    from puffctl.errors import PuffctlError
    from trainer import extension

    try:
        build(console=Console(stderr=True, quiet=True))
    except PuffctlError as error:
        pytest.fail(f"the advantage extension does not build: {error}")
    flavor = extension.load()
    assert flavor is not None
    return flavor
