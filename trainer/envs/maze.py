"""puffer:maze, a sparse-reward grid maze for exploration experiments.

A perfect maze of `size` x `size` cells (one path between any two cells), carved by a seeded
depth-first search from `maze_seed`, so every run seed trains on the same layout. The agent
starts in the top-left cell; reaching the bottom-right goal gives reward 1 and terminates;
anything else gives 0, and the episode is truncated after `max_steps` steps (default
`4 * size * size`). Actions: 0 up, 1 right, 2 down, 3 left; moving into a wall stays put.
Small mazes are solved by plain PPO in seconds; large ones rarely, without an exploration bonus.

Observation: one-hot row, one-hot column, and the 4 open/wall bits of the current cell.
Episode stats: `solved` (0/1) and `score`, the best progress towards the goal during the
episode (1 - closest maze distance to the goal / distance from the start; 1.0 when solved).

Dynamics are table lookups (next cell per cell and action, observation per cell), so the whole
batch steps with a few numpy operations and no randomness.
"""

from __future__ import annotations

import numpy as np
from gymnasium import spaces

from trainer.envs.vecenv import EnvError, EpisodeTracker, StepResult, VecEnv

MOVES = np.array([(-1, 0), (0, 1), (1, 0), (0, -1)])
"""Row and column change of actions up, right, down, left."""


def carve_maze(size: int, seed: int) -> np.ndarray:
    """Open passages [size * size, 4] (up, right, down, left) of a DFS-carved perfect maze."""
    rng = np.random.default_rng(seed)
    opened = np.zeros((size * size, 4), dtype=np.bool_)
    visited = np.zeros(size * size, dtype=np.bool_)
    visited[0] = True
    stack = [0]
    while stack:
        cell = stack[-1]
        row, col = divmod(cell, size)
        choices = [
            (move, (row + dr) * size + col + dc)
            for move, (dr, dc) in enumerate(MOVES.tolist())
            if 0 <= row + dr < size and 0 <= col + dc < size and not visited[(row + dr) * size + col + dc]
        ]
        if not choices:
            stack.pop()
            continue
        move, neighbour = choices[rng.integers(len(choices))]
        opened[cell, move] = True
        opened[neighbour, (move + 2) % 4] = True
        visited[neighbour] = True
        stack.append(neighbour)
    return opened


def goal_distances(opened: np.ndarray, size: int, goal: int) -> np.ndarray:
    """Maze (shortest-path) distance from every cell to the goal, by breadth-first search."""
    distances = np.full(size * size, -1, dtype=np.int64)
    distances[goal] = 0
    frontier = [goal]
    while frontier:
        next_frontier = []
        for cell in frontier:
            row, col = divmod(cell, size)
            for move, (dr, dc) in enumerate(MOVES.tolist()):
                neighbour = (row + dr) * size + col + dc
                if opened[cell, move] and distances[neighbour] < 0:
                    distances[neighbour] = distances[cell] + 1
                    next_frontier.append(neighbour)
        frontier = next_frontier
    return distances


class MazeEnv(VecEnv):
    """Find the bottom-right goal of a fixed maze; reward 1 there, 0 elsewhere."""

    def __init__(
        self,
        num_envs: int,
        seed: int,
        *,
        size: int = 5,
        max_steps: int | None = None,
        maze_seed: int = 0,
    ) -> None:
        if not isinstance(size, int) or size < 2:
            raise EnvError(f"puffer:maze: size must be an integer >= 2, got {size!r}")
        if max_steps is None:
            max_steps = 4 * size * size
        if not isinstance(max_steps, int) or max_steps < 1:
            raise EnvError(f"puffer:maze: max_steps must be an integer >= 1, got {max_steps!r}")
        self.num_envs = num_envs
        self.size = size
        self.max_steps = max_steps
        cells = size * size
        self.start, self.goal = 0, cells - 1
        self.opened = carve_maze(size, maze_seed)
        self.distances = goal_distances(self.opened, size, self.goal)

        rows, cols = np.divmod(np.arange(cells), size)
        moved = np.stack([(rows + dr) * size + cols + dc for dr, dc in MOVES.tolist()], axis=1)
        self._next_cell = np.where(self.opened, moved, np.arange(cells)[:, None])
        self.obs_size = 2 * size + 4
        self._obs_table = np.zeros((cells, self.obs_size), dtype=np.float32)
        self._obs_table[np.arange(cells), rows] = 1.0
        self._obs_table[np.arange(cells), size + cols] = 1.0
        self._obs_table[:, 2 * size :] = self.opened
        self.single_observation_space = spaces.Box(0.0, 1.0, (self.obs_size,), np.float32)
        self.single_action_space = spaces.Discrete(4)

        self._cell = np.zeros(num_envs, dtype=np.int64)
        self._t = np.zeros(num_envs, dtype=np.int64)
        self._closest = np.zeros(num_envs, dtype=np.int64)
        self._obs = np.zeros((num_envs, self.obs_size), dtype=np.float32)
        self._final_obs = np.zeros((num_envs, self.obs_size), dtype=np.float32)
        self._rewards = np.zeros(num_envs, dtype=np.float32)
        self._terminations = np.zeros(num_envs, dtype=np.bool_)
        self._truncations = np.zeros(num_envs, dtype=np.bool_)
        self._done = np.zeros(num_envs, dtype=np.bool_)
        self._episodes = EpisodeTracker(num_envs)

    def reset(self, seed: int | None = None) -> np.ndarray:
        """Put every agent at the start (the maze has no randomness: the seed changes nothing)."""
        self._cell[:] = self.start
        self._t[:] = 0
        self._closest[:] = self.distances[self.start]
        self._episodes.reset()
        np.take(self._obs_table, self._cell, axis=0, out=self._obs)
        return self._obs

    def step(self, actions: np.ndarray) -> StepResult:
        actions = np.asarray(actions).reshape(self.num_envs)
        self._cell[:] = self._next_cell[self._cell, actions]
        self._t += 1
        np.minimum(self._closest, self.distances[self._cell], out=self._closest)
        np.equal(self._cell, self.goal, out=self._terminations)
        np.greater_equal(self._t, self.max_steps, out=self._truncations)
        self._truncations &= ~self._terminations
        np.logical_or(self._terminations, self._truncations, out=self._done)
        self._rewards[:] = self._terminations
        np.take(self._obs_table, self._cell, axis=0, out=self._obs)
        ended, episodes = self._episodes.step(self._rewards, self._done)
        if not len(ended):
            return StepResult(self._obs, self._rewards, self._terminations, self._truncations, None, [])
        start_distance = float(self.distances[self.start])
        closest = self._closest[ended].tolist()
        solved = self._terminations[ended].tolist()
        for episode, distance, hit in zip(episodes, closest, solved):
            episode["solved"] = float(hit)
            episode["score"] = 1.0 - distance / start_distance
        self._final_obs[ended] = self._obs[ended]
        self._cell[ended] = self.start
        self._t[ended] = 0
        self._closest[ended] = self.distances[self.start]
        self._obs[ended] = self._obs_table[self.start]
        return StepResult(self._obs, self._rewards, self._terminations, self._truncations, self._final_obs, episodes)
