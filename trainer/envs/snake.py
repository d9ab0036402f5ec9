"""puffer:snake, multi-agent snake: several snakes share each board, each sees only around its head.

`num_envs` agents are `num_envs / snakes` boards of `width` x `height` cells with `snakes`
snakes each (agent i is snake `i % snakes` of board `i // snakes`), walled round, with `food`
pieces on every board. Actions: 0 up, 1 right, 2 down, 3 left (absolute). Each step all snakes
move at once, in this order:

1. A snake about to eat (its next cell holds food) grows by one (up to `max_length`); every other
   snake's tail leaves its cell first, so moving into a tail that moves on is safe.
2. A snake dies if its next cell is a wall or any snake's body, or if another snake moves into
   the same cell (both die). Dying costs `death_penalty` and ends its episode (terminated).
3. Survivors move; eating gives `food_reward`, and the food reappears on a random empty cell.
4. A snake whose episode ended (died, or truncated after `max_steps` of its own steps) leaves
   the board and respawns as a one-cell snake on a random empty cell: the same-step autoreset.

Observation: the `(2 view + 1)^2` cells around the head, each one-hot over food, wall, own
body, other snake (`4 (2 view + 1)^2` floats); outside the board reads as wall. Episode stats:
`score` (food eaten) and `snake_length` (the length at the end).

Randomness is a counter-based hash per board (`board_draw`): a board's trajectory depends only
on its own seed and the actions its snakes take, so N boards stepped together are exactly N
boards stepped one by one (the tests check the batch against a plain single-board loop).
`max_length` defaults to a length at which the snakes fill at most half the board, which keeps
placing food and respawns cheap and always possible.
"""

from __future__ import annotations

import numpy as np
from gymnasium import spaces
from numpy.lib.stride_tricks import sliding_window_view

from trainer.envs.vecenv import EnvError, EpisodeTracker, StepResult, VecEnv

EMPTY, FOOD, WALL, SNAKE = 0, 1, 2, 3
"""Cell codes of a board; snake k of a board is drawn as `SNAKE + k`."""

MOVES = np.array([(-1, 0), (0, 1), (1, 0), (0, -1)])
"""Row and column change of actions up, right, down, left."""

CHANNELS = 4
"""Observation channels per view cell: food, wall, own body, other snake."""

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def board_draw(seeds: np.ndarray, counters: np.ndarray) -> np.ndarray:
    """splitmix64 of (seed, counter) per board: uint64 draws that depend on nothing else."""
    with np.errstate(over="ignore"):
        z = seeds + (counters + np.uint64(1)) * _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def board_seeds(seed: int, boards: int) -> np.ndarray:
    """Independent per-board seeds [boards] uint64 drawn from the run seed."""
    return np.random.SeedSequence(seed).generate_state(boards, dtype=np.uint64)


class SnakeEnv(VecEnv):
    """Several snakes per board eat food, grow, and die on walls and bodies."""

    def __init__(
        self,
        num_envs: int,
        seed: int,
        *,
        snakes: int = 4,
        width: int = 16,
        height: int = 16,
        food: int = 8,
        view: int = 3,
        max_steps: int = 1000,
        max_length: int | None = None,
        food_reward: float = 1.0,
        death_penalty: float = -1.0,
    ) -> None:
        for key, value, low in (("snakes", snakes, 1), ("width", width, 2), ("height", height, 2),
                                ("food", food, 0), ("view", view, 1), ("max_steps", max_steps, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise EnvError(f"puffer:snake: {key} must be an integer >= {low}, got {value!r}")
        if num_envs % snakes:
            raise EnvError(f"puffer:snake: num_envs ({num_envs}) must be a multiple of snakes ({snakes})")
        cells = width * height
        longest = (cells // 2 - food) // snakes
        if max_length is None:
            max_length = longest
        if longest < 1 or not isinstance(max_length, int) or not 1 <= max_length <= longest:
            raise EnvError(
                f"puffer:snake: max_length must be in 1..{longest} (snakes may fill at most half of the "
                f"{width}x{height} board with {food} food), got {max_length!r}; use a larger board"
            )
        self.num_envs, self.snakes, self.width, self.height = num_envs, snakes, width, height
        self.food, self.view, self.max_steps, self.max_length = food, view, max_steps, max_length
        self.food_reward, self.death_penalty = float(food_reward), float(death_penalty)
        self.boards = num_envs // snakes
        self.seed = seed

        stride = width + 2 * view
        self._stride = stride
        self._padded = stride * (height + 2 * view)
        rows, cols = np.divmod(np.arange(cells), width)
        self._interior = ((rows + view) * stride + cols + view).astype(np.int64)
        """Padded flat index of each board cell, in row-major board order."""
        self._deltas = (MOVES[:, 0] * stride + MOVES[:, 1]).astype(np.int64)
        self.obs_size = CHANNELS * (2 * view + 1) ** 2
        self.single_observation_space = spaces.Box(0.0, 1.0, (self.obs_size,), np.float32)
        self.single_action_space = spaces.Discrete(4)

        n = num_envs
        self._agents = np.arange(n)
        self._slot = (self._agents % snakes).astype(np.int64)
        self._board = (self._agents // snakes).astype(np.int64)
        self._board_base = self._board * self._padded
        self._code = (SNAKE + self._slot).astype(np.int8)
        self._grid = np.full((self.boards, self._padded), WALL, dtype=np.int8)
        self._alias_grid()
        self._plane_codes = np.stack([np.full(n, FOOD), np.full(n, WALL), self._code], axis=1).astype(np.int8)
        """Per agent, the cell codes of its first three observation planes: food, wall, own body."""
        self._seen = np.zeros((n, CHANNELS, (2 * view + 1) ** 2), dtype=np.bool_)
        self._claims = np.full(self.boards * self._padded, -1, dtype=np.int64)
        self._body = np.zeros((n, max_length), dtype=np.int64)
        """Ring buffer of each snake's cells (padded flat index on its board); head at `_head`."""
        self._head = np.zeros(n, dtype=np.int64)
        self._head_cell = np.zeros(n, dtype=np.int64)
        self._length = np.zeros(n, dtype=np.int64)
        self._t = np.zeros(n, dtype=np.int64)
        self._eaten = np.zeros(n, dtype=np.int64)
        self._seeds = board_seeds(seed, self.boards)
        self._draws = np.zeros(self.boards, dtype=np.uint64)
        self._obs = np.zeros((n, self.obs_size), dtype=np.float32)
        self._final_obs = np.zeros((n, self.obs_size), dtype=np.float32)
        self._rewards = np.zeros(n, dtype=np.float32)
        self._terminations = np.zeros(n, dtype=np.bool_)
        self._truncations = np.zeros(n, dtype=np.bool_)
        self._episodes = EpisodeTracker(n)

    def reset(self, seed: int | None = None) -> np.ndarray:
        """Empty every board, then place the snakes (one cell each) and the food at random."""
        if seed is not None:
            self._seeds = board_seeds(seed, self.boards)
            self._draws[:] = 0
        self._grid[:] = WALL
        self._grid[:, self._interior] = EMPTY
        self._t[:] = 0
        self._eaten[:] = 0
        self._episodes.reset()
        self._spawn_snakes(self._agents)
        self._place_food(np.repeat(np.arange(self.boards), self.food))
        self._views(self._agents, self._head_cell, self._obs)
        return self._obs

    def step(self, actions: np.ndarray) -> StepResult:
        actions = np.asarray(actions).reshape(self.num_envs)
        flat, agents = self._flat, self._agents
        lengths = self._length.copy()
        target = self._head_cell + self._deltas[actions]
        at = self._board_base + target
        grow = (flat[at] == FOOD) & (self._length < self.max_length)

        shrink = np.flatnonzero(~grow)
        tails = self._body[shrink, (self._head[shrink] - self._length[shrink] + 1) % self.max_length]
        flat[self._board_base[shrink] + tails] = EMPTY
        self._length[shrink] -= 1

        landed = flat[at]
        self._claims[at] = agents
        crowded = self._claims[at] != agents
        self._claims[at[crowded]] = -2  # mark cells claimed twice: every claimant dies
        dead = (landed >= WALL) | (self._claims[at] == -2)
        self._claims[at] = -1

        alive = np.flatnonzero(~dead)
        ate = landed[alive] == FOOD
        flat[at[alive]] = self._code[alive]
        self._head[alive] = (self._head[alive] + 1) % self.max_length
        self._body[alive, self._head[alive]] = target[alive]
        self._head_cell[alive] = target[alive]
        self._length[alive] += 1
        eaters = alive[ate]
        self._eaten[eaters] += 1

        rewards = self._rewards
        rewards[:] = 0.0
        rewards[eaters] = self.food_reward
        rewards[dead] = self.death_penalty
        self._t += 1
        np.copyto(self._terminations, dead)
        np.greater_equal(self._t, self.max_steps, out=self._truncations)
        self._truncations &= ~dead
        done = self._terminations | self._truncations
        ended, episodes = self._episodes.step(rewards, done)
        if len(ended):
            last_heads = self._head_cell[ended]  # the dead did not move
            final = np.empty((len(ended), self.obs_size), dtype=np.float32)
            self._views(ended, last_heads, final)
            self._final_obs[ended] = final
            last_lengths = np.where(dead[ended], lengths[ended], self._length[ended])
            for episode, score, length in zip(episodes, self._eaten[ended].tolist(), last_lengths.tolist()):
                episode["score"] = float(score)
                episode["snake_length"] = float(length)
            self._clear(ended)
            self._t[ended] = 0
            self._eaten[ended] = 0
            self._spawn_snakes(ended)
        if len(eaters):
            self._place_food(self._board[eaters])
        self._views(agents, self._head_cell, self._obs)
        return StepResult(
            self._obs, rewards, self._terminations, self._truncations, self._final_obs if len(ended) else None, episodes
        )

    def render(self, board: int = 0, colors: np.ndarray | None = None) -> str:
        """One board as ANSI text: walls `#`, food `*`, each snake's head `@` and body `o` in its
        own colour; `colors` ([num_envs] ints, e.g. DIAYN skills) picks the colour per agent."""
        palette = [31, 32, 34, 35, 36, 33, 91, 92, 94, 95, 96, 93]
        agents = np.arange(board * self.snakes, (board + 1) * self.snakes)
        colour = {int(a % self.snakes): palette[int(colors[a] if colors is not None else a % self.snakes) % len(palette)]
                  for a in agents}
        heads = {int(self._body[a, self._head[a]]): int(a % self.snakes) for a in agents if self._length[a]}
        grid = self._grid[board]
        lines = []
        for row in range(self.view - 1, self.view + self.height + 1):
            line = []
            for col in range(self.view - 1, self.view + self.width + 1):
                cell = row * self._stride + col
                code = int(grid[cell])
                if code == WALL:
                    line.append("#")
                elif code == FOOD:
                    line.append("\x1b[93m*\x1b[0m")
                elif code >= SNAKE:
                    mark = "@" if heads.get(cell) == code - SNAKE else "o"
                    line.append(f"\x1b[{colour[code - SNAKE]}m{mark}\x1b[0m")
                else:
                    line.append(" ")
            lines.append("".join(line))
        return "\n".join(lines)

    def __getstate__(self) -> dict:
        """Picklable for checkpoints: the views of the grid are rebuilt on load, not copied."""
        state = self.__dict__.copy()
        del state["_flat"], state["_windows"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._alias_grid()

    def _alias_grid(self) -> None:
        """`_flat` (all boards' cells in one row) and `_windows` ([boards, rows, cols, side, side],
        the view whose top-left corner is (row, col)): views of `_grid`, written through it."""
        self._flat = self._grid.reshape(-1)
        side = 2 * self.view + 1
        self._windows = sliding_window_view(self._grid.reshape(self.boards, -1, self._stride), (side, side), axis=(1, 2))

    def _views(self, agents: np.ndarray, heads: np.ndarray, out: np.ndarray) -> None:
        """Write the observations of `agents` seeing around the cells `heads` into `out` [len(agents), obs_size]."""
        rows, cols = np.divmod(heads, self._stride)
        codes = self._windows[self._board[agents], rows - self.view, cols - self.view].reshape(len(agents), -1)
        seen = self._seen if len(agents) == self.num_envs else np.empty((len(agents), CHANNELS, codes.shape[1]), np.bool_)
        np.equal(codes[:, None, :], self._plane_codes[agents, :, None], out=seen[:, :3])
        np.greater_equal(codes, SNAKE, out=seen[:, 3])
        seen[:, 3] ^= seen[:, 2]
        out.reshape(seen.shape)[:] = seen

    def _clear(self, agents: np.ndarray) -> None:
        """Take the bodies of `agents` off their boards."""
        back = np.arange(self.max_length)
        owned = back < self._length[agents, None]
        ring = (self._head[agents, None] - back) % self.max_length
        cells = self._body[agents[:, None], ring][owned]
        self._flat[np.repeat(self._board_base[agents], owned.sum(axis=1)) + cells] = EMPTY

    def _spawn_snakes(self, agents: np.ndarray) -> None:
        """Respawn `agents` (sorted) as one-cell snakes on random empty cells, in agent order per board."""
        cells = self._place(self._board[agents], self._code[agents])
        self._head[agents] = 0
        self._body[agents, 0] = cells
        self._head_cell[agents] = cells
        self._length[agents] = 1

    def _place_food(self, boards: np.ndarray) -> None:
        self._place(np.sort(boards, kind="stable"), np.full(len(boards), FOOD, dtype=np.int8))

    def _place(self, boards: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """Write `codes` on random empty cells of `boards` (sorted; repeats place in order); return the cells.

        A board's k-th item is placed in round k; within a round each board redraws (its own
        counter) until it hits an empty cell, so the order of draws is per board and fixed.
        """
        placed = np.zeros(len(boards), dtype=np.int64)
        if not len(boards):
            return placed
        first = np.r_[True, boards[1:] != boards[:-1]]
        rank = np.arange(len(boards)) - np.maximum.accumulate(np.where(first, np.arange(len(boards)), 0))
        interior = np.uint64(len(self._interior))
        for k in range(int(rank.max()) + 1):
            pending = np.flatnonzero(rank == k)
            while len(pending):
                board = boards[pending]
                draw = board_draw(self._seeds[board], self._draws[board])
                self._draws[board] += np.uint64(1)
                cell = self._interior[(draw % interior).astype(np.int64)]
                free = self._grid[board, cell] == EMPTY
                hit = pending[free]
                self._grid[board[free], cell[free]] = codes[hit]
                placed[hit] = cell[free]
                pending = pending[~free]
        return placed
