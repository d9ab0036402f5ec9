"""Places a batch cell can run: one protocol (base.py), one module per place, and `choose`."""

from __future__ import annotations

from collections.abc import Callable

from puffctl.errors import PuffctlError


def choose(where: str | None, *, local_slots: int, slots: int | None = None, storage: object = None,
           per_gpu: int = 1, reassign_after: str | None = None, on_line: Callable[[str], None] = print):
    """The executor for a batch's `where`: local processes on `local_slots` slots (no where, or
    `local`), the box executor (`boxes` or box names), or the Ray executor (`ray://HOST:PORT`,
    `slots` jobs at once, else what the cluster holds). Imports only the one it returns."""
    from puffctl.executors import boxes, ray

    if isinstance(per_gpu, bool) or not isinstance(per_gpu, int) or per_gpu < 1:
        raise PuffctlError(f"per_gpu={per_gpu!r} must be a whole number >= 1")
    seconds = boxes.parse_duration(reassign_after)
    if ray.parse_where(where) is not None:
        if seconds is not None:
            raise PuffctlError("--reassign-after goes with cells on boxes (--where boxes); Ray reschedules its own")
        return ray.executor(where, storage, slots=slots, per_gpu=per_gpu, on_line=on_line)
    names = boxes.parse_where(where)
    if names is None:
        if seconds is not None:
            raise PuffctlError("--reassign-after goes with cells on boxes (--where boxes)")
        from puffctl.executors.local import LocalExecutor

        return LocalExecutor(local_slots)
    return boxes.BoxExecutor(names, per_gpu=per_gpu, cpu_slots=per_gpu, reassign_after=seconds, on_line=on_line)
