"""Observation flattening and action conversion between gymnasium spaces and flat batches.

Observations become float32 rows: Box and MultiBinary values as they are (flattened), Discrete
as a one-hot, MultiDiscrete as concatenated one-hots (one per component, row-major), Dict and
Tuple recursively in order (Dict keys sorted, so the layout does not depend on how the space
was built). Actions arrive as the policy produces them: Discrete and MultiDiscrete as 0-based
indices (the space's `start` is added here), Box as floats (clipped to the bounds here).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from gymnasium import spaces

from trainer.envs.vecenv import EnvError

Writer = Callable[[Any, np.ndarray], None]
"""Writes a batch of observations (the space's batched structure) into out [n, size] rows."""


class ObsFlattener:
    """Flattens batched observations of one gymnasium space into [n, obs_size] float32."""

    def __init__(self, space: spaces.Space, max_rows: int) -> None:
        self.space = space
        self._rows = np.arange(max_rows)
        self.obs_size, self._write = self._build(space, 0)

    def __reduce__(self) -> tuple:
        """Pickle as the space (the writers are closures, rebuilt on load)."""
        return ObsFlattener, (self.space, len(self._rows))

    def __call__(self, batch: Any, out: np.ndarray) -> np.ndarray:
        """Write `batch` (n observations) into `out[:n]` and return that view."""
        n = _batch_len(batch)
        view = out[:n]
        self._write(batch, view)
        return view

    def _build(self, space: spaces.Space, offset: int) -> tuple[int, Writer]:
        if isinstance(space, (spaces.Box, spaces.MultiBinary)):
            size = int(np.prod(space.shape, dtype=np.int64))
            end = offset + size

            def write_values(batch: Any, out: np.ndarray) -> None:
                out[:, offset:end] = np.asarray(batch).reshape(len(out), size)

            return size, write_values
        if isinstance(space, spaces.Discrete):
            size, start = int(space.n), int(space.start)
            end = offset + size

            def write_one_hot(batch: Any, out: np.ndarray) -> None:
                out[:, offset:end] = 0.0
                index = np.asarray(batch).reshape(len(out)) - start + offset
                out[self._rows[: len(out)], index] = 1.0

            return size, write_one_hot
        if isinstance(space, spaces.MultiDiscrete):
            nvec = space.nvec.reshape(-1).astype(np.int64)
            starts = space.start.reshape(-1).astype(np.int64)
            size = int(nvec.sum())
            end = offset + size
            bases = offset + np.concatenate([[0], np.cumsum(nvec)[:-1]]) - starts

            def write_one_hots(batch: Any, out: np.ndarray) -> None:
                out[:, offset:end] = 0.0
                index = np.asarray(batch).reshape(len(out), len(nvec)) + bases
                out[self._rows[: len(out), None], index] = 1.0

            return size, write_one_hots
        if isinstance(space, spaces.Dict):
            return self._build_composite([(key, space[key]) for key in sorted(space.keys())], offset)
        if isinstance(space, spaces.Tuple):
            return self._build_composite(list(enumerate(space.spaces)), offset)
        raise EnvError(
            f"observation space {space} is not supported: use Box, Discrete, MultiDiscrete, "
            "MultiBinary, Dict or Tuple"
        )

    def _build_composite(self, parts: list[tuple[Any, spaces.Space]], offset: int) -> tuple[int, Writer]:
        writers: list[tuple[Any, Writer]] = []
        size = 0
        for key, subspace in parts:
            part_size, writer = self._build(subspace, offset + size)
            writers.append((key, writer))
            size += part_size

        def write_parts(batch: Any, out: np.ndarray) -> None:
            for key, writer in writers:
                writer(batch[key], out)

        return size, write_parts


def _batch_len(batch: Any) -> int:
    """Number of observations in a batched structure (its first leaf's leading dimension)."""
    while isinstance(batch, (dict, tuple, list)):
        batch = next(iter(batch.values())) if isinstance(batch, dict) else batch[0]
    return len(batch)


class ActionConverter:
    """Turns the policy's batched actions into what the gymnasium vector env expects."""

    def __init__(self, space: spaces.Space, num_envs: int) -> None:
        self.space = space
        if isinstance(space, spaces.Discrete):
            self.shape: tuple[int, ...] = (num_envs,)
            self._offset: int | np.ndarray = int(space.start)
        elif isinstance(space, spaces.MultiDiscrete):
            self.shape = (num_envs, *space.shape)
            self._offset = space.start.astype(np.int64)
        elif isinstance(space, spaces.Box):
            self.shape = (num_envs, *space.shape)
            self._low = space.low
            self._high = space.high
            self._offset = 0
        else:
            raise EnvError(
                f"action space {space} is not supported: use Discrete, MultiDiscrete or Box"
            )
        self._shift = bool(np.any(self._offset))

    def __call__(self, actions: np.ndarray) -> np.ndarray:
        actions = np.asarray(actions)
        if actions.shape != self.shape:
            try:
                actions = actions.reshape(self.shape)
            except ValueError:
                raise EnvError(
                    f"actions of shape {actions.shape} do not fit {self.space} x {self.shape[0]} envs "
                    f"(expected {self.shape})"
                ) from None
        if isinstance(self.space, spaces.Box):
            return np.clip(actions, self._low, self._high).astype(self.space.dtype, copy=False)
        actions = actions.astype(np.int64, copy=False)
        return actions + self._offset if self._shift else actions
