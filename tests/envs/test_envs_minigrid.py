"""minigrid:<id>: MiniGrid tasks through the gymnasium adapter with flat observations."""

import pickle

import numpy as np
import pytest

pytest.importorskip("minigrid")

from trainer.envs import make  # noqa: E402


def test_empty_room_is_solved_by_walking_to_the_goal():
    env = make("minigrid:MiniGrid-Empty-5x5-v0", 2, seed=0)
    obs = env.reset()
    assert env.obs_size == 7 * 7 * 3 and obs.shape == (2, 147) and obs.dtype == np.float32
    # the agent starts at (1, 1) facing right; the goal is at (3, 3): forward, forward, turn right, forward, forward
    for action in (2, 2, 1, 2):
        result = env.step(np.full(2, action))
        assert not result.terminations.any() and np.all(result.rewards == 0)
    result = env.step(np.full(2, 2))
    assert result.terminations.all()
    np.testing.assert_allclose(result.rewards, 1 - 0.9 * 5 / 100, rtol=1e-6)
    assert [e["episode_length"] for e in result.episodes] == [5, 5]
    twin = pickle.loads(pickle.dumps(env))  # checkpointable like every env
    np.testing.assert_array_equal(twin.step(np.zeros(2, int)).obs, env.step(np.zeros(2, int)).obs)
