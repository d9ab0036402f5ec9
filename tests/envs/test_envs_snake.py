"""puffer:snake: collisions, growth, and the batched env equal to a plain one-board-at-a-time loop."""

from collections import deque

import numpy as np
import pytest

from trainer.envs import EnvError, make
from trainer.envs.snake import EMPTY, FOOD, MOVES, SNAKE, WALL, board_draw, board_seeds


class ReferenceBoard:
    """One board written the obvious way (lists, deques, Python loops), sharing only the env's draws."""

    def __init__(self, seed: int, *, snakes: int, width: int, height: int, food: int, view: int,
                 max_steps: int, max_length: int, food_reward: float, death_penalty: float) -> None:
        self.seed, self.snakes, self.width, self.height, self.food, self.view = seed, snakes, width, height, food, view
        self.max_steps, self.max_length = max_steps, max_length
        self.food_reward, self.death_penalty = food_reward, death_penalty
        self.draws = 0
        self.grid = [[EMPTY] * width for _ in range(height)]
        self.bodies = [deque() for _ in range(snakes)]
        self.t, self.eaten, self.returns = [0] * snakes, [0] * snakes, [0.0] * snakes
        for k in range(snakes):
            self.spawn(k)
        for _ in range(food):
            self.place(FOOD)

    def place(self, code: int) -> tuple[int, int]:
        while True:
            draw = int(board_draw(np.array([self.seed], np.uint64), np.array([self.draws], np.uint64))[0])
            self.draws += 1
            row, col = divmod(draw % (self.width * self.height), self.width)
            if self.grid[row][col] == EMPTY:
                self.grid[row][col] = code
                return row, col

    def spawn(self, k: int) -> None:
        self.bodies[k] = deque([self.place(SNAKE + k)])

    def code(self, row: int, col: int) -> int:
        return self.grid[row][col] if 0 <= row < self.height and 0 <= col < self.width else WALL

    def observe(self, k: int, head: tuple[int, int]) -> np.ndarray:
        side = 2 * self.view + 1
        planes = np.zeros((4, side * side), np.float32)
        for i in range(side * side):
            code = self.code(head[0] + i // side - self.view, head[1] + i % side - self.view)
            if code == FOOD:
                planes[0, i] = 1
            elif code == WALL:
                planes[1, i] = 1
            elif code == SNAKE + k:
                planes[2, i] = 1
            elif code >= SNAKE:
                planes[3, i] = 1
        return planes.reshape(-1)

    def step(self, actions: list[int]):
        heads = [body[-1] for body in self.bodies]
        targets = [(r + MOVES[a][0], c + MOVES[a][1]) for (r, c), a in zip(heads, actions)]
        grow = [self.code(*tg) == FOOD and len(body) < self.max_length for tg, body in zip(targets, self.bodies)]
        for k, body in enumerate(self.bodies):
            if not grow[k]:
                row, col = body.popleft()
                self.grid[row][col] = EMPTY
        landed = [self.code(*tg) for tg in targets]
        dead = [landed[k] >= WALL or targets.count(targets[k]) > 1 for k in range(self.snakes)]
        rewards = [0.0] * self.snakes
        eaters = 0
        for k in range(self.snakes):
            if dead[k]:
                rewards[k] = self.death_penalty
                continue
            self.grid[targets[k][0]][targets[k][1]] = SNAKE + k
            self.bodies[k].append(targets[k])
            if landed[k] == FOOD:
                self.eaten[k] += 1
                rewards[k] = self.food_reward
                eaters += 1
        final, episodes, truncated = {}, [], []
        for k in range(self.snakes):
            self.t[k] += 1
            self.returns[k] += rewards[k]
            truncated.append(not dead[k] and self.t[k] >= self.max_steps)
            if dead[k] or truncated[k]:
                final[k] = self.observe(k, heads[k] if dead[k] else targets[k])
                length = len(self.bodies[k]) + (1 if dead[k] and not grow[k] else 0)
                episodes.append({"episode_return": self.returns[k], "episode_length": self.t[k],
                                 "score": float(self.eaten[k]), "snake_length": float(length)})
        for k in final:
            for row, col in self.bodies[k]:
                self.grid[row][col] = EMPTY
            self.t[k], self.eaten[k], self.returns[k] = 0, 0, 0.0
        for k in final:
            self.spawn(k)
        for _ in range(eaters):
            self.place(FOOD)
        obs = [self.observe(k, self.bodies[k][-1]) for k in range(self.snakes)]
        return obs, rewards, dead, truncated, final, episodes


def test_batched_boards_equal_the_one_board_reference():
    kwargs = dict(snakes=3, width=7, height=6, food=3, view=2, max_steps=25, food_reward=1.0, death_penalty=-1.0)
    boards, seed = 5, 11
    env = make("puffer:snake", boards * 3, seed=seed, **kwargs)
    references = [ReferenceBoard(int(s), max_length=env.max_length, **kwargs) for s in board_seeds(seed, boards)]
    obs = env.reset()
    for b, ref in enumerate(references):
        np.testing.assert_array_equal(obs[3 * b:3 * b + 3], [ref.observe(k, ref.bodies[k][-1]) for k in range(3)])
    # random play mixed with steering towards food, so snakes grow, starve the board and collide
    rng = np.random.default_rng(0)
    ends = eats = 0
    for _ in range(400):
        actions = rng.integers(4, size=env.num_envs)
        result = env.step(actions)
        expected_episodes = []
        for b, ref in enumerate(references):
            rows = slice(3 * b, 3 * b + 3)
            ref_obs, rewards, dead, truncated, final, episodes = ref.step(actions[rows].tolist())
            np.testing.assert_array_equal(result.obs[rows], ref_obs)
            np.testing.assert_array_equal(result.rewards[rows], rewards)
            np.testing.assert_array_equal(result.terminations[rows], dead)
            np.testing.assert_array_equal(result.truncations[rows], truncated)
            for k, last in final.items():
                np.testing.assert_array_equal(result.final_obs[3 * b + k], last)
            expected_episodes += episodes
        assert result.episodes == expected_episodes
        ends += len(expected_episodes)
        eats += int((result.rewards > 0).sum())
    assert ends > 100 and eats > 20  # the run exercised deaths, truncations and growth


def place(env, board: int, bodies: list[list[tuple[int, int]]], food: list[tuple[int, int]]) -> None:
    """Overwrite one board with given snakes (tail first, head last) and food, in board coordinates."""
    v, stride = env.view, env._stride
    cell = lambda rc: (rc[0] + v) * stride + rc[1] + v  # noqa: E731
    env._grid[board, env._interior] = EMPTY
    for k, body in enumerate(bodies):
        agent = board * env.snakes + k
        for i, rc in enumerate(body):
            env._grid[board, cell(rc)] = SNAKE + k
            env._body[agent, i] = cell(rc)
        env._head[agent] = len(body) - 1
        env._length[agent] = len(body)
        env._head_cell[agent] = cell(body[-1])
    for rc in food:
        env._grid[board, cell(rc)] = FOOD


def test_walls_bodies_and_head_on_moves_kill():
    env = make("puffer:snake", 4, seed=0, snakes=4, width=6, height=6, food=1, max_length=4)
    env.reset()
    # snake 0 at the top wall, snake 1 about to hit snake 0's neck, snakes 2 and 3 head-on into (4, 2)
    place(env, 0, [[(2, 0), (1, 0), (0, 0)], [(2, 2), (1, 2), (1, 1)], [(4, 0), (4, 1)], [(4, 4), (4, 3)]], food=[(5, 5)])
    result = env.step(np.array([0, 3, 1, 3]))  # up into the wall, left into (1, 0), right and left into (4, 2)
    np.testing.assert_array_equal(result.terminations, [True, True, True, True])
    np.testing.assert_array_equal(result.rewards, [-1.0] * 4)
    assert [e["snake_length"] for e in result.episodes] == [3.0, 3.0, 2.0, 2.0]
    assert env._length.tolist() == [1, 1, 1, 1]  # all respawned as one-cell snakes
    assert (env._grid[0] >= SNAKE).sum() == 4 and (env._grid[0] == FOOD).sum() == 1


def test_moving_into_a_tail_that_moves_on_is_safe_and_reversing_is_not():
    env = make("puffer:snake", 2, seed=0, snakes=2, width=6, height=6, food=1, max_length=4)
    env.reset()
    # snake 0 chases its own tail round a 2x2 square; snake 1 turns back into its neck
    place(env, 0, [[(1, 1), (1, 2), (2, 2), (2, 1)], [(4, 2), (4, 3), (4, 4)]], food=[(0, 5)])
    result = env.step(np.array([0, 3]))  # snake 0 up into its tail cell (1, 1); snake 1 left into (4, 3)
    np.testing.assert_array_equal(result.terminations, [False, True])
    assert env._length[0] == 4


def test_eating_grows_pays_and_respawns_the_food():
    env = make("puffer:snake", 2, seed=0, snakes=2, width=6, height=6, food=2, max_length=3)
    env.reset()
    place(env, 0, [[(2, 2)], [(5, 5)]], food=[(2, 3), (2, 4)])
    food_view = env.obs_size // 4  # plane 0 is food
    result = env.step(np.array([1, 3]))
    assert result.rewards.tolist() == [1.0, 0.0] and env._length.tolist() == [2, 1]
    assert (env._grid[0] == FOOD).sum() == 2  # eaten food reappears elsewhere
    assert result.obs[0, :food_view].sum() >= 1
    result = env.step(np.array([1, 0]))
    assert result.rewards.tolist() == [1.0, 0.0] and env._length.tolist() == [3, 1]
    for _ in range(3):  # at max_length it still eats and scores but stops growing
        place(env, 0, [[(2, 0), (2, 1), (2, 2)], [(5, 5)]], food=[(2, 3), (0, 0)])
        result = env.step(np.array([1, 3]))
        assert result.rewards[0] == 1.0 and env._length[0] == 3


def test_truncation_reports_the_score_and_length():
    env = make("puffer:snake", 1, seed=0, snakes=1, width=5, height=5, food=1, max_steps=2, max_length=2)
    env.reset()
    place(env, 0, [[(2, 2)]], food=[(2, 3)])
    env.step(np.array([1]))
    result = env.step(np.array([2]))
    assert result.truncations.tolist() == [True] and result.terminations.tolist() == [False]
    assert result.episodes == [{"episode_return": 1.0, "episode_length": 2, "score": 1.0, "snake_length": 2.0}]


def test_checkpointed_env_continues_identically():
    import pickle

    env = make("puffer:snake", 8, seed=3, snakes=4, width=8, height=8, food=2)
    env.reset()
    rng = np.random.default_rng(1)
    for _ in range(20):
        env.step(rng.integers(4, size=8))
    twin = pickle.loads(pickle.dumps(env))
    for _ in range(50):
        actions = rng.integers(4, size=8)
        a, b = env.step(actions), twin.step(actions)
        np.testing.assert_array_equal(a.obs, b.obs)
        np.testing.assert_array_equal(a.rewards, b.rewards)


def test_render_colours_each_snake_and_bad_sizes_are_errors():
    env = make("puffer:snake", 2, seed=0, snakes=2, width=6, height=4, food=1)
    env.reset()
    text = env.render(0, colors=np.array([5, 5]))
    assert text.count("@") == 2 and text.count("\x1b[33m@") == 2  # both coloured as skill 5
    assert len(text.splitlines()) == 4 + 2
    with pytest.raises(EnvError, match="multiple of snakes"):
        make("puffer:snake", 3, seed=0, snakes=2)
    with pytest.raises(EnvError, match="max_length"):
        make("puffer:snake", 4, seed=0, snakes=4, width=3, height=3, food=2)
