"""Seeds: the same seed gives the same trajectories; different seeds and sub-envs differ."""

import pickle

import numpy as np
import pytest

from trainer.envs import make

SEEDED = [("gym:CartPole-v1", {}), ("gym:Acrobot-v1", {"max_episode_steps": 20}), ("puffer:memory", {"length": 2})]


def rollout(name: str, seed: int, kwargs: dict, steps: int = 60, num_envs: int = 8) -> np.ndarray:
    """Observations of a rollout under a fixed action sequence, [steps + 1, num_envs, obs_size]."""
    rng = np.random.default_rng(123)
    with make(name, num_envs, seed=seed, **kwargs) as env:
        frames = [env.reset().copy()]
        for _ in range(steps):
            result = env.step(rng.integers(env.single_action_space.n, size=num_envs))
            frames.append(result.obs.copy())
    return np.stack(frames)


@pytest.mark.parametrize("name,kwargs", SEEDED)
def test_same_seed_same_trajectories(name, kwargs):
    np.testing.assert_array_equal(rollout(name, 5, kwargs), rollout(name, 5, kwargs))


@pytest.mark.parametrize("name,kwargs", SEEDED)
def test_different_seeds_differ(name, kwargs):
    assert not np.array_equal(rollout(name, 5, kwargs), rollout(name, 6, kwargs))


@pytest.mark.parametrize("name,kwargs", SEEDED)
def test_sub_envs_differ(name, kwargs):
    frames = rollout(name, 5, kwargs)
    assert len({frames[:, row].tobytes() for row in range(frames.shape[1])}) == frames.shape[1]


def test_neighbouring_run_seeds_share_no_sub_env():
    """gymnasium's sync vectorization alone would seed sub-env i with seed + i."""
    a = rollout("gym:Acrobot-v1", 5, {}, steps=0)
    b = rollout("gym:Acrobot-v1", 6, {}, steps=0)
    rows_a = {a[:, row].tobytes() for row in range(a.shape[1])}
    rows_b = {b[:, row].tobytes() for row in range(b.shape[1])}
    assert not rows_a & rows_b


def test_reset_with_a_seed_replays_the_episode_start():
    with make("gym:CartPole-v1", 4, seed=0) as env:
        first = env.reset(seed=42).copy()
        env.step(np.ones(4, dtype=np.int64))
        np.testing.assert_array_equal(env.reset(seed=42), first)
        assert not np.array_equal(env.reset(), first)


def test_maze_is_the_same_for_every_run_seed_and_changes_with_maze_seed():
    a = make("puffer:maze", 1, seed=0, size=6)
    b = make("puffer:maze", 1, seed=99, size=6)
    c = make("puffer:maze", 1, seed=0, size=6, maze_seed=1)
    np.testing.assert_array_equal(a.opened, b.opened)
    assert not np.array_equal(a.opened, c.opened)


@pytest.mark.parametrize(
    "name,kwargs", [*SEEDED, ("gym:Pendulum-v1", {}), ("puffer:maze", {"size": 3})]
)
def test_a_pickled_env_continues_exactly(name, kwargs):
    """The trainer checkpoints envs by pickling them; the copy must step like the original."""
    num_envs = 4
    rng = np.random.default_rng(0)
    env = make(name, num_envs, seed=3, **kwargs)
    space = env.single_action_space

    def actions():
        if hasattr(space, "n"):
            return rng.integers(space.n, size=num_envs)
        return rng.uniform(-1, 1, (num_envs, *space.shape)).astype(np.float32)

    env.reset()
    for _ in range(25):
        env.step(actions())
    restored = pickle.loads(pickle.dumps(env))
    for _ in range(80):
        batch = actions()
        a, b = env.step(batch), restored.step(batch)
        for field in ("obs", "rewards", "terminations", "truncations"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
        assert a.episodes == b.episodes
