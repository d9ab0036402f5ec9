"""The VecEnv contract for every env kind: shapes, dtypes, spaces, errors."""

import gymnasium
import numpy as np
import pytest

from trainer.envs import BUILTINS, EnvError, StepResult, VecEnv, make

KINDS = [
    ("gym:CartPole-v1", {}),  # native vector env, next-step converted
    ("gym:Acrobot-v1", {"max_episode_steps": 50}),  # sync vectorization
    ("gym:Pendulum-v1", {}),  # Box actions
    ("puffer:memory", {"length": 3}),
    ("puffer:maze", {"size": 3}),
    ("puffer:snake", {"snakes": 2, "width": 6, "height": 6, "food": 2}),
]


def random_actions(env: VecEnv, rng: np.random.Generator) -> np.ndarray:
    space = env.single_action_space
    if isinstance(space, gymnasium.spaces.Discrete):
        return rng.integers(space.n, size=env.num_envs)
    if isinstance(space, gymnasium.spaces.MultiDiscrete):
        return rng.integers(space.nvec, size=(env.num_envs, *space.shape))
    return rng.standard_normal((env.num_envs, *space.shape)).astype(np.float32)


@pytest.mark.parametrize("name,kwargs", KINDS)
def test_step_result_shapes_and_dtypes(name, kwargs):
    num_envs = 6
    rng = np.random.default_rng(0)
    with make(name, num_envs, seed=1, **kwargs) as env:
        assert isinstance(env, VecEnv)
        assert env.num_envs == num_envs
        assert isinstance(env.single_observation_space, gymnasium.Space)
        obs = env.reset()
        assert obs.shape == (num_envs, env.obs_size) and obs.dtype == np.float32
        ended = 0
        for _ in range(250):
            result = env.step(random_actions(env, rng))
            assert isinstance(result, StepResult)
            assert result.obs.shape == (num_envs, env.obs_size) and result.obs.dtype == np.float32
            assert result.rewards.shape == (num_envs,) and result.rewards.dtype == np.float32
            assert result.terminations.dtype == np.bool_ and result.truncations.dtype == np.bool_
            assert not np.any(result.terminations & result.truncations)
            done = result.terminations | result.truncations
            assert len(result.episodes) == done.sum()
            if done.any():
                assert result.final_obs.shape == (num_envs, env.obs_size)
                assert result.final_obs.dtype == np.float32
            else:
                assert result.final_obs is None
            for episode in result.episodes:
                assert {"episode_return", "episode_length"} <= set(episode)
                assert episode["episode_length"] >= 1
            ended += len(result.episodes)
        assert ended > 0


def test_episode_return_and_length_are_tracked_by_the_adapter():
    with make("gym:CartPole-v1", 4, seed=0) as env:
        env.reset()
        returns = np.zeros(4)
        lengths = np.zeros(4, dtype=int)
        rng = np.random.default_rng(0)
        seen = 0
        for _ in range(200):
            result = env.step(rng.integers(2, size=4))
            returns += result.rewards
            lengths += 1
            done = np.flatnonzero(result.terminations | result.truncations)
            for index, episode in zip(done, result.episodes):
                assert episode["episode_return"] == returns[index]
                assert episode["episode_length"] == lengths[index]
                seen += 1
            returns[done] = 0
            lengths[done] = 0
        assert seen > 10


def test_unknown_env_name_is_an_error_listing_the_builtins():
    with pytest.raises(EnvError) as error:
        make("puffer:nope", 2, seed=0)
    message = str(error.value)
    assert "puffer:nope" in message
    for name in BUILTINS:
        assert name in message
    assert isinstance(error.value, ValueError)


def test_unknown_gymnasium_id_is_an_error_naming_it():
    with pytest.raises(EnvError, match="NoSuchEnv-v9"):
        make("gym:NoSuchEnv-v9", 2, seed=0)


def test_a_module_prefix_is_imported_to_register_its_envs():
    with make("gym:gymnasium.envs.classic_control:CartPole-v1", 2, seed=0) as env:
        assert env.obs_size == 4
    with pytest.raises(EnvError, match="no_such_module"):
        make("gym:no_such_module:Thing-v0", 2, seed=0)


def test_unknown_builtin_kwarg_is_an_error_listing_the_accepted_ones():
    with pytest.raises(EnvError, match="widht.*accepts.*size"):
        make("puffer:maze", 2, seed=0, widht=3)


@pytest.mark.parametrize("num_envs", [0, -1, 2.0, True])
def test_bad_num_envs_is_an_error(num_envs):
    with pytest.raises(EnvError, match="num_envs"):
        make("puffer:memory", num_envs, seed=0)


def test_bad_builtin_parameters_are_errors():
    with pytest.raises(EnvError, match="n_cues"):
        make("puffer:memory", 2, seed=0, n_cues=1)
    with pytest.raises(EnvError, match="size"):
        make("puffer:maze", 2, seed=0, size=1)


def test_actions_of_the_wrong_shape_are_an_error():
    with make("gym:CartPole-v1", 4, seed=0) as env:
        env.reset()
        with pytest.raises(EnvError, match="shape"):
            env.step(np.zeros(3, dtype=np.int64))


def test_box_actions_are_clipped_to_the_bounds():
    with make("gym:Pendulum-v1", 2, seed=0) as env:
        env.reset()
        env.step(np.array([[100.0], [-100.0]], dtype=np.float32))
        torques = [sub_env.unwrapped.last_u for sub_env in env.env.envs]
        assert torques == [2.0, -2.0]
