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
    """splitmix64 of (seed, counter) per board: uint64 draws that depend on nothing else (arrays wrap unchecked)."""
    z = counters + np.uint64(1)
    z *= _GOLDEN
    z += seeds
    z ^= z >> np.uint64(30)
    z *= np.uint64(0xBF58476D1CE4E5B9)
    z ^= z >> np.uint64(27)
    z *= np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    return z


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
        cells_seen = (2 * view + 1) ** 2
        self._own_codes = np.repeat(self._code[:snakes], cells_seen).reshape(snakes, cells_seen)
        """The own-body code of every view cell of a board's snakes: all agents' own planes in one compare."""
        self._seen = np.zeros((n, CHANNELS, cells_seen), dtype=np.bool_)
        self._claims = np.full(self.boards * self._padded, -1, dtype=np.int64)
        self._ring = 1 << (max_length - 1).bit_length()
        self._body = np.zeros((n, self._ring), dtype=np.int64)
        """Ring buffer of each snake's cells (padded flat index on its board); head at `_head`. A power-of-two
        ring (at least `max_length`), so positions wrap with a mask."""
        self._ring_base = self._agents * self._ring
        self._back = np.arange(max_length)
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
        flat, agents, ring, wrap = self._flat, self._agents, self._body.reshape(-1), self._ring - 1
        lengths = self._length.copy()
        target = self._head_cell + self._deltas[actions]
        at = self._board_base + target
        grow = flat[at] == FOOD
        grow &= self._length < self.max_length

        shrink = ~grow
        tails = (self._head - self._length + 1) & wrap
        tails += self._ring_base
        tails = ring[tails]
        tails += self._board_base
        flat[tails[shrink]] = EMPTY
        self._length -= shrink

        landed = flat[at]
        claims = self._claims
        claims[at] = agents
        crowded = claims[at] != agents
        claims[at[crowded]] = -2  # mark cells claimed twice: every claimant dies
        dead = claims[at] == -2
        dead |= landed >= WALL
        claims[at] = -1

        moved = ~dead
        flat[at] = np.where(moved, self._code, landed)  # a dead snake's target keeps its code; no survivor shares it
        self._head += moved
        self._head &= wrap
        np.copyto(self._head_cell, target, where=moved)
        ring[self._ring_base + self._head] = self._head_cell
        self._length += moved
        ate = landed == FOOD
        ate &= moved
        self._eaten += ate

        rewards = self._rewards
        np.multiply(ate, self.food_reward, out=rewards)
        rewards[dead] = self.death_penalty
        self._t += 1
        np.copyto(self._terminations, dead)
        np.greater_equal(self._t, self.max_steps, out=self._truncations)
        self._truncations &= moved
        done = self._terminations | self._truncations
        ended, episodes = self._episodes.step(rewards, done)
        if len(ended):
            self._views(ended, self._head_cell[ended], self._final_obs)  # the dead did not move
            last_lengths = np.where(dead[ended], lengths[ended], self._length[ended]).astype(np.float64)
            for episode, score, length in zip(episodes, self._eaten[ended].astype(np.float64).tolist(),
                                              last_lengths.tolist()):
                episode["score"], episode["snake_length"] = score, length
            self._clear(ended)
            self._t[ended] = 0
            self._eaten[ended] = 0
            self._spawn_snakes(ended)
        eaters = np.flatnonzero(ate)
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
        """Write the observations of `agents` seeing around the cells `heads` into their rows of `out`."""
        rows, cols = np.divmod(heads, self._stride)
        codes = self._windows[self._board[agents], rows - self.view, cols - self.view].reshape(len(agents), -1)
        everyone = len(agents) == self.num_envs
        seen = self._seen if everyone else np.empty((len(agents), CHANNELS, codes.shape[1]), np.bool_)
        np.equal(codes, FOOD, out=seen[:, 0])
        np.equal(codes, WALL, out=seen[:, 1])
        if everyone:  # agents are board-major: one compare against each slot's own code
            shape = (self.boards, self.snakes, codes.shape[1])
            np.equal(codes.reshape(shape), self._own_codes, out=seen[:, 2].reshape(shape))
        else:
            np.equal(codes, self._code[agents, None], out=seen[:, 2])
        np.greater_equal(codes, SNAKE, out=seen[:, 3])
        seen[:, 3] ^= seen[:, 2]
        if everyone:
            out.reshape(seen.shape)[:] = seen
        else:
            out[agents] = seen.reshape(len(agents), -1)

    def _clear(self, agents: np.ndarray) -> None:
        """Take the bodies of `agents` off their boards."""
        owned = self._back < self._length[agents, None]
        ring = (self._head[agents, None] - self._back) & (self._ring - 1)
        ring += self._ring_base[agents, None]
        cells = self._body.reshape(-1)[ring]
        cells += self._board_base[agents, None]
        self._flat[cells[owned]] = EMPTY

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

        As if each board placed its items one by one, each redrawing (its own counter) until it hits
        an empty cell; done for all boards and items at once: every item draws as if the board's
        earlier items had all hit, the hits before a board's first miss stand, and the rest try again.
        """
        placed = np.zeros(len(boards), dtype=np.int64)
        pending = np.arange(len(boards))
        interior = np.uint64(len(self._interior))
        while len(pending):
            board = boards[pending]
            first = np.ones(len(board), dtype=np.bool_)
            np.not_equal(board[1:], board[:-1], out=first[1:])
            starts = np.flatnonzero(first)
            sizes = np.diff(starts, append=len(board))
            rank = np.arange(len(board)) - np.repeat(starts, sizes)
            draw = board_draw(self._seeds[board], self._draws[board] + rank.astype(np.uint64))
            cell = self._interior[(draw % interior).astype(np.int64)]
            key = board * self._padded + cell
            order = np.argsort(key, kind="stable")
            miss = np.zeros(len(board), dtype=np.bool_)
            miss[order[1:]] = key[order[1:]] == key[order[:-1]]  # drawn by an earlier item of the board
            miss |= self._flat[key] != EMPTY
            before = np.cumsum(miss) - miss
            before -= np.repeat(before[starts], sizes)
            drew = before == 0  # the items up to the board's first miss drew once
            hit = drew & ~miss
            self._flat[key[hit]] = codes[pending[hit]]
            placed[pending[hit]] = cell[hit]
            self._draws[board[starts]] += np.add.reduceat(drew, starts, dtype=np.uint64)
            pending = pending[~hit]
        return placed
