"""puffer:memory: a policy that remembers the cue gets full return; a memoryless one is at chance."""

import numpy as np
import pytest

from trainer.envs import make


def play(env, choose, episodes: int) -> list[dict]:
    """Run until `episodes` episodes ended; `choose(obs, remembered)` picks actions."""
    obs = env.reset()
    remembered = np.argmax(obs[:, : env.n_cues], axis=1)
    ended: list[dict] = []
    while len(ended) < episodes:
        result = env.step(choose(obs, remembered))
        ended += result.episodes
        obs = result.obs
        shows_cue = obs[:, : env.n_cues].any(axis=1)
        remembered = np.where(shows_cue, np.argmax(obs[:, : env.n_cues], axis=1), remembered)
    return ended


@pytest.mark.parametrize("n_cues", [2, 4])
def test_remembering_the_cue_wins_every_episode(n_cues):
    env = make("puffer:memory", 64, seed=0, length=5, n_cues=n_cues)
    episodes = play(env, lambda obs, remembered: remembered, 640)
    assert all(episode["episode_return"] == 1.0 for episode in episodes)
    assert all(episode["score"] == 1.0 for episode in episodes)
    assert all(episode["episode_length"] == 7 for episode in episodes)


@pytest.mark.parametrize("n_cues", [2, 4])
def test_memoryless_policy_is_at_chance(n_cues):
    """The best memoryless policy sees the same query obs whatever the cue: chance is 2/n - 1."""
    env = make("puffer:memory", 256, seed=1, length=3, n_cues=n_cues)
    episodes = play(env, lambda obs, remembered: np.zeros(len(obs), dtype=np.int64), 256 * 20)
    mean_return = np.mean([episode["episode_return"] for episode in episodes])
    assert abs(mean_return - (2 / n_cues - 1)) < 0.05


def test_cue_shows_only_at_the_first_step_and_the_query_looks_the_same_for_every_cue():
    env = make("puffer:memory", 32, seed=2, length=2, n_cues=3)
    obs = env.reset().copy()
    assert np.all(obs[:, :3].sum(axis=1) == 1) and np.all(obs[:, 3] == 0)
    assert len(set(np.argmax(obs[:, :3], axis=1).tolist())) == 3
    actions = np.zeros(32, dtype=np.int64)
    for _ in range(2):
        result = env.step(actions)
        assert np.all(result.obs == 0) and np.all(result.rewards == 0) and not result.terminations.any()
    result = env.step(actions)
    assert np.all(result.obs == [0, 0, 0, 1])
    result = env.step(actions)
    assert result.terminations.all() and not result.truncations.any()
    np.testing.assert_array_equal(result.final_obs, np.tile([0, 0, 0, 1], (32, 1)))
    np.testing.assert_array_equal(result.rewards, np.where(np.argmax(obs[:, :3], axis=1) == 0, 1.0, -1.0))
