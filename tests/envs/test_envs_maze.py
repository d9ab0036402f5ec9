"""puffer:maze: reward 1 only at the goal, walls block, the time limit truncates."""

import numpy as np

from trainer.envs import make
from trainer.envs.maze import MOVES


def shortest_path_actions(env) -> list[int]:
    """Actions along the maze's shortest path from the start to the goal."""
    cell, actions = env.start, []
    while cell != env.goal:
        row, col = divmod(cell, env.size)
        for move, (dr, dc) in enumerate(MOVES.tolist()):
            neighbour = (row + dr) * env.size + col + dc
            if env.opened[cell, move] and env.distances[neighbour] == env.distances[cell] - 1:
                actions.append(move)
                cell = neighbour
                break
    return actions


def test_reaching_the_goal_pays_one_and_terminates():
    env = make("puffer:maze", 3, seed=0, size=6)
    start_obs = env.reset()[0].copy()
    path = shortest_path_actions(env)
    assert len(path) == env.distances[env.start]
    for action in path[:-1]:
        result = env.step(np.full(3, action))
        assert np.all(result.rewards == 0) and not result.terminations.any() and not result.truncations.any()
    result = env.step(np.full(3, path[-1]))
    assert np.all(result.rewards == 1.0) and result.terminations.all() and not result.truncations.any()
    goal_row, goal_col = divmod(env.goal, env.size)
    assert np.all(result.final_obs[:, goal_row] == 1) and np.all(result.final_obs[:, env.size + goal_col] == 1)
    np.testing.assert_array_equal(result.obs, np.tile(start_obs, (3, 1)))
    for episode in result.episodes:
        assert episode == {"episode_return": 1.0, "episode_length": len(path), "solved": 1.0, "score": 1.0}


def test_time_limit_truncates_without_reward():
    env = make("puffer:maze", 2, seed=0, size=4, max_steps=7)
    env.reset()
    blocked = int(np.flatnonzero(~env.opened[env.start])[0])  # a wall of the start cell
    for _ in range(6):
        result = env.step(np.full(2, blocked))
        assert not (result.terminations | result.truncations).any()
    result = env.step(np.full(2, blocked))
    assert result.truncations.all() and not result.terminations.any()
    assert np.all(result.rewards == 0)
    for episode in result.episodes:
        assert episode == {"episode_return": 0.0, "episode_length": 7, "solved": 0.0, "score": 0.0}


def test_walls_block_and_the_observation_shows_position_and_walls():
    env = make("puffer:maze", 1, seed=0, size=5)
    obs = env.reset()
    assert obs.shape == (1, 2 * 5 + 4)
    np.testing.assert_array_equal(obs[0, 10:], env.opened[env.start])
    for move in range(4):
        env.reset()
        result = env.step(np.array([move]))
        moved = env.opened[env.start, move]
        assert (np.argmax(result.obs[0, :5]), np.argmax(result.obs[0, 5:10])) == ((0, 0) if not moved else tuple(MOVES[move]))


def test_every_cell_is_reachable():
    env = make("puffer:maze", 1, seed=0, size=9, maze_seed=3)
    assert np.all(env.distances >= 0)
    # a perfect maze on n cells has n - 1 passages
    assert env.opened.sum() // 2 == 9 * 9 - 1
