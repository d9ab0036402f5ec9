"""PPO with the puff advantage and prioritized segment sampling, as DOMAIN.md §1 and §3 write it.

`Trainer.evaluate` fills the segment buffer (one row = `horizon` consecutive steps of one
agent); `Trainer.train` runs the minibatch updates, writing each minibatch's fresh importance
ratios back so later minibatches' advantages use them. trainer/run.py drives them epoch by
epoch with events, checkpoints, signals and failure handling.
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

from trainer import advantage, losses, sampler
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


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed python, numpy and torch; make torch deterministic if asked."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        # Deterministic without it (torch's docs): the NaN fill of every torch.empty was a
        # fifth of the LSTM's training phase.
        torch.utils.deterministic.fill_uninitialized_memory = False
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


class Trainer:
    """The environments, the policy, the segment buffer and the optimizer of one run."""

    def __init__(self, config: dict, device: torch.device | str = "cpu",
                 profiler: Profiler | None = None) -> None:
        from trainer import envs as envs_module

        self.config = config
        self.device = torch.device(device)
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
        self.total_epochs = math.ceil(train_cfg["total_timesteps"] / self.batch_size)
        self.reward_clip = env_cfg["reward_clip"]
        self.gamma = train_cfg["gamma"]
        self.bfloat16 = train_cfg["precision"] == "bfloat16"

        self.policy = Policy(self.envs.obs_size, self.envs.single_action_space,
                             policy_cfg["hidden_size"], policy_cfg["num_layers"],
                             policy_cfg["activation"], policy_cfg["lstm"],
                             policy_cfg["lstm_hidden_size"]).to(self.device)
        self.optimizer = make_optimizer(self.policy, train_cfg)
        self.action_space = self.envs.single_action_space
        action_shape, action_dtype = self._action_layout()
        self.box_actions = action_dtype == torch.float32
        self.experience = Experience(
            self.segments, self.horizon, self.envs.obs_size, action_shape, action_dtype,
            policy_cfg["lstm_hidden_size"] if policy_cfg["lstm"] else None, self.device)
        self.profiler = profiler or Profiler()

        self.epoch = 0
        self.agent_steps = 0
        self.next_obs = self.envs.reset(seed=train_cfg["seed"])
        self.next_rewards = torch.zeros(self.num_envs, device=self.device)
        self.next_terminations = torch.zeros(self.num_envs, device=self.device)
        self.next_truncations = torch.zeros(self.num_envs, device=self.device)
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
        profile, experience, policy = self.profiler, self.experience, self.policy
        episodes: list[dict] = []
        with profile.evaluate, self.precision():
            for row_block in range(self.rows_per_env):
                rows = slice(row_block * self.num_envs, (row_block + 1) * self.num_envs)
                if policy.recurrent:
                    experience.lstm_h[rows], experience.lstm_c[rows] = self.state
                for t in range(self.horizon):
                    with profile.evaluate_copy:
                        obs = torch.from_numpy(self.next_obs).to(self.device, non_blocking=True)
                    with profile.evaluate_forward:
                        logits, values, self.state = policy.step(obs, self.state)
                        actions, logprobs = policy.actor.sample(logits)
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
                    self._receive(result)
                    episodes.extend(result.episodes)
            with profile.evaluate_forward:
                _, values, _ = policy.step(torch.from_numpy(self.next_obs).to(self.device), self.state)
            self._store_bootstrap(rows, values)
        if not (torch.isfinite(experience.logprobs).all() and torch.isfinite(experience.values).all()):
            raise Diverged(f"non-finite policy outputs while collecting epoch {self.epoch + 1}")
        self.agent_steps += self.batch_size
        return episodes

    def _receive(self, result) -> None:
        """Take a step's rewards and dones: clamp rewards, and on a truncation add
        gamma * V(final_obs) so the cut episode is bootstrapped (terminations are not)."""
        rewards = torch.from_numpy(result.rewards).to(self.device, copy=True)
        if self.reward_clip is not None:
            rewards.clamp_(-self.reward_clip, self.reward_clip)
        if result.truncations.any():
            rows = np.flatnonzero(result.truncations)
            truncated = torch.from_numpy(rows).to(self.device)
            final_obs = torch.from_numpy(result.final_obs[rows]).to(self.device)
            state = None if self.state is None else (self.state[0][truncated], self.state[1][truncated])
            _, final_values, _ = self.policy.step(final_obs, state)
            rewards[truncated] += self.gamma * final_values
        self.next_obs = result.obs
        self.next_rewards = rewards
        self.next_terminations = torch.from_numpy(result.terminations).to(self.device, torch.float32)
        self.next_truncations = torch.from_numpy(result.truncations).to(self.device, torch.float32)

    def _store_bootstrap(self, rows: slice, values: torch.Tensor) -> None:
        """The step after `rows`' last column: its reward and done, and the value of its obs."""
        experience = self.experience
        experience.next_rewards[rows] = self.next_rewards
        experience.next_values[rows] = values
        experience.next_dones[rows] = torch.maximum(self.next_terminations, self.next_truncations)

    def train(self) -> dict[str, float]:
        """One training phase over the batch just collected; returns the mean losses."""
        cfg, profile, experience, policy = self.train_cfg, self.profiler, self.experience, self.policy
        self.optimizer.set_lr(learning_rate(cfg, self.epoch, self.total_epochs))
        beta = sampler.beta_at(self.epoch / max(self.total_epochs - 1, 1), cfg["prio_beta0"])
        minibatch_rows = cfg["minibatch_size"] // self.horizon
        num_minibatches = cfg["update_epochs"] * self.batch_size // cfg["minibatch_size"]
        values, rewards, dones = experience.values, experience.rewards, experience.dones
        bootstrap = experience.bootstrap()
        importance = torch.ones_like(values)
        totals = {key: torch.zeros((), device=self.device) for key in LOSS_KEYS[:-1]}
        with profile.train:
            for _ in range(num_minibatches):
                with profile.train_learn:
                    advantages, returns = advantage.compute(
                        values, rewards, dones, importance, estimator=cfg["advantage"],
                        gamma=cfg["gamma"], gae_lambda=cfg["gae_lambda"],
                        rho_clip=cfg["vtrace_rho_clip"], c_clip=cfg["vtrace_c_clip"],
                        bootstrap=bootstrap)
                    idx, weights = sampler.sample(advantages, minibatch_rows, cfg["prio_alpha"], beta)
                with profile.train_copy:
                    obs = experience.obs[idx]
                    actions = experience.actions[idx]
                    old_logprobs = experience.logprobs[idx]
                    old_values = values[idx]
                    mb_advantages = advantages[idx]
                    mb_returns = returns[idx]
                    state = None
                    if policy.recurrent:
                        state = (experience.lstm_h[idx], experience.lstm_c[idx])
                with profile.train_forward:
                    with self.precision():
                        logits, new_values = policy.sequence(obs, state)
                    new_logprobs, entropy = policy.actor.evaluate(logits, actions)
                with profile.train_learn:
                    logratio = new_logprobs - old_logprobs
                    ratio = logratio.exp()
                    importance[idx] = ratio.detach()
                    if cfg["norm_adv"]:
                        mb_advantages = (mb_advantages - mb_advantages.mean()) / (mb_advantages.std() + 1e-8)
                    mb_advantages = mb_advantages * weights[:, None]

                    pg_loss = losses.policy_loss(mb_advantages, ratio, cfg["clip_coef"])
                    v_loss = losses.value_loss(new_values, old_values, mb_returns, cfg["vf_clip_coef"])
                    entropy_loss = entropy.mean()
                    loss = pg_loss + cfg["vf_coef"] * v_loss - cfg["ent_coef"] * entropy_loss

                    self.optimizer.zero_grad()
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg["max_grad_norm"])
                    self.optimizer.step()

                    with torch.no_grad():
                        stats = losses.kl_stats(logratio, ratio, cfg["clip_coef"])
                        stats.update(policy_loss=pg_loss, value_loss=v_loss, entropy=entropy_loss)
                        for key, value in stats.items():
                            totals[key] += value.detach()
        self.epoch += 1
        mean = {key: float(value) / num_minibatches for key, value in totals.items()}
        mean["explained_variance"] = losses.explained_variance(values.flatten(), returns.flatten())
        bad = [f"{key}={mean[key]}" for key in CHECKED_LOSSES if not math.isfinite(mean[key])]
        if not bad and not all(bool(torch.isfinite(p).all()) for p in policy.parameters()):
            bad = ["weights"]
        if bad:
            raise Diverged(f"non-finite {', '.join(bad)} in epoch {self.epoch}")
        return mean

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly from this epoch boundary."""
        try:
            envs = cloudpickle.dumps(self.envs)
            self.envs_unsaved = None
        except Exception as error:  # noqa: BLE001 - some gymnasium envs hold unpicklable handles
            envs = None
            self.envs_unsaved = f"{type(error).__name__}: {error}".splitlines()[0]
        return {
            "epoch": self.epoch,
            "agent_steps": self.agent_steps,
            "policy": self.policy.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr": learning_rate(self.train_cfg, self.epoch, self.total_epochs),
            "envs": envs,
            "next_obs": np.array(self.next_obs, copy=True),
            "next_rewards": self.next_rewards.cpu(),
            "next_terminations": self.next_terminations.cpu(),
            "next_truncations": self.next_truncations.cpu(),
            "lstm_state": None if self.state is None else tuple(s.cpu() for s in self.state),
            "rng": {
                "python": random.getstate(),
                "numpy": np.random.get_state(),
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            },
            "config": self.config,
        }

    def load_state_dict(self, state: dict[str, Any]) -> bool:
        """Restore a checkpoint; returns whether the env state was restored too (exact resume)."""
        self.epoch, self.agent_steps = state["epoch"], state["agent_steps"]
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        exact = state["envs"] is not None
        if exact:
            self.envs.close()
            self.envs = pickle.loads(state["envs"])
            self.next_obs = state["next_obs"]
            self.next_rewards = state["next_rewards"].to(self.device)
            self.next_terminations = state["next_terminations"].to(self.device)
            self.next_truncations = state["next_truncations"].to(self.device)
            if state["lstm_state"] is not None:
                self.state = tuple(s.to(self.device) for s in state["lstm_state"])
        rng = state["rng"]
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        return exact

    def close(self) -> None:
        self.envs.close()
