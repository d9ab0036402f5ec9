"""Same-step autoreset: final_obs is the true last obs, obs a fresh reset obs, rewards those of
the ending step; terminations and truncations apart. Covers the native CartPole vector env
(next-step converted by the adapter) and gymnasium's sync vectorization."""

import gymnasium
import numpy as np
from gymnasium import spaces

from trainer.envs import make

TIME_LIMIT = 4


class CounterEnv(gymnasium.Env):
    """Obs [episode number, t, L]: terminates at t == L (L drawn at reset), reward t."""

    observation_space = spaces.Box(-np.inf, np.inf, (3,), np.float32)
    action_space = spaces.Discrete(2)

    def __init__(self) -> None:
        self.episode = -1

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.episode += 1
        self.t = 0
        self.limit = int(self.np_random.integers(1, 7))
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        return self._obs(), float(self.t), self.t == self.limit, False, {}

    def _obs(self):
        return np.array([self.episode, self.t, self.limit], dtype=np.float32)


gymnasium.register("puffctl-tests/Counter-v0", entry_point=CounterEnv, max_episode_steps=TIME_LIMIT)


def test_sync_same_step_reset_final_obs_rewards_and_done_kinds():
    num_envs = 5
    with make("gym:puffctl-tests/Counter-v0", num_envs, seed=3) as env:
        assert env.vectorization == "sync"
        previous = env.reset().copy()
        kinds = set()
        for _ in range(60):
            result = env.step(np.zeros(num_envs, dtype=np.int64))
            done = result.terminations | result.truncations
            for row in range(num_envs):
                episode, t, limit = previous[row]
                if not done[row]:
                    np.testing.assert_array_equal(result.obs[row], [episode, t + 1, limit])
                    assert result.rewards[row] == t + 1
                    continue
                final = result.final_obs[row]
                np.testing.assert_array_equal(final, [episode, t + 1, limit])
                assert result.rewards[row] == t + 1
                assert result.obs[row][0] == episode + 1 and result.obs[row][1] == 0
                if t + 1 == limit:
                    assert result.terminations[row] and not result.truncations[row]
                    kinds.add("terminated")
                else:
                    assert t + 1 == TIME_LIMIT < limit
                    assert result.truncations[row] and not result.terminations[row]
                    kinds.add("truncated")
            previous = result.obs.copy()
        assert kinds == {"terminated", "truncated"}


def test_cartpole_converted_stream_is_gymnasium_next_step_stream_without_fake_steps():
    """One sub-env: ours must equal raw CartPoleVectorEnv with the reset-only steps cut out."""
    ours = make("gym:CartPole-v1", 1, seed=7, max_episode_steps=30)
    assert ours.vectorization == "native, next-step converted"
    raw = gymnasium.make_vec("CartPole-v1", 1, vectorization_mode="vector_entry_point", max_episode_steps=30)
    raw_obs, _ = raw.reset(seed=7)
    np.testing.assert_array_equal(ours.reset(), raw_obs)
    rng = np.random.default_rng(0)
    ended = {"terminated": 0, "truncated": 0}
    for _ in range(400):
        action = rng.integers(2, size=1)
        result = ours.step(action)
        raw_obs, raw_reward, raw_term, raw_trunc, _ = raw.step(action)
        assert result.rewards[0] == raw_reward[0]
        assert result.terminations[0] == raw_term[0]
        assert result.truncations[0] == (raw_trunc[0] and not raw_term[0])
        if raw_term[0] or raw_trunc[0]:
            ended["terminated" if raw_term[0] else "truncated"] += 1
            np.testing.assert_array_equal(result.final_obs, raw_obs)
            raw_obs, raw_reward, raw_term, raw_trunc, _ = raw.step(action)  # gymnasium's reset step
            assert raw_reward[0] == 0 and not raw_term[0] and not raw_trunc[0]
        np.testing.assert_array_equal(result.obs, raw_obs)
    assert ended["terminated"] > 5 and ended["truncated"] > 0


def test_cartpole_many_envs_final_obs_is_terminal_and_obs_is_a_reset_obs():
    num_envs = 64
    with make("gym:CartPole-v1", num_envs, seed=0, max_episode_steps=12) as env:
        env.reset()
        rng = np.random.default_rng(1)
        counts = {"terminated": 0, "truncated": 0}
        for _ in range(100):
            result = env.step(rng.integers(2, size=num_envs))
            done = result.terminations | result.truncations
            assert np.all(result.rewards == 1.0)  # CartPole pays 1 for every real step, the last too
            if not done.any():
                continue
            assert np.all(np.abs(result.obs[done]) <= 0.05)  # CartPole's reset range
            final = result.final_obs
            out_of_bounds = (np.abs(final[:, 0]) > 2.4) | (np.abs(final[:, 2]) > 12 * 2 * np.pi / 360)
            np.testing.assert_array_equal(out_of_bounds[done], result.terminations[done])
            lengths = np.array([episode["episode_length"] for episode in result.episodes])
            truncated = result.truncations[done]
            assert np.all(lengths[truncated] == 12) and np.all(lengths[~truncated] <= 12)
            counts["terminated"] += int(result.terminations.sum())
            counts["truncated"] += int(result.truncations.sum())
        assert counts["terminated"] > 0 and counts["truncated"] > 0
