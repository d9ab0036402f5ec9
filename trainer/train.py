"""PPO with the puff advantage and prioritized segment sampling, as DOMAIN.md §1 and §3 write it.

`Trainer.evaluate` fills the segment buffer (one row = `horizon` consecutive steps of one
agent); `Trainer.train` runs the minibatch updates, writing each minibatch's fresh importance
ratios back so later minibatches' advantages use them. An algorithm (trainer/algorithms/)
plugs in at fixed seams: extra policy inputs and reward shaping while collecting, an extra loss
term per minibatch, rows kept for the next phase, its own metrics and checkpointed state.
trainer/run.py drives them epoch by epoch with events, checkpoints, signals and failure handling.
"""

from __future__ import annotations

import contextlib
import math
import os
import pickle
import random
from typing import Any

import cloudpickle
import numpy as np
import torch
from torch import Tensor, nn

from trainer import advantage, algorithms, allocator, losses, sampler
from trainer.algorithms import Minibatch, Outputs
from trainer.distributed import Group
from trainer.experience import Experience
from trainer.optim import learning_rate, make_optimizer
from trainer.policy import Policy
from trainer.profiler import Profiler


class Diverged(RuntimeError):
    """Training produced non-finite numbers (losses, weights or policy outputs)."""


LOSS_KEYS = ("policy_loss", "value_loss", "entropy", "old_approx_kl", "approx_kl", "clipfrac",
             "importance", "explained_variance")
CHECKED_LOSSES = ("policy_loss", "value_loss", "entropy", "approx_kl")


def select_device(requested: str) -> torch.device:
    """`auto` -> CUDA when available, else CPU."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def _deterministic_algorithms() -> None:
    """torch.use_deterministic_algorithms(True, warn_only=True) without the import of
    torch._inductor it does first, to set a torch.compile option: about 2 s of CPU at every
    start, and the trainer does not compile."""
    setter = getattr(torch._C, "_set_deterministic_algorithms", None)
    if setter is None:
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        setter(True, warn_only=True)


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed python, numpy and torch; make torch deterministic if asked."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        _deterministic_algorithms()
        # Deterministic without it (torch's docs): the NaN fill of every torch.empty was a
        # fifth of the LSTM's training phase.
        torch.utils.deterministic.fill_uninitialized_memory = False
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


class Trainer:
    """The environments, the policy, the segment buffer and the optimizer of one run."""

    def __init__(self, config: dict, device: torch.device | str = "cpu",
                 profiler: Profiler | None = None, group: Group | None = None) -> None:
        from trainer import envs as envs_module

        self.config = config
        self.device = torch.device(device)
        allocator.keep_freed_memory()  # each minibatch's tensors reuse the last one's pages
        self.group = group or Group()
        env_cfg, policy_cfg, train_cfg = config["env"], config["policy"], config["train"]
        self.train_cfg = train_cfg
        seed_everything(train_cfg["seed"], train_cfg["torch_deterministic"])
        self.envs = envs_module.make(env_cfg["name"], env_cfg["num_envs"], train_cfg["seed"],
                                     **env_cfg["kwargs"])
        self.num_envs = env_cfg["num_envs"]
        self.horizon = train_cfg["bptt_horizon"]
        self.batch_size = train_cfg["batch_size"]
        self.segments = self.batch_size // self.horizon
        self.rows_per_env = self.segments // self.num_envs
        self.steps_per_epoch = self.batch_size * self.group.world_size  # every rank collects a batch
        self.total_epochs = math.ceil(train_cfg["total_timesteps"] / self.steps_per_epoch)
        self.reward_clip = env_cfg["reward_clip"]
        self.gamma = train_cfg["gamma"]
        self.bfloat16 = train_cfg["precision"] == "bfloat16"

        self.algorithm = algorithms.build(config, num_envs=self.num_envs, segments=self.segments,
                                          device=self.device)
        obs_size = self.envs.obs_size + self.algorithm.extra_obs_size
        self.policy = Policy(obs_size, self.envs.single_action_space,
                             policy_cfg["hidden_size"], policy_cfg["num_layers"],
                             policy_cfg["activation"], policy_cfg["lstm"],
                             policy_cfg["lstm_hidden_size"]).to(self.device)
        self.action_space = self.envs.single_action_space
        action_shape, action_dtype = self._action_layout()
        self.box_actions = action_dtype == torch.float32
        self.experience = Experience(
            self.segments, self.horizon, obs_size, action_shape, action_dtype,
            policy_cfg["lstm_hidden_size"] if policy_cfg["lstm"] else None, self.device,
            retained_rows=self.algorithm.retained_rows)
        self.profiler = profiler or Profiler()
        self.algorithm.attach(self)
        self.learner = nn.ModuleList([self.policy, *self.algorithm.modules()])
        self.group.broadcast_parameters(self.learner)
        self.optimizer = make_optimizer(self.learner, train_cfg)

        self.epoch = 0
        self.agent_steps = 0
        self.next_obs = self.envs.reset(seed=train_cfg["seed"])
        self.next_rewards = torch.zeros(self.num_envs, device=self.device)
        self.next_terminations = torch.zeros(self.num_envs, device=self.device)
        self.next_truncations = torch.zeros(self.num_envs, device=self.device)
        self.next_first = torch.zeros(self.num_envs, device=self.device)  # terminations | truncations
        self.state = self.policy.initial_state(self.num_envs, self.device)
        self.envs_unsaved: str | None = None  # why the last checkpoint could not hold the envs

    def precision(self) -> contextlib.AbstractContextManager:
        """Autocast for the policy's forward passes: bfloat16 matmuls when train.precision asks."""
        if self.bfloat16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _action_layout(self) -> tuple[tuple[int, ...], torch.dtype]:
        from gymnasium import spaces

        space = self.action_space
        if isinstance(space, spaces.Discrete):
            return (), torch.int64
        if isinstance(space, spaces.MultiDiscrete):
            return (int(np.prod(space.nvec.shape)),), torch.int64
        return (int(np.prod(space.shape)),), torch.float32

    def _env_actions(self, actions: torch.Tensor) -> np.ndarray:
        """Actions as the env takes them (Box: reshaped and clipped to its bounds)."""
        actions = actions.cpu().numpy()
        if self.box_actions:
            actions = np.clip(actions.reshape(-1, *self.action_space.shape),
                              self.action_space.low, self.action_space.high)
        return actions

    @property
    def policy_params(self) -> int:
        return sum(p.numel() for p in self.policy.parameters())

    @torch.inference_mode()
    def evaluate(self) -> list[dict]:
        """Collect one batch: every agent fills `rows_per_env` rows of `horizon` steps.
        Returns the episode infos that finished."""
        profile, experience, policy, algorithm = self.profiler, self.experience, self.policy, self.algorithm
        episodes: list[dict] = []
        with profile.evaluate, self.precision():
            for row_block in range(self.rows_per_env):
                rows = slice(row_block * self.num_envs, (row_block + 1) * self.num_envs)
                if policy.recurrent:
                    experience.lstm_h[rows], experience.lstm_c[rows] = self.state
                for t in range(self.horizon):
                    with profile.evaluate_copy:
                        obs = torch.from_numpy(self.next_obs).to(self.device, non_blocking=True)
                        obs = algorithm.policy_inputs(obs, rows, self.next_first)
                    with profile.evaluate_forward:
                        hidden, self.state = policy.encode_step(obs, self.state)
                        logits, values = policy.heads(hidden)
                        actions, logprobs = policy.actor.sample(logits)
                    self.next_rewards = algorithm.shape_rewards(self.next_rewards, self.next_first, hidden, rows)
                    with profile.evaluate_copy:
                        experience.obs[rows, t] = obs
                        experience.actions[rows, t] = actions
                        experience.logprobs[rows, t] = logprobs
                        experience.values[rows, t] = values
                        experience.rewards[rows, t] = self.next_rewards
                        experience.terminations[rows, t] = self.next_terminations
                        experience.truncations[rows, t] = self.next_truncations
                        if t == 0 and row_block > 0:
                            self._store_bootstrap(slice(rows.start - self.num_envs, rows.start), values)
                        env_actions = self._env_actions(actions)
                    with profile.evaluate_env:
                        result = self.envs.step(env_actions)
                    self._receive(result, rows)
                    episodes.extend(result.episodes)
                algorithm.end_segment(rows)
            with profile.evaluate_forward:
                obs = algorithm.policy_inputs(torch.from_numpy(self.next_obs).to(self.device), rows, None)
                _, values, _ = policy.step(obs, self.state)
            self._store_bootstrap(rows, values)
        if not (torch.isfinite(experience.logprobs).all() and torch.isfinite(experience.values).all()):
            raise Diverged(f"non-finite policy outputs while collecting epoch {self.epoch + 1}")
        self.agent_steps += self.steps_per_epoch
        return episodes

    def _receive(self, result, rows: slice) -> None:
        """Take a step's rewards and dones: clamp rewards, and on a truncation add
        gamma * V(final_obs) so the cut episode is bootstrapped (terminations are not)."""
        rewards = torch.from_numpy(result.rewards).to(self.device, copy=True)
        if self.reward_clip is not None:
            rewards.clamp_(-self.reward_clip, self.reward_clip)
        if result.truncations.any():
            cut_envs = np.flatnonzero(result.truncations)
            truncated = torch.from_numpy(cut_envs).to(self.device)
            final_obs = torch.from_numpy(result.final_obs[cut_envs]).to(self.device)
            final_obs = self.algorithm.policy_inputs(final_obs, truncated + rows.start, None)
            state = None if self.state is None else (self.state[0][truncated], self.state[1][truncated])
            _, final_values, _ = self.policy.step(final_obs, state)
            rewards[truncated] += self.gamma * final_values
        self.next_obs = result.obs
        self.next_rewards = rewards
        self.next_terminations = torch.from_numpy(result.terminations).to(self.device, torch.float32)
        self.next_truncations = torch.from_numpy(result.truncations).to(self.device, torch.float32)
        self.next_first = torch.maximum(self.next_terminations, self.next_truncations)

    def _store_bootstrap(self, rows: slice, values: torch.Tensor) -> None:
        """The step after `rows`' last column: its reward and done, and the value of its obs."""
        experience = self.experience
        experience.next_rewards[rows] = self.next_rewards
        experience.next_values[rows] = values
        experience.next_dones[rows] = self.next_first

    def estimate(self, values: Tensor, importance: Tensor) -> tuple[Tensor, Tensor]:
        """(advantages, returns) of the active rows under `values` and importance ratios `importance`."""
        cfg, experience = self.train_cfg, self.experience
        return advantage.compute(
            values, experience.rewards[:experience.rows], experience.dones, importance,
            estimator=cfg["advantage"], gamma=cfg["gamma"], gae_lambda=cfg["gae_lambda"],
            rho_clip=cfg["vtrace_rho_clip"], c_clip=cfg["vtrace_c_clip"], pg_rho_clip=cfg["vtrace_pg_rho_clip"],
            bootstrap=experience.bootstrap())

    def train(self) -> dict[str, float]:
        """One training phase over the batch just collected (and any rows kept from earlier
        phases); returns the mean losses, the diagnostics and the algorithm's metrics."""
        cfg, profile, experience, policy = self.train_cfg, self.profiler, self.experience, self.policy
        # this epoch's place on the schedules, counted in steps: a resume on another number of
        # ranks changes the steps per epoch (the same as self.epoch otherwise)
        scheduled = max(self.agent_steps // self.steps_per_epoch - 1, 0)
        self.optimizer.set_lr(learning_rate(cfg, scheduled, self.total_epochs))
        beta = sampler.beta_at(scheduled / max(self.total_epochs - 1, 1), cfg["prio_beta0"])
        minibatch_rows = cfg["minibatch_size"] // self.horizon
        num_minibatches = cfg["update_epochs"] * experience.rows // minibatch_rows
        if experience.capacity > experience.segments:  # the same count on every rank: after a resume on more
            num_minibatches = self.group.minimum(num_minibatches)  # ranks, only some hold retained rows
        values = experience.values[:experience.rows]
        importance = experience.start_phase()
        totals = {key: torch.zeros((), device=self.device) for key in (*LOSS_KEYS[:-1], "grad_norm")}
        with profile.train:
            for _ in range(num_minibatches):
                with profile.train_learn:
                    advantages, returns = self.estimate(values, importance)
                    idx, weights = sampler.sample(advantages, minibatch_rows, cfg["prio_alpha"], beta)
                with profile.train_copy:
                    batch = Minibatch(
                        rows=idx, obs=experience.obs[idx], actions=experience.actions[idx],
                        logprobs=experience.logprobs[idx], values=values[idx], advantages=advantages[idx],
                        returns=returns[idx], weights=weights, ages=experience.ages[idx],
                        state=(experience.lstm_h[idx], experience.lstm_c[idx]) if policy.recurrent else None)
                with profile.train_forward:
                    with self.precision():
                        logits, new_values = policy.sequence(batch.obs, batch.state)
                    new_logprobs, entropy = policy.actor.evaluate(logits, batch.actions)
                with profile.train_learn:
                    logratio = new_logprobs - batch.logprobs
                    ratio = logratio.exp()
                    importance[idx] = ratio.detach()
                    mb_advantages = batch.advantages
                    if cfg["norm_adv"]:
                        mb_advantages = (mb_advantages - mb_advantages.mean()) / (mb_advantages.std() + 1e-8)
                    mb_advantages = mb_advantages * weights[:, None]

                    pg_loss = losses.policy_loss(mb_advantages, ratio, cfg["clip_coef"])
                    value_errors = losses.value_errors(new_values, batch.values, batch.returns, cfg["vf_clip_coef"])
                    v_loss = losses.value_loss(value_errors)
                    entropy_loss = entropy.mean()
                    loss = pg_loss + cfg["vf_coef"] * v_loss - cfg["ent_coef"] * entropy_loss
                    extra = self.algorithm.loss(batch, Outputs(logits, new_values, new_logprobs, entropy, ratio,
                                                               value_errors, pg_loss, v_loss))
                    if extra is not None:
                        loss = loss + extra

                    self.optimizer.zero_grad()
                    loss.backward()
                    self.group.average_gradients(self.learner)
                    grad_norm = torch.nn.utils.clip_grad_norm_(self.learner.parameters(), cfg["max_grad_norm"])
                    self.optimizer.step()
                    self.group.updated(self.learner)

                    with torch.no_grad():
                        stats = losses.kl_stats(logratio, ratio, cfg["clip_coef"])
                        stats.update(policy_loss=pg_loss, value_loss=v_loss, entropy=entropy_loss, grad_norm=grad_norm)
                        for key, value in stats.items():
                            totals[key] += value.detach()
        self.epoch += 1
        mean = {key: float(value) / num_minibatches for key, value in totals.items()}
        mean["explained_variance"] = losses.explained_variance(values.flatten(), returns.flatten())
        # per-epoch diagnostics: grad_norm above (pre-clip), and the spread of the last estimates
        with torch.no_grad():
            spread = {**losses.summary(advantages, "advantage"), **losses.summary(returns, "return")}
        mean.update(zip(spread, torch.stack(list(spread.values())).tolist()))
        bad = [f"{key}={mean[key]}" for key in CHECKED_LOSSES if not math.isfinite(mean[key])]
        if not bad and not all(bool(torch.isfinite(p).all()) for p in self.learner.parameters()):
            bad = ["weights"]
        if bad:
            raise Diverged(f"non-finite {', '.join(bad)} in epoch {self.epoch}")
        self.algorithm.end_phase()
        mean.update(self.algorithm.metrics())
        return mean

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly from this epoch boundary: the state every
        rank shares (weights, optimizer, schedule) and this rank's own (`rank_state`)."""
        return {
            "epoch": self.epoch,
            "agent_steps": self.agent_steps,
            "policy": self.policy.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr": learning_rate(self.train_cfg, self.agent_steps // self.steps_per_epoch, self.total_epochs),
            **self.rank_state(),
            "config": self.config,
        }

    def rank_state(self) -> dict[str, Any]:
        """This rank's own state: its envs and their pending step, LSTM state, algorithm state, RNGs."""
        try:
            envs = cloudpickle.dumps(self.envs)
            self.envs_unsaved = None
        except Exception as error:  # noqa: BLE001 - some gymnasium envs hold unpicklable handles
            envs = None
            self.envs_unsaved = f"{type(error).__name__}: {error}".splitlines()[0]
        return {
            "envs": envs,
            "next_obs": np.array(self.next_obs, copy=True),
            "next_rewards": self.next_rewards.cpu(),
            "next_terminations": self.next_terminations.cpu(),
            "next_truncations": self.next_truncations.cpu(),
            "lstm_state": None if self.state is None else tuple(s.cpu() for s in self.state),
            "algorithm": self.algorithm.state_dict(),
            "rng": {
                "python": random.getstate(),
                "numpy": np.random.get_state(),
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> bool:
        """Restore a checkpoint; returns whether this rank's env state was restored too (exact
        resume). Rank r > 0 takes its own state from `state["ranks"][r]`; a rank the checkpoint
        has none for (more ranks than it was written by) keeps its fresh envs and seeds."""
        self.epoch, self.agent_steps = state["epoch"], state["agent_steps"]
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        own = state if self.group.rank == 0 else state.get("ranks", {}).get(self.group.rank)
        if own is not None:
            self.algorithm.load_state_dict(own.get("algorithm", {}))
        self.group.broadcast_parameters(self.learner)  # a fresh rank's algorithm modules too
        if own is None:
            return False
        exact = own["envs"] is not None
        if exact:
            self.envs.close()
            self.envs = pickle.loads(own["envs"])
            self.next_obs = own["next_obs"]
            self.next_rewards = own["next_rewards"].to(self.device)
            self.next_terminations = own["next_terminations"].to(self.device)
            self.next_truncations = own["next_truncations"].to(self.device)
            self.next_first = torch.maximum(self.next_terminations, self.next_truncations)
            if own["lstm_state"] is not None:
                self.state = tuple(s.to(self.device) for s in own["lstm_state"])
        rng = own["rng"]
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        return exact

    def close(self) -> None:
        self.envs.close()
