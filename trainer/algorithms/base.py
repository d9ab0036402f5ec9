"""The seams where an algorithm plugs into the trainer, each a no-op by default.

`trainer/train.py` calls one composed `Algorithm` (trainer/algorithms/__init__.py `build`) at
fixed points of DOMAIN.md §3's loop; a module overrides only the hooks it needs. With no
algorithm enabled the trainer calls this base class, whose hooks return their input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from trainer.train import Trainer

Rows = slice | Tensor  # buffer rows: a slice of a row block, or row indices


@dataclass
class Minibatch:
    """One sampled minibatch: `rows` of the buffer and their [rows, horizon] columns."""

    rows: Tensor
    obs: Tensor
    actions: Tensor
    logprobs: Tensor  # behaviour log-probs (the policy that collected each row)
    values: Tensor  # the values the value clip is anchored to
    advantages: Tensor  # as estimated, before normalization and importance weights
    returns: Tensor
    weights: Tensor  # prioritized-sampling importance weights, [rows]
    ages: Tensor  # training phases since each row was collected (0 = this phase's batch), [rows]
    state: tuple[Tensor, Tensor] | None  # LSTM state each row started from


@dataclass
class Outputs:
    """The policy on a minibatch and the baseline losses, with gradients attached."""

    logits: Tensor  # head parameters [rows, horizon, ...]; log_softmax of these for categorical heads
    values: Tensor
    logprobs: Tensor  # log-prob of the taken action at each step
    entropy: Tensor
    ratio: Tensor  # exp(logprobs - behaviour logprobs)
    value_errors: Tensor  # per-step max((v - R)^2, (v_clipped - R)^2); value_loss = 0.5 * mean
    policy_loss: Tensor
    value_loss: Tensor


class Algorithm:
    """The no-op algorithm; subclasses override the hooks they need.

    Sizes are known at construction (before the policy and the buffer are built):
    `extra_obs_size` features are appended to every observation the policy sees, and
    `retained_rows` extra buffer rows hold data kept across training phases.
    """

    extra_obs_size = 0
    retained_rows = 0

    @classmethod
    def enabled(cls, config: dict) -> bool:
        """Whether `config` asks for this algorithm."""
        return False

    def attach(self, trainer: Trainer) -> None:
        """Called once the trainer has built its envs, policy, buffer and optimizer."""

    def modules(self) -> list[nn.Module]:
        """Trainable modules of the algorithm's own: optimized and grad-clipped with the policy."""
        return []

    def policy_inputs(self, obs: Tensor, rows: Rows, first: Tensor | None) -> Tensor:
        """`obs` [n, features] with this algorithm's `extra_obs_size` features appended.
        `first` (1 where obs starts an episode) is given once per collected step, where the
        algorithm may update per-step state; it is None for the extra forwards (bootstraps)."""
        return obs

    def shape_rewards(self, rewards: Tensor, first: Tensor, hidden: Tensor, rows: slice) -> Tensor:
        """Rewards [num_envs] that arrived with this step's obs, in env order (env i fills row
        rows.start + i); `first` marks obs that start an episode, `hidden` is the policy's
        embedding of them (detached). Returns the rewards to store."""
        return rewards

    def end_segment(self, rows: slice) -> None:
        """After a row block's last step: `rows` of the buffer now hold whole segments (every
        column's obs and stored rewards), e.g. for rewards computed over a segment at once."""

    def loss(self, batch: Minibatch, out: Outputs) -> Tensor | None:
        """An extra loss term for this minibatch (added as is), or None."""
        return None

    def end_phase(self) -> None:
        """After a training phase: e.g. choose which rows the buffer keeps for the next one."""

    def metrics(self) -> dict[str, float]:
        """Numbers for this epoch's losses dict (read once per epoch)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """State a checkpoint must hold to resume exactly."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict()`'s output."""


class Stack(Algorithm):
    """Several algorithms as one, called in order (inputs and rewards chained, losses summed)."""

    def __init__(self, algorithms: list[Algorithm]) -> None:
        self.algorithms = algorithms
        self.extra_obs_size = sum(a.extra_obs_size for a in algorithms)
        self.retained_rows = sum(a.retained_rows for a in algorithms)

    def attach(self, trainer: Trainer) -> None:
        for algorithm in self.algorithms:
            algorithm.attach(trainer)

    def modules(self) -> list[nn.Module]:
        return [module for algorithm in self.algorithms for module in algorithm.modules()]

    def policy_inputs(self, obs: Tensor, rows: Rows, first: Tensor | None) -> Tensor:
        for algorithm in self.algorithms:
            obs = algorithm.policy_inputs(obs, rows, first)
        return obs

    def shape_rewards(self, rewards: Tensor, first: Tensor, hidden: Tensor, rows: slice) -> Tensor:
        for algorithm in self.algorithms:
            rewards = algorithm.shape_rewards(rewards, first, hidden, rows)
        return rewards

    def end_segment(self, rows: slice) -> None:
        for algorithm in self.algorithms:
            algorithm.end_segment(rows)

    def loss(self, batch: Minibatch, out: Outputs) -> Tensor | None:
        terms = [term for a in self.algorithms if (term := a.loss(batch, out)) is not None]
        return sum(terms[1:], terms[0]) if terms else None

    def end_phase(self) -> None:
        for algorithm in self.algorithms:
            algorithm.end_phase()

    def metrics(self) -> dict[str, float]:
        return {key: value for algorithm in self.algorithms for key, value in algorithm.metrics().items()}

    def state_dict(self) -> dict[str, Any]:
        return {type(a).__name__: a.state_dict() for a in self.algorithms}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for algorithm in self.algorithms:
            algorithm.load_state_dict(state.get(type(algorithm).__name__, {}))


class Means:
    """Per-minibatch statistics kept as tensors and read as floats once per epoch, so logging
    them never waits on the device inside the loop."""

    def __init__(self) -> None:
        self.sums: dict[str, list[Tensor]] = {}  # name -> [numerator, denominator]
        self.peaks: dict[str, Tensor] = {}

    def add(self, name: str, total: Tensor, count: Tensor | float = 1.0) -> None:
        """Add `total` over `count` items to the epoch mean of `name`."""
        sums = self.sums.setdefault(name, [torch.zeros_like(total), torch.zeros_like(total)])
        sums[0] += total
        sums[1] += count

    def peak(self, name: str, value: Tensor) -> None:
        """Keep the epoch maximum of `name`."""
        self.peaks[name] = value if name not in self.peaks else torch.maximum(self.peaks[name], value)

    def read(self) -> dict[str, float]:
        """The epoch's means (NaN where nothing was counted) and maxima; starts a new epoch."""
        out = {name: float(total / count) if float(count) else float("nan") for name, (total, count) in self.sums.items()}
        out.update({name: float(value) for name, value in self.peaks.items()})
        self.sums, self.peaks = {}, {}
        return out
