"""Any gymnasium env id behind the VecEnv interface, through gymnasium's own vector API.

Which gymnasium vectorization runs:
- the env's native vector implementation (`vector_entry_point`, e.g. CartPoleVectorEnv, which
  steps all sub-envs in one numpy call) when it autoresets on the same step, or when it autoresets
  on the next step and we know how to reset some of its rows (`ROW_RESETS`);
- otherwise `SyncVectorEnv` in SAME_STEP autoreset mode (a Python loop over sub-envs).

Next-step to same-step conversion: a NEXT_STEP vector env returns an episode's last obs, and
only on the following `step` call the reset obs with reward 0 (ignoring that step's action),
which would put a fake transition into the trainer's experience. For such envs this adapter
resets the ended rows right after the step, with the env's own reset rule and RNG, and clears
the env's pending-reset flags, so the env never produces that extra step: the stream is exactly
gymnasium's with the fake transitions cut out.
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Callable
from typing import Any

import gymnasium
import numpy as np
from gymnasium.envs.classic_control.cartpole import CartPoleVectorEnv
from gymnasium.envs.registration import EnvSpec
from gymnasium.vector import AutoresetMode, SyncVectorEnv
from gymnasium.vector.utils import concatenate, create_empty_array

from trainer.envs.spaces import ActionConverter, ObsFlattener
from trainer.envs.vecenv import EnvError, EpisodeTracker, StepResult, VecEnv

RowReset = Callable[[Any, np.ndarray], np.ndarray]
"""Resets the given rows of a native NEXT_STEP vector env; returns their new obs [len(rows), ...]."""


def _reset_cartpole_rows(env: CartPoleVectorEnv, rows: np.ndarray) -> np.ndarray:
    """What CartPoleVectorEnv.step does one call later to its `prev_done` rows (same RNG draws)."""
    fresh = env.np_random.uniform(low=env.low, high=env.high, size=(4, len(rows)))
    env.state[:, rows] = fresh
    env.steps[rows] = 0
    env.prev_done[:] = False
    return fresh.T


ROW_RESETS: dict[type, RowReset] = {CartPoleVectorEnv: _reset_cartpole_rows}


class GymVecEnv(VecEnv):
    """A gymnasium vector env with same-step autoreset, flat float32 obs and our episode stats."""

    def __init__(self, env_id: str, num_envs: int, seed: int, **kwargs: Any) -> None:
        spec = _find_spec(env_id)
        self.env_id = env_id
        self.num_envs = num_envs
        self.env, self.vectorization, self._row_reset = _make_native(spec, num_envs, kwargs)
        if self.env is None:
            self.env = _make_vec(
                spec.id,
                num_envs,
                vectorization_mode="sync",
                vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP, "copy": False},
                **kwargs,
            )
            self.vectorization = "sync"
        self.single_observation_space = self.env.single_observation_space
        self.single_action_space = self.env.single_action_space
        self._flatten = ObsFlattener(self.single_observation_space, num_envs)
        self.obs_size = self._flatten.obs_size
        self._convert_actions = ActionConverter(self.single_action_space, num_envs)
        self._obs = np.zeros((num_envs, self.obs_size), dtype=np.float32)
        self._final_obs = np.zeros((num_envs, self.obs_size), dtype=np.float32)
        self._scratch = np.zeros((num_envs, self.obs_size), dtype=np.float32)
        self._episodes = EpisodeTracker(num_envs)
        self._next_seed: int | None = seed

    def reset(self, seed: int | None = None) -> np.ndarray:
        if seed is None:
            seed, self._next_seed = self._next_seed, None
        obs, _ = self.env.reset(seed=self._sub_env_seeds(seed))
        self._episodes.reset()
        return self._flat(obs)

    def _sub_env_seeds(self, seed: int | None) -> int | list[int] | None:
        """Seeds for a reset. Sync vectorization would seed sub-env i with seed + i, so runs with
        seeds 5 and 6 would share all but one sub-env; draw independent seeds from the seed instead."""
        if seed is None or not isinstance(self.env, SyncVectorEnv):
            return seed
        return np.random.SeedSequence(seed).generate_state(self.num_envs).tolist()

    def step(self, actions: np.ndarray) -> StepResult:
        obs, rewards, terminations, truncations, info = self.env.step(self._convert_actions(actions))
        obs = self._flat(obs)
        rewards = np.asarray(rewards, dtype=np.float32)
        terminations = np.asarray(terminations, dtype=np.bool_)
        truncations = np.asarray(truncations, dtype=np.bool_) & ~terminations
        done = terminations | truncations
        ended, episodes = self._episodes.step(rewards, done)
        final_obs = None
        if len(ended):
            final_obs = self._final_obs
            if self._row_reset is not None:
                final_obs[ended] = obs[ended]
                obs[ended] = self._row_reset(self.env, ended)
            else:
                final_obs[ended] = self._final_rows(info, ended)
            _add_final_info_stats(episodes, info.get("final_info"), ended)
        return StepResult(obs, rewards, terminations, truncations, final_obs, episodes)

    def close(self) -> None:
        self.env.close()

    def __getstate__(self) -> dict:
        """Picklable (the trainer checkpoints envs for exact resume): a sync vector env keeps
        its sub-env factories, closures that are only needed at construction, so leave them out."""
        state = self.__dict__.copy()
        if isinstance(self.env, SyncVectorEnv):
            state["env"] = copy.copy(self.env)
            state["env"].env_fns = None
        return state

    def _flat(self, obs: Any) -> np.ndarray:
        """The batch flattened into the env's obs buffer (C-contiguous float32 [N, obs_size])."""
        return self._flatten(obs, self._obs)

    def _final_rows(self, info: dict, ended: np.ndarray) -> np.ndarray:
        """Flattened last observations of the ended sub-envs, from a same-step env's info."""
        if "final_obs" not in info:
            raise EnvError(f"{self.env_id}: a sub-env ended but the vector env gave no final_obs")
        final = info["final_obs"]
        if isinstance(final, np.ndarray) and final.dtype == object:
            space = self.single_observation_space
            final = concatenate(space, list(final[ended]), create_empty_array(space, len(ended)))
        else:
            final = _select_rows(final, ended)
        return self._flatten(final, self._scratch)


def _find_spec(env_id: str) -> EnvSpec:
    """The registered spec of `env_id`; "module:Env-v0" imports `module` first (third-party envs
    register themselves on import, e.g. "gym:ale_py:ALE/Pong-v5")."""
    module, _, name = env_id.rpartition(":")
    if module:
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise EnvError(f"cannot import {module!r} for gymnasium env {env_id!r}: {error}") from None
    try:
        return gymnasium.spec(name)
    except gymnasium.error.Error as error:
        raise EnvError(f"unknown gymnasium env id {name!r}: {error}") from None


def _make_native(spec: EnvSpec, num_envs: int, kwargs: dict) -> tuple[Any, str, RowReset | None]:
    """The env's own vector implementation, if it resets on the same step or we can make it
    (then with its row reset): (env, vectorization label, row reset); env None otherwise."""
    if spec.vector_entry_point is None or spec.additional_wrappers:
        return None, "", None
    try:
        env = _make_vec(spec.id, num_envs, vectorization_mode="vector_entry_point", **kwargs)
    except EnvError:
        return None, "", None
    mode = env.metadata.get("autoreset_mode")
    if mode == AutoresetMode.SAME_STEP:
        return env, "native", None
    if mode == AutoresetMode.NEXT_STEP and type(env.unwrapped) in ROW_RESETS:
        return env.unwrapped, "native, next-step converted", ROW_RESETS[type(env.unwrapped)]
    env.close()
    return None, "", None


def _add_final_info_stats(episodes: list[dict], final_info: Any, ended: np.ndarray) -> None:
    """Copy the numeric scalars of each ended sub-env's last info (e.g. a game's score) into its
    episode dict, next to episode_return and episode_length (which they never overwrite)."""
    if not isinstance(final_info, dict):
        return
    for key, values in final_info.items():
        if key.startswith("_") or key in ("episode_return", "episode_length"):
            continue
        values = np.asarray(values)
        if values.ndim != 1 or values.dtype.kind not in "biuf":
            continue
        present = np.asarray(final_info.get("_" + key, np.ones(len(values), dtype=np.bool_)))
        for episode, value, has in zip(episodes, values[ended].tolist(), present[ended].tolist()):
            if has:
                episode[key] = float(value)


def _select_rows(batch: Any, rows: np.ndarray) -> Any:
    """The given rows of a batched observation structure."""
    if isinstance(batch, dict):
        return {key: _select_rows(value, rows) for key, value in batch.items()}
    if isinstance(batch, tuple):
        return tuple(_select_rows(value, rows) for value in batch)
    return np.asarray(batch)[rows]


def _make_vec(env_id: str, num_envs: int, **kwargs: Any) -> Any:
    """gymnasium.make_vec with construction errors (bad kwargs, missing extras) as EnvError."""
    try:
        return gymnasium.make_vec(env_id, num_envs=num_envs, **kwargs)
    except (gymnasium.error.Error, TypeError, ImportError) as error:
        raise EnvError(f"cannot make gymnasium env {env_id!r}: {error}") from None
