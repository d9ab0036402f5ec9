"""DIAYN as streamed (DOMAIN.md §4): skills that a discriminator can tell apart from the policy's log-probs.

Each env acts under a skill `z` in `0..K-1` (`Skills`), drawn per segment (a buffer row; the
default, as streamed) or per episode; `one_hot(z)` joins the policy's input. A small
discriminator (`DIAYN`) reads a segment's policy log-probs, every `every`-th step, either only
the log-prob of the action taken (the default: given the whole distribution the task was
trivial), the full `log_softmax`, or (`rest`) the log-probs of the actions other than the
policy's greedy one, renormalised among themselves and sorted (a skill marked there leaves the
greedy action and its probability alone; unsorted, the skills were marked by which action is
greedy), and predicts the segment's `z`. It never sees the hidden
state, through which the policy could pass `z` along unshaped.

- `mode: loss`: the cross-entropy joins the PPO loss as `coef * loss`, with gradients flowing
  back through the log-probs into the policy (`stop_grad` cuts them: the control, which must
  stay at chance, `ln K`). The term is split in two with the same gradients: the discriminator
  learns from every segment (its input detached), and the policy is pushed through a detached
  copy of the discriminator only by segments still classified worse than `margin` (cross-entropy
  at least that: "enough is enough"), and only after the first `warmup` share of the run.
- `mode: reward`: the discriminator learns on its own (no gradient into the policy), and each
  step earns the classic `coef * (log q(z | segment so far) - log p(z)) / horizon`, the
  discriminator's belief in the true skill from the segment's steps up to that one.

A segment's label is the skill of its first step; with per-episode skills, the steps of a
segment that belong to a later skill are masked out of the discriminator's input.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from trainer.algorithms.base import Algorithm, Means, Minibatch, Outputs

if TYPE_CHECKING:
    from trainer.train import Trainer


class Skills:
    """The current skill of every env and when it changes; part of the checkpoint (z and the draws)."""

    def __init__(self, num_envs: int, archive: int, per: str = "segment", seed: int = 0,
                 device: torch.device | str = "cpu") -> None:
        if archive < 1:
            raise ValueError(f"diayn_archive must be >= 1, got {archive}")
        if per not in ("segment", "episode"):
            raise ValueError(f"diayn skills are drawn per 'segment' or per 'episode', not {per!r}")
        self.num_envs, self.archive, self.per, self.device = num_envs, archive, per, torch.device(device)
        self.generator = torch.Generator().manual_seed(seed)
        self.z = self._draw(num_envs)

    def _draw(self, n: int) -> Tensor:
        return torch.randint(self.archive, (n,), generator=self.generator).to(self.device)

    def start_segment(self) -> None:
        """A new buffer row begins for every env: per-segment skills are redrawn."""
        if self.per == "segment":
            self.z = self._draw(self.num_envs)

    def end_episodes(self, done: Tensor) -> None:
        """Episodes ended in the envs `done` ([num_envs] bool): per-episode skills are redrawn there."""
        if self.per == "episode" and bool(done.any()):
            z = self.z.clone()
            z[done] = self._draw(int(done.sum()))
            self.z = z

    def inputs(self) -> Tensor:
        """`one_hot(z)` [num_envs, K] float, the policy's extra input."""
        return nn.functional.one_hot(self.z, self.archive).float()

    def state_dict(self) -> dict:
        return {"z": self.z.cpu(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.z = state["z"].to(self.device)
        self.generator.set_state(state["generator"])


class DIAYN(nn.Module):
    """The discriminator q(z | segment log-probs) and its loss, accuracy and reward."""

    def __init__(self, archive: int, horizon: int, *, n_actions: int = 1, every: int = 1, features: str = "taken",
                 mode: str = "loss", stop_grad: bool = False, margin: float = 0.0, pool: str = "flat",
                 hidden: int = 64) -> None:
        super().__init__()
        if features not in ("taken", "full", "rest"):
            raise ValueError(f"diayn_features is 'taken', 'full' or 'rest', not {features!r}")
        if mode not in ("loss", "reward"):
            raise ValueError(f"diayn_mode is 'loss' or 'reward', not {mode!r}")
        if every < 1:
            raise ValueError(f"diayn_every must be >= 1, got {every}")
        if margin < 0:
            raise ValueError(f"diayn_margin must be >= 0, got {margin}")
        if pool not in ("flat", "sum", "entropy"):
            raise ValueError(f"diayn_pool is 'flat', 'sum' or 'entropy', not {pool!r}")
        self.archive, self.every, self.features, self.mode, self.margin, self.pool = archive, every, features, mode, margin, pool
        self.stop_grad = stop_grad or mode == "reward"
        width = {"taken": 1, "full": n_actions, "rest": n_actions - 1}[features]
        steps = len(range(0, horizon, every)) if pool == "flat" else 1
        self.net = nn.Sequential(nn.Linear(steps * width, hidden), nn.GELU(), nn.Linear(hidden, archive))

    def inputs(self, logprobs: Tensor, logits: Tensor | None, skills: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The discriminator's input [B, steps, width] (zeros at steps of a later skill), the weight
        of each step [B, steps] (0 or 1; with `entropy`, the policy's entropy there over its
        maximum, detached) and labels [B] from a batch of segments: taken-action `logprobs` [B, T],
        policy `logits` [B, T, A] (for `full`, `rest`), `skills` [B, T]."""
        labels = skills[:, 0]
        keep = (skills == labels[:, None])[:, :: self.every].float()
        if self.features == "taken":
            seen = logprobs.unsqueeze(-1)
        elif self.features == "full":
            seen = torch.log_softmax(logits.float(), dim=-1)
        else:
            greedy = nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).bool()
            rest = torch.log_softmax(logits.float().masked_fill(greedy, -math.inf), dim=-1)
            seen = rest.sort(dim=-1, descending=True).values[..., :-1]  # which action is which would tell the greedy one
        if self.stop_grad:
            seen = seen.detach()
        seen = seen[:, :: self.every].float() * keep.unsqueeze(-1)
        if self.pool == "entropy":
            log_p = torch.log_softmax(logits.detach().float()[:, :: self.every], dim=-1)
            keep = keep * -(log_p.exp() * log_p).sum(-1) / math.log(logits.shape[-1])
        return seen, keep, labels

    def scores(self, x: Tensor, keep: Tensor, params: dict[str, Tensor] | None = None) -> Tensor:
        """Unnormalised log q(z | segment) [B, K]: one net over the whole segment (`flat`), or
        (`sum`) one net per step whose outputs add up over the kept steps, each step's evidence
        weighed alike (naive Bayes), so a small mark repeated over the segment adds up; `entropy`
        weighs each step by how undecided the policy is there, where a mark costs the least."""
        net = self.net if params is None else lambda v: torch.func.functional_call(self.net, params, (v,))
        if self.pool == "flat":
            return net(x.flatten(1))
        return (net(x) * keep.unsqueeze(-1)).sum(1)

    def loss(self, logprobs: Tensor, logits: Tensor | None, skills: Tensor, push: float = 1.0) -> tuple[Tensor, dict[str, Tensor]]:
        """Cross-entropy of predicting each segment's skill, and its stats (loss, accuracy, chance 1/K)
        as detached tensors. The discriminator learns from all segments; the policy's gradient is
        `push` times that of the segments whose cross-entropy is at least `margin` (all when 0). With
        one skill there is nothing to tell apart: the loss is 0 and accuracy is chance, 1."""
        chance = logprobs.new_tensor(1.0 / self.archive)
        if self.archive == 1:
            zero = logprobs.new_zeros(())
            return zero, {"diayn_loss": zero, "diayn_accuracy": chance, "diayn_chance": chance, "diayn_pushed": zero}
        x, keep, labels = self.inputs(logprobs, logits, skills)
        scores = self.scores(x.detach(), keep)
        loss = nn.functional.cross_entropy(scores, labels)
        accuracy = (scores.argmax(-1) == labels).float().mean()
        stats = {"diayn_loss": loss.detach(), "diayn_accuracy": accuracy, "diayn_chance": chance,
                 "diayn_pushed": chance.new_zeros(())}
        if self.stop_grad or push == 0:
            return loss, stats
        frozen = {name: p.detach() for name, p in self.net.named_parameters()}
        ce = nn.functional.cross_entropy(self.scores(x, keep, frozen), labels, reduction="none")
        pushed = ce >= self.margin
        stats["diayn_pushed"] = pushed.float().mean()
        return loss + push * (ce * pushed).mean(), stats

    @torch.no_grad()
    def bonus(self, logprobs: Tensor, logits: Tensor | None, skills: Tensor) -> Tensor:
        """The classic reward `log q(z | segment) - log p(z)` [B] of each segment (steps not yet
        taken are given a skill other than the first step's: only steps with its skill count)."""
        if self.archive == 1:
            return logprobs.new_zeros(logprobs.shape[0])
        x, keep, labels = self.inputs(logprobs, logits, skills)
        log_q = torch.log_softmax(self.scores(x, keep), dim=-1).gather(1, labels[:, None]).squeeze(1)
        return log_q + math.log(self.archive)


class DiaynSkills(Algorithm):
    """DIAYN in the loop: `one_hot(z)` appended to the policy's input, the discriminator's loss
    (or reward) from each minibatch's log-probs, the skills in the checkpoint.

    Keys (train section): `diayn_coef` (> 0 enables it), `diayn_archive` (K), `diayn_skills`
    (segment | episode), `diayn_every`, `diayn_features` (taken | full | rest), `diayn_mode`
    (loss | reward), `diayn_stop_grad` (the control), `diayn_pool` (flat | sum | entropy),
    `diayn_margin` (the policy is pushed only by segments whose cross-entropy is at least this),
    `diayn_warmup` (share of total_timesteps before the policy is pushed at all). Metrics: diayn_loss, diayn_accuracy, diayn_chance (1/K),
    diayn_pushed (share of segments pushing the policy).
    """

    @classmethod
    def enabled(cls, config: dict) -> bool:
        return config["train"]["diayn_coef"] > 0

    def __init__(self, config: dict, *, num_envs: int, segments: int, device: torch.device) -> None:
        train = config["train"]
        self.archive = train["diayn_archive"]
        self.extra_obs_size = self.archive
        self.coef, self.mode, self.horizon, self.num_envs = train["diayn_coef"], train["diayn_mode"], train["bptt_horizon"], num_envs
        self.settings = {"every": train["diayn_every"], "features": train["diayn_features"], "mode": self.mode,
                         "stop_grad": train["diayn_stop_grad"], "margin": train["diayn_margin"],
                         "pool": train["diayn_pool"]}
        self.warmup_steps = train["diayn_warmup"] * train["total_timesteps"]
        self.skills = Skills(num_envs, self.archive, train["diayn_skills"], seed=train["seed"], device=device)
        self.discriminator: DIAYN | None = None
        self.offset = 0
        self.t = 0
        self.stats = Means()
        self.trainer: Trainer | None = None

    def attach(self, trainer: Trainer) -> None:
        from gymnasium import spaces

        self.trainer = trainer
        self.offset = trainer.envs.obs_size  # one_hot(z) is the first extra input (see the registry's order)
        space = trainer.envs.single_action_space
        if self.settings["features"] == "full" and not isinstance(space, (spaces.Discrete, spaces.MultiDiscrete)):
            raise ValueError("diayn_features: full needs a Discrete or MultiDiscrete action space")
        if self.settings["features"] == "rest" and not isinstance(space, spaces.Discrete):
            raise ValueError("diayn_features: rest needs a Discrete action space")
        n_actions = int(space.n) if isinstance(space, spaces.Discrete) else int(sum(getattr(space, "nvec", [1])))
        self.discriminator = DIAYN(self.archive, self.horizon, n_actions=n_actions, **self.settings).to(trainer.device)

    def modules(self) -> list[nn.Module]:
        return [self.discriminator]

    def policy_inputs(self, obs: Tensor, rows: Any, first: Tensor | None) -> Tensor:
        if first is not None:  # one collected step: a new segment every `horizon` steps, episodes may start
            if self.t == 0:
                self.skills.start_segment()
            self.skills.end_episodes(first.bool())
            self.t = (self.t + 1) % self.horizon
            z = self.skills.z
        else:  # an extra forward of some rows (row r belongs to env r % num_envs)
            envs = torch.arange(rows.start, rows.stop) if isinstance(rows, slice) else rows
            z = self.skills.z[envs.to(self.skills.z.device) % self.num_envs]
        return torch.cat([obs, nn.functional.one_hot(z, self.archive).to(obs.dtype)], dim=-1)

    def segment_skills(self, obs: Tensor) -> Tensor:
        """The skill of every stored step [rows, T], read back from its one_hot(z) input."""
        return obs[..., self.offset:self.offset + self.archive].argmax(-1)

    def shape_rewards(self, rewards: Tensor, first: Tensor, hidden: Tensor, rows: slice) -> Tensor:
        t = (self.t - 1) % self.horizon  # the column being collected (policy_inputs already counted it)
        if self.mode != "reward" or t == 0:  # at t == 0 the reward belongs to the previous segment's last action
            return rewards
        experience = self.trainer.experience
        logprobs = torch.zeros(self.num_envs, self.horizon, device=rewards.device)
        logprobs[:, :t] = experience.logprobs[rows, :t]
        skills = torch.empty(self.num_envs, self.horizon, dtype=torch.long, device=rewards.device)
        skills[:, :t] = self.segment_skills(experience.obs[rows, :t])
        skills[:, t:] = (skills[:, :1] + 1) % self.archive  # steps not yet taken: no pool counts them
        bonus = self.discriminator.bonus(logprobs, None, skills)
        self.stats.add("diayn_reward", bonus.sum(), bonus.numel())
        return rewards + self.coef * bonus / self.horizon

    def loss(self, batch: Minibatch, out: Outputs) -> Tensor | None:
        push = float(self.trainer.agent_steps >= self.warmup_steps)
        loss, stats = self.discriminator.loss(out.logprobs, out.logits, self.segment_skills(batch.obs), push)
        for key, value in stats.items():
            self.stats.add(key, value)
        return self.coef * loss if self.mode == "loss" else loss

    def metrics(self) -> dict[str, float]:
        return self.stats.read()

    def state_dict(self) -> dict[str, Any]:
        return {"skills": self.skills.state_dict(), "t": self.t, "discriminator": self.discriminator.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "skills" in state:
            self.skills.load_state_dict(state["skills"])
            self.t = state["t"]
            self.discriminator.load_state_dict(state["discriminator"])
