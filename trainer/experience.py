"""The segment buffer: `[segments, horizon]` rows of consecutive steps, laid out as DOMAIN.md §1.

At column t of a row: obs[t], actions[t], logprobs[t] and values[t] of the behaviour policy,
and the rewards[t] / terminations[t] / truncations[t] that arrived with obs[t] (they belong
to action t-1). Each row also keeps the LSTM state it started from, and a bootstrap: the
reward, value and done of the step after its last column, so that column is not wasted.

The first `segments` rows are the batch collected this phase. An algorithm that keeps data
across phases (trainer/algorithms/replay.py) asks for `retained` more rows after them: each
carries its age in phases and the importance ratio it starts the next phase with.
"""

from __future__ import annotations

import torch
from torch import Tensor

from trainer.advantage import Bootstrap


class Experience:
    """Preallocated tensors on the training device; the collector writes them column by column."""

    ROW_FIELDS = ("obs", "actions", "logprobs", "values", "rewards", "terminations", "truncations",
                  "lstm_h", "lstm_c", "next_rewards", "next_values", "next_dones", "importance", "ages")

    def __init__(self, segments: int, horizon: int, obs_size: int, action_shape: tuple[int, ...],
                 action_dtype: torch.dtype, lstm_size: int | None, device: torch.device,
                 retained_rows: int = 0) -> None:
        self.segments, self.horizon = segments, horizon
        self.capacity = capacity = segments + retained_rows
        self.retained = 0  # rows kept from earlier phases, at [segments, segments + retained)

        def zeros(*shape: int, dtype: torch.dtype = torch.float32) -> Tensor:
            return torch.zeros(*shape, dtype=dtype, device=device)

        self.obs = zeros(capacity, horizon, obs_size)
        self.actions = zeros(capacity, horizon, *action_shape, dtype=action_dtype)
        self.logprobs = zeros(capacity, horizon)
        self.values = zeros(capacity, horizon)
        self.rewards = zeros(capacity, horizon)
        self.terminations = zeros(capacity, horizon)
        self.truncations = zeros(capacity, horizon)
        self.lstm_h = zeros(capacity, lstm_size) if lstm_size else None
        self.lstm_c = zeros(capacity, lstm_size) if lstm_size else None
        self.next_rewards = zeros(capacity)
        self.next_values = zeros(capacity)
        self.next_dones = zeros(capacity)
        self.importance = zeros(capacity, horizon)
        self.ages = zeros(capacity, dtype=torch.int64)

    @property
    def rows(self) -> int:
        """Rows that hold data this phase: the new batch and the retained rows."""
        return self.segments + self.retained

    @property
    def dones(self) -> Tensor:
        """Episode boundaries of the active rows: terminations | truncations (truncated
        episodes were already bootstrapped into their last reward)."""
        n = self.rows
        return torch.maximum(self.terminations[:n], self.truncations[:n])

    def bootstrap(self) -> Bootstrap:
        """What arrived with the step after each active row's last column."""
        n = self.rows
        return Bootstrap(self.next_rewards[:n], self.next_values[:n], self.next_dones[:n])

    def start_phase(self) -> Tensor:
        """The importance buffer w of the active rows for a new training phase: 1 for the new
        batch, each retained row's ratio under the current policy (set by `retain`)."""
        self.importance[:self.segments].fill_(1.0)
        return self.importance[:self.rows]

    def retain(self, rows: Tensor, values: Tensor, importance: Tensor, ages: Tensor) -> None:
        """Keep `rows` (indices of active rows) for the next phase, with refreshed `values` and
        `importance` and their new `ages`; everything else a row holds is copied as collected."""
        kept = slice(self.segments, self.segments + len(rows))
        for name in self.ROW_FIELDS:
            tensor = getattr(self, name)
            if tensor is not None:
                tensor[kept] = tensor[rows]  # advanced indexing gathers a copy first
        self.values[kept] = values
        self.importance[kept] = importance
        self.ages[kept] = ages
        self.retained = len(rows)

    def retained_state(self) -> dict[str, Tensor | int]:
        """The retained rows, for a checkpoint (the new batch is collected again on resume)."""
        kept = slice(self.segments, self.rows)
        state: dict[str, Tensor | int] = {"retained": self.retained}
        for name in self.ROW_FIELDS:
            tensor = getattr(self, name)
            if tensor is not None:
                state[name] = tensor[kept].cpu()
        return state

    def load_retained_state(self, state: dict[str, Tensor | int]) -> None:
        self.retained = int(state["retained"])
        kept = slice(self.segments, self.rows)
        for name in self.ROW_FIELDS:
            tensor = getattr(self, name)
            if tensor is not None:
                tensor[kept] = state[name].to(tensor.device)
