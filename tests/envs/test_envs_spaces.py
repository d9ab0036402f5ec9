"""Observation flattening of each gymnasium space, end to end through make("gym:...")."""

from collections import OrderedDict

import gymnasium
import numpy as np
import pytest
from gymnasium import spaces

from trainer.envs import EnvError, make


class ScriptedObsEnv(gymnasium.Env):
    """Shows `observations[0]` at reset, then `observations[t]`; ends after the last one."""

    action_space = spaces.Discrete(2)

    def __init__(self, space: spaces.Space, observations: list) -> None:
        self.observation_space = space
        self.observations = observations

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self.observations[0], {}

    def step(self, action):
        self.t += 1
        return self.observations[self.t], 0.0, self.t == len(self.observations) - 1, False, {}


gymnasium.register("puffctl-tests/ScriptedObs-v0", entry_point=ScriptedObsEnv)


def flatten_through_adapter(space: spaces.Space, observations: list) -> tuple[np.ndarray, np.ndarray, int]:
    """Reset obs row, the final_obs row of the last step, and obs_size for a 2-step episode."""
    with make("gym:puffctl-tests/ScriptedObs-v0", 2, seed=0, space=space, observations=observations) as env:
        assert env.single_observation_space == space
        first = env.reset()[0].copy()
        result = env.step(np.zeros(2, dtype=np.int64))
        assert result.terminations.all()
        np.testing.assert_array_equal(result.obs[0], first)
        return first, result.final_obs[0].copy(), env.obs_size


def test_box_is_flattened_row_major_as_float32():
    space = spaces.Box(0, 255, (2, 3), np.uint8)
    a = np.arange(6, dtype=np.uint8).reshape(2, 3)
    first, last, size = flatten_through_adapter(space, [a, a + 10])
    assert size == 6
    np.testing.assert_array_equal(first, [0, 1, 2, 3, 4, 5])
    np.testing.assert_array_equal(last, [10, 11, 12, 13, 14, 15])


def test_discrete_is_one_hot_from_its_start():
    space = spaces.Discrete(4, start=-1)
    first, last, size = flatten_through_adapter(space, [np.int64(-1), np.int64(2)])
    assert size == 4
    np.testing.assert_array_equal(first, [1, 0, 0, 0])
    np.testing.assert_array_equal(last, [0, 0, 0, 1])


def test_multidiscrete_is_concatenated_one_hots():
    space = spaces.MultiDiscrete([3, 2, 4])
    first, last, size = flatten_through_adapter(space, [np.array([0, 1, 3]), np.array([2, 0, 1])])
    assert size == 9
    np.testing.assert_array_equal(first, [1, 0, 0, 0, 1, 0, 0, 0, 1])
    np.testing.assert_array_equal(last, [0, 0, 1, 1, 0, 0, 1, 0, 0])


def test_multibinary_is_its_bits():
    space = spaces.MultiBinary(3)
    first, _, size = flatten_through_adapter(space, [np.array([1, 0, 1], np.int8), np.array([0, 1, 1], np.int8)])
    assert size == 3
    np.testing.assert_array_equal(first, [1, 0, 1])


def test_dict_is_flattened_in_sorted_key_order_recursively():
    inner = spaces.Dict(OrderedDict([("z", spaces.Discrete(2)), ("a", spaces.Box(-1, 1, (1,)))]))
    space = spaces.Dict(OrderedDict([("pos", spaces.Box(-5, 5, (2,))), ("inner", inner)]))

    def observation(pos: list[float], z: int, a: float) -> OrderedDict:
        return OrderedDict(
            [("pos", np.array(pos, np.float32)), ("inner", OrderedDict([("z", np.int64(z)), ("a", np.array([a], np.float32))]))]
        )

    first, last, size = flatten_through_adapter(space, [observation([3, 4], 1, 0.5), observation([-1, 2], 0, -0.25)])
    assert size == 5
    # sorted keys: inner (a, z) then pos
    np.testing.assert_array_equal(first, [0.5, 0, 1, 3.0, 4.0])
    np.testing.assert_array_equal(last, [-0.25, 1, 0, -1.0, 2.0])


def test_tuple_is_flattened_in_order_recursively():
    space = spaces.Tuple((spaces.Discrete(3), spaces.Tuple((spaces.Box(0, 9, (2,)), spaces.MultiDiscrete([2, 2])))))
    obs_a = (np.int64(2), (np.array([7.0, 8.0], np.float32), np.array([1, 0])))
    obs_b = (np.int64(0), (np.array([1.0, 2.0], np.float32), np.array([0, 1])))
    first, last, size = flatten_through_adapter(space, [obs_a, obs_b])
    assert size == 3 + 2 + 4
    np.testing.assert_array_equal(first, [0, 0, 1, 7, 8, 0, 1, 1, 0])
    np.testing.assert_array_equal(last, [1, 0, 0, 1, 2, 1, 0, 0, 1])


def test_unsupported_observation_space_is_an_error():
    space = spaces.Text(5)
    with pytest.raises(EnvError, match="Text"):
        make("gym:puffctl-tests/ScriptedObs-v0", 2, seed=0, space=space, observations=["a", "b"])


def test_multidiscrete_actions_are_passed_with_their_start():
    class ActionEcho(ScriptedObsEnv):
        action_space = spaces.MultiDiscrete([3, 4], start=[1, -2])

        def step(self, action):
            self.seen = np.array(action)
            return super().step(action)

    gymnasium.register("puffctl-tests/ActionEcho-v0", entry_point=ActionEcho)
    space = spaces.Discrete(2)
    with make("gym:puffctl-tests/ActionEcho-v0", 2, seed=0, space=space, observations=[0, 1, 0]) as env:
        env.reset()
        env.step(np.array([[0, 0], [2, 3]]))
        seen = [sub_env.unwrapped.seen.tolist() for sub_env in env.env.envs]
        assert seen == [[1, -2], [3, 1]]
