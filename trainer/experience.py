"""The segment buffer: `[segments, horizon]` rows of consecutive steps, laid out as DOMAIN.md §1.

At column t of a row: obs[t], actions[t], logprobs[t] and values[t] of the behaviour policy,
and the rewards[t] / terminations[t] / truncations[t] that arrived with obs[t] (they belong
to action t-1). Each row also keeps the LSTM state it started from, and a bootstrap: the
reward, value and done of the step after its last column, so that column is not wasted.
"""

from __future__ import annotations

import torch
from torch import Tensor

from trainer.advantage import Bootstrap


class Experience:
    """Preallocated tensors on the training device; the collector writes them column by column."""

    def __init__(self, segments: int, horizon: int, obs_size: int, action_shape: tuple[int, ...],
                 action_dtype: torch.dtype, lstm_size: int | None, device: torch.device) -> None:
        self.segments, self.horizon = segments, horizon

        def zeros(*shape: int, dtype: torch.dtype = torch.float32) -> Tensor:
            return torch.zeros(*shape, dtype=dtype, device=device)

        self.obs = zeros(segments, horizon, obs_size)
        self.actions = zeros(segments, horizon, *action_shape, dtype=action_dtype)
        self.logprobs = zeros(segments, horizon)
        self.values = zeros(segments, horizon)
        self.rewards = zeros(segments, horizon)
        self.terminations = zeros(segments, horizon)
        self.truncations = zeros(segments, horizon)
        self.lstm_h = zeros(segments, lstm_size) if lstm_size else None
        self.lstm_c = zeros(segments, lstm_size) if lstm_size else None
        self.next_rewards = zeros(segments)
        self.next_values = zeros(segments)
        self.next_dones = zeros(segments)

    @property
    def dones(self) -> Tensor:
        """Episode boundaries: terminations | truncations (truncated episodes were already
        bootstrapped into their last reward)."""
        return torch.maximum(self.terminations, self.truncations)

    def bootstrap(self) -> Bootstrap:
        """What arrived with the step after each row's last column."""
        return Bootstrap(self.next_rewards, self.next_values, self.next_dones)
