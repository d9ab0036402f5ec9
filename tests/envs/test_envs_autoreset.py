"""Same-step autoreset: final_obs is the true last obs, obs a fresh reset obs, rewards those of
the ending step; terminations and truncations apart. Covers the native CartPole vector env
(next-step converted by the adapter) and gymnasium's sync vectorization."""

import gymnasium
import numpy as np
from gymnasium import spaces

from trainer.envs import make

TIME_LIMIT = 4


class CounterEnv(gymnasium.Env):
    """Obs [episode number, t, L]: terminates at t == L (L drawn at reset), reward t, info score 10 t."""

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
        return self._obs(), float(self.t), self.t == self.limit, False, {"score": 10 * self.t}

    def _obs(self):
        return np.array([self.episode, self.t, self.limit], dtype=np.float32)


class CounterVectorEnv(gymnasium.vector.VectorEnv):
    """A native same-step vector env: row i counts t and ends at t == 2 + i % 3; obs [episode, t]."""

    metadata = {"autoreset_mode": gymnasium.vector.AutoresetMode.SAME_STEP}

    def __init__(self, num_envs: int, max_episode_steps: int | None = None) -> None:
        self.num_envs = num_envs
        self.single_observation_space = spaces.Box(-np.inf, np.inf, (2,), np.float32)
        self.single_action_space = spaces.Discrete(2)
        self.observation_space = gymnasium.vector.utils.batch_space(self.single_observation_space, num_envs)
        self.action_space = gymnasium.vector.utils.batch_space(self.single_action_space, num_envs)
        self.ends_at = 2 + np.arange(num_envs) % 3

    def reset(self, *, seed=None, options=None):
        self.episode = np.zeros(self.num_envs)
        self.t = np.zeros(self.num_envs)
        return self._obs(), {}

    def step(self, actions):
        self.t += 1
        terminated = self.t == self.ends_at
        rewards = self.t.astype(np.float32)
        info = {"final_obs": self._obs(), "_final_obs": terminated.copy()}
        self.episode[terminated] += 1
        self.t[terminated] = 0
        return self._obs(), rewards, terminated, np.zeros_like(terminated), info

    def _obs(self):
        return np.stack([self.episode, self.t], axis=1).astype(np.float32)


class NextStepCounterVectorEnv(CounterVectorEnv):
    """The same env claiming next-step autoreset, for which the adapter has no row reset."""

    metadata = {"autoreset_mode": gymnasium.vector.AutoresetMode.NEXT_STEP}


gymnasium.register("puffctl-tests/Counter-v0", entry_point=CounterEnv, max_episode_steps=TIME_LIMIT)
gymnasium.register("puffctl-tests/CounterVector-v0", entry_point=CounterEnv, vector_entry_point=CounterVectorEnv)
gymnasium.register(
    "puffctl-tests/NextStepCounterVector-v0", entry_point=CounterEnv, vector_entry_point=NextStepCounterVectorEnv
)


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


def test_final_info_numbers_join_the_episode_stats():
    with make("gym:puffctl-tests/Counter-v0", 3, seed=0) as env:
        env.reset()
        episodes = []
        for _ in range(20):
            episodes += env.step(np.zeros(3, dtype=np.int64)).episodes
        assert episodes
        for episode in episodes:
            assert episode["score"] == 10 * episode["episode_length"]


def test_native_same_step_vector_env_is_used_as_is():
    with make("gym:puffctl-tests/CounterVector-v0", 6, seed=0) as env:
        assert env.vectorization == "native"
        env.reset()
        ended = 0
        for step in range(1, 13):
            result = env.step(np.zeros(6, dtype=np.int64))
            done = result.terminations
            for row in np.flatnonzero(done):
                ends_at = 2 + row % 3
                np.testing.assert_array_equal(result.final_obs[row], [step // ends_at - 1, ends_at])
                np.testing.assert_array_equal(result.obs[row], [step // ends_at, 0])
                assert result.rewards[row] == ends_at
                ended += 1
        assert ended == 2 * (6 + 4 + 3)


def test_native_next_step_env_without_a_row_reset_falls_back_to_sync():
    with make("gym:puffctl-tests/NextStepCounterVector-v0", 2, seed=0) as env:
        assert env.vectorization == "sync"
