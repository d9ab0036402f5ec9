"""The one vector-env interface the trainer codes against: batched numpy arrays in and out.

Every env (gymnasium or built-in) steps with *same-step autoreset*: when a sub-env's episode
ends, the same `step` call returns the last observation of that episode in `final_obs` and the
first observation of the next episode in `obs`. Terminations (the MDP ended) and truncations
(a time limit cut it) are reported apart.

Buffers are reused: the arrays of a `StepResult` (and the one `reset` returns) belong to the
env and are overwritten by the next `step` or `reset`. Copy what you keep past that.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import gymnasium
import numpy as np


class EnvError(ValueError):
    """A bad env request (unknown name, unsupported space, bad kwarg): the message says which."""


@dataclass
class StepResult:
    """What one `VecEnv.step` returns, one row per sub-env."""

    obs: np.ndarray
    """[N, obs_size] float32; for sub-envs that ended this step, the first obs of the next episode."""
    rewards: np.ndarray
    """[N] float32, raw (unclamped)."""
    terminations: np.ndarray
    """[N] bool: the episode reached a terminal state."""
    truncations: np.ndarray
    """[N] bool: the episode was cut by a time limit (and did not terminate)."""
    final_obs: np.ndarray | None
    """[N, obs_size] float32, the last obs of each ended episode (rows where
    terminations | truncations; other rows unspecified); None if nothing ended."""
    episodes: list[dict]
    """One dict per episode that ended this step: episode_return, episode_length, env stats."""


class VecEnv(ABC):
    """A batch of `num_envs` sub-envs stepped together; observations flattened to float32."""

    num_envs: int
    single_observation_space: gymnasium.Space
    single_action_space: gymnasium.Space
    obs_size: int

    @abstractmethod
    def reset(self, seed: int | None = None) -> np.ndarray:
        """Start new episodes in every sub-env; returns obs [num_envs, obs_size] float32.

        A seed reseeds the env (same seed, same trajectories); None continues its RNG.
        """

    @abstractmethod
    def step(self, actions: np.ndarray) -> StepResult:
        """Apply one action per sub-env (Discrete [N] int, MultiDiscrete [N, k] int, Box [N, *shape])."""

    def close(self) -> None:
        """Release the env's resources (a no-op for pure-numpy envs)."""

    def __enter__(self) -> VecEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EpisodeTracker:
    """Running return and length per sub-env; turns episode ends into `StepResult.episodes` dicts.

    Tracked here rather than through gymnasium wrappers, whose statistics differ between
    autoreset modes.
    """

    def __init__(self, num_envs: int) -> None:
        self.returns = np.zeros(num_envs, dtype=np.float64)
        self.lengths = np.zeros(num_envs, dtype=np.int64)

    def reset(self) -> None:
        self.returns[:] = 0.0
        self.lengths[:] = 0

    def step(self, rewards: np.ndarray, done: np.ndarray) -> tuple[np.ndarray, list[dict]]:
        """Count one step; return the indices of the sub-envs in `done` and their episode dicts."""
        self.returns += rewards
        self.lengths += 1
        if not done.any():
            return _NO_INDICES, []
        ended = np.flatnonzero(done)
        episodes = [
            {"episode_return": r, "episode_length": n}
            for r, n in zip(self.returns[ended].tolist(), self.lengths[ended].tolist())
        ]
        self.returns[ended] = 0.0
        self.lengths[ended] = 0
        return ended, episodes


_NO_INDICES = np.zeros(0, dtype=np.int64)
