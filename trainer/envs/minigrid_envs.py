"""MiniGrid tasks (the `minigrid` package) as `minigrid:<id>` envs, e.g. `minigrid:MiniGrid-Empty-5x5-v0`.

An external exploration benchmark next to `puffer:maze`: the gymnasium adapter runs the task
(sync vectorization) with minigrid's `ImgObsWrapper`, so the observation is the agent's
egocentric 7x7 view (object, colour, state per cell) flattened to 147 floats; the text mission
is dropped. Rewards are minigrid's own: `1 - 0.9 * steps / max_steps` on reaching the goal, else 0.
"""

from __future__ import annotations

from typing import Any

from trainer.envs.gym_adapter import GymVecEnv
from trainer.envs.vecenv import EnvError


def make_minigrid(env_id: str, num_envs: int, seed: int, **kwargs: Any) -> GymVecEnv:
    """A MiniGrid task behind the VecEnv interface (minigrid is imported here, only when used)."""
    try:
        import minigrid  # noqa: F401  (registers the MiniGrid ids with gymnasium)
        from minigrid.wrappers import ImgObsWrapper
    except ImportError as error:
        raise EnvError(f"minigrid:{env_id} needs the minigrid package ({error})") from None
    return GymVecEnv(env_id, num_envs, seed, wrappers=[ImgObsWrapper], **kwargs)
