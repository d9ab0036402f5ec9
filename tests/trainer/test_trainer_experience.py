"""The segment buffer's layout (DOMAIN.md §1), bootstraps, truncation handling, ratio
write-back and seeds, on real environments."""

import numpy as np
import pytest
import torch

from trainer import advantage, config, sampler
from trainer.train import Trainer


def make(overrides):
    torch.set_num_threads(1)
    return Trainer(config.resolve(overrides))


class Recorder:
    """Wraps a real VecEnv and keeps a copy of every StepResult."""

    def __init__(self, envs):
        self.envs, self.results = envs, []

    def __getattr__(self, name):
        return getattr(self.envs, name)

    def step(self, actions):
        result = self.envs.step(actions)
        self.results.append({k: None if v is None else np.array(v, copy=True)
                             for k, v in vars(result).items() if k != "episodes"})
        return result


def test_columns_hold_obs_action_and_the_reward_that_arrived_with_the_obs():
    trainer = make({"env": {"name": "puffer:memory", "num_envs": 8, "kwargs": {"length": 1}},
                    "train": {"bptt_horizon": 12, "minibatch_size": 96}})
    trainer.evaluate()
    trainer.evaluate()  # second epoch: every column follows earlier steps
    exp = trainer.experience
    cue = exp.obs[..., :2].sum(-1) == 1  # a cue obs is the first obs of an episode
    assert torch.equal(exp.terminations.bool(), cue)
    assert torch.equal(exp.rewards != 0, cue)  # reward only at the step that ended the episode
    assert int(exp.truncations.sum()) == 0
    for row in range(8):
        for t in range(3, 12):
            if cue[row, t] and cue[row, t - 3]:
                shown = int(exp.obs[row, t - 3, :2].argmax())
                expected = 1.0 if int(exp.actions[row, t - 1]) == shown else -1.0
                assert exp.rewards[row, t].item() == expected  # terminations are not bootstrapped


def test_bootstrap_is_the_step_after_each_rows_last_column():
    trainer = make({"env": {"name": "gym:CartPole-v1", "num_envs": 4},
                    "train": {"bptt_horizon": 8, "batch_size": 64, "minibatch_size": 64}})
    assert trainer.rows_per_env == 2
    trainer.evaluate()
    exp = trainer.experience
    first, second = slice(0, 4), slice(4, 8)  # row block 0 then 1 of the same four agents
    assert torch.equal(exp.next_rewards[first], exp.rewards[second, 0])
    assert torch.equal(exp.next_dones[first], exp.dones[second, 0])
    assert torch.equal(exp.next_values[first], exp.values[second, 0])
    last = (exp.next_rewards[second].clone(), exp.next_values[second].clone(), exp.next_dones[second].clone())
    trainer.evaluate()  # no training in between: the same policy values the same obs
    assert torch.equal(last[0], exp.rewards[first, 0])
    assert torch.allclose(last[1], exp.values[first, 0], atol=1e-6)
    assert torch.equal(last[2], exp.dones[first, 0])


def test_truncated_episodes_are_bootstrapped_with_the_value_of_their_final_obs():
    gamma = 0.9
    trainer = make({"env": {"name": "puffer:maze", "num_envs": 4, "kwargs": {"size": 6, "max_steps": 3}},
                    "train": {"bptt_horizon": 8, "minibatch_size": 32, "gamma": gamma}})
    trainer.envs = Recorder(trainer.envs)
    trainer.evaluate()
    exp = trainer.experience
    assert int(exp.terminations.sum()) == 0 and int(exp.truncations.sum()) > 0
    with torch.no_grad():
        for t, result in enumerate(trainer.envs.results[:-1]):
            column = t + 1  # the step's reward arrives with the next obs
            for row in np.flatnonzero(result["truncations"]):
                _, value, _ = trainer.policy.step(torch.from_numpy(result["final_obs"][row : row + 1]), None)
                assert exp.rewards[row, column].item() == pytest.approx(gamma * value.item(), abs=1e-6)
            for row in np.flatnonzero(~result["truncations"]):
                assert exp.rewards[row, column].item() == 0.0


@pytest.mark.parametrize("lstm", [False, True])
@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_first_minibatch_reproduces_the_behaviour_logprobs(lstm, precision):
    trainer = make({"env": {"name": "puffer:memory", "num_envs": 8},
                    "policy": {"lstm": lstm, "hidden_size": 16, "lstm_hidden_size": 16},
                    "train": {"bptt_horizon": 16, "minibatch_size": 128, "precision": precision}})
    trainer.evaluate()
    stats = trainer.train()
    assert stats["importance"] == pytest.approx(1.0, abs=1e-5)
    assert abs(stats["old_approx_kl"]) < 1e-5


def test_each_minibatch_writes_its_ratios_back_for_the_next_advantages(monkeypatch):
    trainer = make({"env": {"name": "gym:CartPole-v1", "num_envs": 16},
                    "train": {"bptt_horizon": 8, "minibatch_size": 32, "update_epochs": 3,
                              "optimizer": "adam", "learning_rate": 0.05}})
    seen_importance, sampled = [], []
    real_compute, real_sample = advantage.compute, sampler.sample

    def compute(values, rewards, dones, importance=None, **kwargs):
        seen_importance.append(importance.clone())
        return real_compute(values, rewards, dones, importance, **kwargs)

    def sample(advantages, rows, alpha, beta):
        idx, weights = real_sample(advantages, rows, alpha, beta)
        sampled.append(idx.clone())
        return idx, weights

    monkeypatch.setattr(advantage, "compute", compute)
    monkeypatch.setattr(sampler, "sample", sample)
    trainer.evaluate()
    trainer.train()
    assert len(seen_importance) == 3 * 128 // 32
    assert torch.equal(seen_importance[0], torch.ones(16, 8))  # w starts at 1 each phase
    for k in range(1, len(seen_importance)):
        changed = (seen_importance[k] != seen_importance[k - 1]).any(dim=1).nonzero().flatten()
        assert set(changed.tolist()) <= set(sampled[k - 1].tolist())  # only the last minibatch's rows
    assert (seen_importance[-1] != 1).any()  # later minibatches see ratios of an updated policy
    trainer.evaluate()
    trainer.train()
    assert torch.equal(seen_importance[12], torch.ones(16, 8))  # reset for the next phase


def test_same_seed_same_losses_different_seed_different():
    overrides = {"env": {"name": "gym:CartPole-v1", "num_envs": 16},
                 "train": {"bptt_horizon": 16, "minibatch_size": 128, "seed": 7}}

    def losses(overrides):
        trainer = make(overrides)
        out = []
        for _ in range(3):
            trainer.evaluate()
            out.append(trainer.train())
        return out

    first, second = losses(overrides), losses(overrides)
    assert first == second
    other = losses({**overrides, "train": {**overrides["train"], "seed": 8}})
    assert other != first


def test_box_actions_train_end_to_end_on_pendulum():
    trainer = make({"env": {"name": "gym:Pendulum-v1", "num_envs": 8}, "policy": {"hidden_size": 16},
                    "train": {"bptt_horizon": 16, "batch_size": 8 * 16 * 13, "minibatch_size": 128}})
    trainer.evaluate()  # 208 steps per env: every episode (200 steps) is truncated once
    exp = trainer.experience
    assert exp.actions.dtype == torch.float32 and exp.actions.shape == (8 * 13, 16, 1)
    assert int(exp.truncations.sum()) == 8 and int(exp.terminations.sum()) == 0
    stats = trainer.train()
    assert all(np.isfinite(stats[key]) for key in ("policy_loss", "value_loss", "entropy"))


@pytest.mark.parametrize("estimator", ["puff", "gae", "vtrace"])
@pytest.mark.parametrize("optimizer", ["adam", "muon"])
def test_every_estimator_and_optimizer_trains(estimator, optimizer):
    trainer = make({"env": {"name": "gym:CartPole-v1", "num_envs": 8},
                    "train": {"bptt_horizon": 8, "minibatch_size": 32, "advantage": estimator,
                              "norm_adv": estimator != "vtrace", "optimizer": optimizer}})
    before = [p.detach().clone() for p in trainer.policy.parameters()]
    for _ in range(2):
        trainer.evaluate()
        stats = trainer.train()
    assert all(np.isfinite(stats[key]) for key in ("policy_loss", "value_loss", "entropy", "approx_kl"))
    assert all(not torch.equal(a, b) for a, b in zip(before, trainer.policy.parameters()))
