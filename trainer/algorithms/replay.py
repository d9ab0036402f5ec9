"""The replay factor (DOMAIN.md §4): keep the highest-priority rows across training phases.

The buffer holds the `batch_size / horizon` rows collected this phase plus up to
`replay_factor * batch_size / horizon` retained rows. After each phase every active row is run
through the current policy: its value is refreshed, its ratio against the behaviour log-probs it
was collected with is computed, and its priority is `sum_t |A|` under those (PER's refresh).
The top rows by priority are kept with everything they were collected with (observations,
actions, behaviour log-probs, rewards, dones, bootstrap, LSTM start state), one phase older;
rows older than `replay_max_age` are evicted. A kept row starts the next phase with its
refreshed value (the value clip's anchor) and its ratio in the importance buffer.

The bootstrap value of a retained row stays the one computed when it was collected (the
observation after the row is not stored). `replay_value_weight` scales the retained rows'
share of the value loss (0 masks them out).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from trainer.algorithms.base import Algorithm, Means, Minibatch, Outputs

if TYPE_CHECKING:
    from trainer.train import Trainer


class Replay(Algorithm):
    """Retention by refreshed priority, ages, and the off-policy instrumentation."""

    @classmethod
    def enabled(cls, config: dict) -> bool:
        return cls.capacity(config) > 0

    @staticmethod
    def capacity(config: dict) -> int:
        """Retained rows: round(replay_factor * batch_size / bptt_horizon)."""
        train = config["train"]
        return round(train["replay_factor"] * (train["batch_size"] // train["bptt_horizon"]))

    def __init__(self, config: dict, *, num_envs: int, segments: int, device: torch.device) -> None:
        train = config["train"]
        self.retained_rows = self.capacity(config)
        self.max_age = train["replay_max_age"]
        self.value_weight = train["replay_value_weight"]
        self.vf_coef = train["vf_coef"]
        self.rho_clip, self.c_clip = train["vtrace_rho_clip"], train["vtrace_c_clip"]
        self.chunk_rows = train["minibatch_size"] // train["bptt_horizon"]
        self.stats = Means()
        self.trainer: Trainer | None = None

    def attach(self, trainer: Trainer) -> None:
        self.trainer = trainer

    def loss(self, batch: Minibatch, out: Outputs) -> Tensor | None:
        """Record the minibatch's off-policy statistics; reweight the retained rows' value loss."""
        retained = (batch.ages > 0).float()[:, None]
        with torch.no_grad():
            ratio, errors, steps = out.ratio.detach(), out.value_errors.detach(), out.ratio.shape[1]
            stats = self.stats
            stats.add("offpolicy_frac", retained.mean())
            stats.add("ratio_mean", ratio.mean())
            stats.peak("ratio_max", ratio.max())
            stats.add("rho_clipfrac", (ratio > self.rho_clip).float().mean())
            stats.add("c_clipfrac", (ratio > self.c_clip).float().mean())
            stats.add("value_loss_onpolicy", 0.5 * (errors * (1 - retained)).sum(), (1 - retained).sum() * steps)
            stats.add("value_loss_retained", 0.5 * (errors * retained).sum(), retained.sum() * steps)
        if self.value_weight == 1.0:
            return None
        # value_loss is 0.5 * mean(errors); this moves the retained rows' share to value_weight
        return self.vf_coef * (self.value_weight - 1.0) * 0.5 * (out.value_errors * retained).sum() / errors.numel()

    @torch.no_grad()
    def end_phase(self) -> None:
        """Keep the top rows by refreshed priority (new batch and retained alike) for the next phase."""
        trainer = self.trainer
        experience = trainer.experience
        values, logprobs = self.refresh()
        ratio = (logprobs - experience.logprobs[:experience.rows]).exp()
        advantages, _ = trainer.estimate(values, ratio)
        priority = advantages.abs().sum(dim=1)
        ages = experience.ages[:experience.rows] + 1
        if self.max_age is not None:
            priority = torch.where(ages > self.max_age, float("-inf"), priority)
        keep = min(self.retained_rows, int(torch.isfinite(priority).sum()))
        rows = torch.topk(priority, keep).indices
        experience.retain(rows, values[rows], ratio[rows], ages[rows])

    def refresh(self) -> tuple[Tensor, Tensor]:
        """Values and log-probs of the behaviour actions for every active row under the current
        policy, from each row's LSTM start state, in minibatch-sized chunks."""
        trainer = self.trainer
        experience, policy = trainer.experience, trainer.policy
        n = experience.rows
        values = torch.empty(n, experience.horizon, device=experience.values.device)
        logprobs = torch.empty_like(values)
        for start in range(0, n, self.chunk_rows):
            rows = slice(start, min(n, start + self.chunk_rows))
            state = (experience.lstm_h[rows], experience.lstm_c[rows]) if policy.recurrent else None
            with trainer.precision():
                logits, values[rows] = policy.sequence(experience.obs[rows], state)
            logprobs[rows] = policy.actor.evaluate(logits, experience.actions[rows])[0]
        return values, logprobs

    def metrics(self) -> dict[str, float]:
        experience = self.trainer.experience
        ages = experience.ages[experience.segments:experience.rows].float()
        retained = {"replay_rows": float(experience.retained),
                    "replay_age_mean": float(ages.mean()) if len(ages) else 0.0,
                    "replay_age_max": float(ages.max()) if len(ages) else 0.0}
        return {**{f"replay_{key}": value for key, value in self.stats.read().items()}, **retained}

    def state_dict(self) -> dict[str, Any]:
        return {"retained": self.trainer.experience.retained_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "retained" in state:
            self.trainer.experience.load_retained_state(state["retained"])
