"""Play a checkpoint without training: the eval score with a confidence interval, and renders.

Every sub-env plays exactly one scored episode (stopping at the first N finished episodes
would favour short ones). Rendering plays one more episode in an env of its own: built-in
envs as ANSI text frames, gymnasium envs through `render_mode="rgb_array"` to a GIF (Pillow).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from trainer import checkpoint as checkpoints
from trainer import envs as envs_module
from trainer.policy import CategoricalHead, Policy

#: Steps after which an episode that never ends stops being waited for.
MAX_STEPS = 100_000


@dataclass
class Score:
    """The eval score of one checkpoint: per-episode returns and lengths, mean and 95% CI."""

    returns: list[float]
    lengths: list[float]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.returns)

    @property
    def ci95(self) -> tuple[float, float] | None:
        """Student-t 95% interval of the mean (None for one episode or no spread)."""
        from scipy import stats

        if len(self.returns) < 2 or len(set(self.returns)) < 2:
            return None
        low, high = stats.t.interval(0.95, len(self.returns) - 1, loc=self.mean, scale=stats.sem(self.returns))
        return float(low), float(high)


def load_policy(config: dict, path: Path | None, obs_size: int, action_space) -> Policy:
    """The run's policy with the checkpoint's weights (None: freshly initialised, untrained)."""
    policy_cfg = config["policy"]
    policy = Policy(obs_size, action_space, policy_cfg["hidden_size"], policy_cfg["num_layers"],
                    policy_cfg["activation"], policy_cfg["lstm"], policy_cfg["lstm_hidden_size"])
    if path is not None:
        policy.load_state_dict(checkpoints.load(path)["policy"])
    return policy.eval()


def choose(policy: Policy, params: torch.Tensor, deterministic: bool) -> torch.Tensor:
    """Actions from the head's parameters: sampled, or the most likely (categorical) / the mean (Gaussian)."""
    head = policy.actor
    if not deterministic:
        return head.sample(params)[0]
    if isinstance(head, CategoricalHead):
        parts = [part.argmax(-1) for part in head._split(params)]
        action = parts[0] if head.uniform else torch.stack(parts, -1)
        return action if head.multi else action.squeeze(-1)
    return params


class Player:
    """A policy (or uniformly random actions) acting in a vector env."""

    def __init__(self, config: dict, path: Path | None, envs, *, deterministic: bool, random_actions: bool) -> None:
        self.envs = envs
        self.policy = load_policy(config, path, envs.obs_size, envs.single_action_space)
        self.deterministic, self.random_actions = deterministic, random_actions
        self.state = self.policy.initial_state(envs.num_envs)
        space = envs.single_action_space
        self.box = hasattr(space, "low") and np.issubdtype(space.dtype, np.floating)

    @torch.inference_mode()
    def act(self, obs: np.ndarray) -> np.ndarray:
        space = self.envs.single_action_space
        if self.random_actions:
            return np.stack([np.asarray(space.sample()) for _ in range(self.envs.num_envs)])
        params, _, self.state = self.policy.step(torch.from_numpy(obs), self.state)
        actions = choose(self.policy, params, self.deterministic).numpy()
        if self.box:
            actions = np.clip(actions.reshape(-1, *space.shape), space.low, space.high)
        return actions

    def forget(self, rows: np.ndarray) -> None:
        """A new episode in `rows`: their recurrent state starts from zero."""
        if self.state is not None and len(rows):
            for part in self.state:
                part[torch.from_numpy(rows)] = 0.0


def score(config: dict, path: Path | None, episodes: int, *, seed: int, deterministic: bool = False,
          random_actions: bool = False) -> Score:
    """Play `episodes` episodes (one per sub-env) and return their returns and lengths."""
    env_cfg = config["env"]
    with envs_module.make(env_cfg["name"], episodes, seed, **env_cfg["kwargs"]) as envs:
        player = Player(config, path, envs, deterministic=deterministic, random_actions=random_actions)
        obs = envs.reset(seed=seed)
        returns: list[float | None] = [None] * episodes
        lengths: list[float | None] = [None] * episodes
        for _ in range(MAX_STEPS):
            result = envs.step(player.act(obs))
            obs = result.obs
            done = np.flatnonzero(result.terminations | result.truncations)
            for row, episode in zip(done.tolist(), result.episodes):
                if returns[row] is None:
                    returns[row], lengths[row] = float(episode["episode_return"]), float(episode["episode_length"])
            player.forget(done)
            if all(value is not None for value in returns):
                break
    finished = [(r, n) for r, n in zip(returns, lengths) if r is not None]
    if not finished:
        raise RuntimeError(f"no episode ended within {MAX_STEPS} steps")
    return Score([r for r, _ in finished], [n for _, n in finished])


def ansi_frame(env, row: int = 0) -> str:
    """A text picture of built-in env `env`'s sub-env `row` (maze: the grid; memory: cue or query)."""
    from trainer.envs.maze import MazeEnv
    from trainer.envs.memory import MemoryEnv

    if isinstance(env, MazeEnv):
        size, cell = env.size, int(env._cell[row])
        lines = ["+" + "---+" * size]
        for r in range(size):
            middle, bottom = "|", "+"
            for c in range(size):
                index = r * size + c
                mark = "\x1b[1;32m@\x1b[0m" if index == cell else ("\x1b[1;33mG\x1b[0m" if index == env.goal else " ")
                middle += f" {mark} " + (" " if env.opened[index, 1] else "|")  # move 1: right
                bottom += ("   " if env.opened[index, 2] else "---") + "+"  # move 2: down
            lines += [middle, bottom]
        return "\n".join(lines) + f"\nstep {int(env._t[row])}"
    if isinstance(env, MemoryEnv):
        t = env._t
        if t == 0:
            return f"cue: \x1b[1;36m{int(env._cues[row])}\x1b[0m  (remember it)"
        return "query: which cue was shown?" if t == env.length + 1 else f"blank {t}/{env.length}"
    raise ValueError(f"{type(env).__name__} has no ANSI rendering (built-in envs: puffer:maze, puffer:memory)")


def check_render(env_name: str, mode: str) -> None:
    """ValueError unless env `env_name` can be rendered in `mode` (ansi: built-in; rgb_array: gymnasium)."""
    if mode == "rgb_array" and not env_name.startswith("gym:"):
        raise ValueError(f"{env_name} is a built-in env: render it as ansi (GIFs need a gymnasium env)")
    if mode == "ansi" and env_name.startswith("gym:"):
        raise ValueError(f"{env_name}: ANSI rendering is for built-in envs; render gymnasium envs to a .gif")


def render_episode(config: dict, path: Path | None, *, seed: int, deterministic: bool, mode: str,
                   show: Callable[[object], None], max_frames: int = 1000) -> float:
    """Play one episode in an env of its own, passing each frame to `show` (a string for
    mode "ansi", an RGB array for "rgb_array"); returns the episode's return."""
    env_cfg = config["env"]
    check_render(env_cfg["name"], mode)
    kwargs = dict(env_cfg["kwargs"], **({"render_mode": "rgb_array"} if mode == "rgb_array" else {}))
    with envs_module.make(env_cfg["name"], 1, seed, **kwargs) as envs:
        player = Player(config, path, envs, deterministic=deterministic, random_actions=False)
        obs = envs.reset(seed=seed)

        def frame() -> object:
            if mode == "ansi":
                return ansi_frame(envs)
            picture = envs.env.render()
            return np.asarray(picture[0] if isinstance(picture, (list, tuple)) else picture)

        show(frame())
        for _ in range(max_frames):
            result = envs.step(player.act(obs))
            obs = result.obs
            if result.episodes:
                return float(result.episodes[0]["episode_return"])
            show(frame())
    return float("nan")


def write_gif(frames: list[np.ndarray], path: Path, fps: int = 30) -> Path:
    """Write RGB frames as a looping GIF (Pillow)."""
    from PIL import Image

    if not frames:
        raise ValueError("no frames to write")
    images = [Image.fromarray(np.asarray(frame, dtype=np.uint8)) for frame in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=max(1, round(1000 / fps)), loop=0)
    return Path(path)
