"""Vector environments behind one interface: `make(name, num_envs, seed, **kwargs) -> VecEnv`.

Names: `gym:<gymnasium id>` (e.g. `gym:CartPole-v1`, see `trainer.envs.gym_adapter`),
`minigrid:<MiniGrid id>` (e.g. `minigrid:MiniGrid-Empty-5x5-v0`, `trainer.envs.minigrid_envs`) or a
built-in numpy env: `puffer:memory` (needs memory), `puffer:maze` (sparse reward) and
`puffer:snake` (multi-agent, several snakes per board).
"""

from __future__ import annotations

import inspect
from typing import Any

from trainer.envs.maze import MazeEnv
from trainer.envs.memory import MemoryEnv
from trainer.envs.snake import SnakeEnv
from trainer.envs.vecenv import EnvError, StepResult, VecEnv

BUILTINS: dict[str, type[VecEnv]] = {"puffer:memory": MemoryEnv, "puffer:maze": MazeEnv, "puffer:snake": SnakeEnv}

__all__ = ["BUILTINS", "EnvError", "StepResult", "VecEnv", "make"]


def make(name: str, num_envs: int, seed: int, **kwargs: Any) -> VecEnv:
    """Build `num_envs` sub-envs of env `name`, seeded by `seed` (applied at the first reset)."""
    if not isinstance(num_envs, int) or isinstance(num_envs, bool) or num_envs < 1:
        raise EnvError(f"num_envs must be an integer >= 1, got {num_envs!r}")
    if name.startswith("gym:"):
        from trainer.envs.gym_adapter import GymVecEnv

        return GymVecEnv(name.removeprefix("gym:"), num_envs, seed, **kwargs)
    if name.startswith("minigrid:"):
        from trainer.envs.minigrid_envs import make_minigrid

        return make_minigrid(name.removeprefix("minigrid:"), num_envs, seed, **kwargs)
    if name not in BUILTINS:
        raise EnvError(
            f"unknown env {name!r}: use gym:<gymnasium id> (e.g. gym:CartPole-v1) "
            f"or a built-in: {', '.join(sorted(BUILTINS))}"
        )
    env_class = BUILTINS[name]
    accepted = [p for p in inspect.signature(env_class).parameters if p not in ("num_envs", "seed")]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise EnvError(f"{name} does not take {', '.join(unknown)}; it accepts {', '.join(accepted)}")
    return env_class(num_envs, seed, **kwargs)
