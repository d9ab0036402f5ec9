"""puffer:memory, an env that can only be solved with memory.

Each episode shows a random cue (one of `n_cues`) at its first step, then `length` blank
observations, then a query observation; the action taken at the query step is scored
+1 if it names the cue and -1 otherwise, and the episode ends (`length + 2` steps). Actions
before the query do nothing. The query observation is the same whatever the cue, so a
memoryless policy is at chance on the decision (expected return `2/n_cues - 1`), while a
policy that remembers the cue earns 1 every episode.

All sub-envs run in lockstep (every episode has the same length), so the whole batch steps
with a handful of numpy operations. Observation: `n_cues` cue bits + 1 query bit.
"""

from __future__ import annotations

import numpy as np
from gymnasium import spaces

from trainer.envs.vecenv import EnvError, EpisodeTracker, StepResult, VecEnv


class MemoryEnv(VecEnv):
    """Remember the cue shown `length + 1` steps before the query."""

    def __init__(self, num_envs: int, seed: int, *, length: int = 8, n_cues: int = 2) -> None:
        if not isinstance(length, int) or length < 0:
            raise EnvError(f"puffer:memory: length must be an integer >= 0, got {length!r}")
        if not isinstance(n_cues, int) or n_cues < 2:
            raise EnvError(f"puffer:memory: n_cues must be an integer >= 2, got {n_cues!r}")
        self.num_envs = num_envs
        self.length = length
        self.n_cues = n_cues
        self.obs_size = n_cues + 1
        self.single_observation_space = spaces.Box(0.0, 1.0, (self.obs_size,), np.float32)
        self.single_action_space = spaces.Discrete(n_cues)
        self._rng = np.random.default_rng(seed)
        self._rows = np.arange(num_envs)
        self._cues = np.zeros(num_envs, dtype=np.int64)
        self._t = 0
        self._obs = np.zeros((num_envs, self.obs_size), dtype=np.float32)
        self._final_obs = np.zeros((num_envs, self.obs_size), dtype=np.float32)
        self._rewards = np.zeros(num_envs, dtype=np.float32)
        self._zeros = np.zeros(num_envs, dtype=np.bool_)
        self._ones = np.ones(num_envs, dtype=np.bool_)
        self._episodes = EpisodeTracker(num_envs)

    def reset(self, seed: int | None = None) -> np.ndarray:
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self._episodes.reset()
        self._start_episodes()
        return self._obs

    def step(self, actions: np.ndarray) -> StepResult:
        actions = np.asarray(actions).reshape(self.num_envs)
        if self._t <= self.length:
            self._t += 1
            self._obs[:] = 0.0
            if self._t == self.length + 1:
                self._obs[:, self.n_cues] = 1.0
            self._rewards[:] = 0.0
            self._episodes.step(self._rewards, self._zeros)
            return StepResult(self._obs, self._rewards, self._zeros, self._zeros, None, [])
        correct = actions == self._cues
        np.copyto(self._rewards, np.where(correct, 1.0, -1.0))
        _, episodes = self._episodes.step(self._rewards, self._ones)
        for episode, score in zip(episodes, correct.tolist()):
            episode["score"] = float(score)
        self._final_obs[:] = self._obs
        self._start_episodes()
        return StepResult(self._obs, self._rewards, self._ones, self._zeros, self._final_obs, episodes)

    def _start_episodes(self) -> None:
        """Draw a cue per sub-env and show it."""
        self._cues[:] = self._rng.integers(self.n_cues, size=self.num_envs)
        self._t = 0
        self._obs[:] = 0.0
        self._obs[self._rows, self._cues] = 1.0
