"""The algorithm seams (trainer/algorithms/base.py) driven by a small test algorithm through a
real Trainer: extra policy inputs, reward shaping, an extra loss term with its own module,
metrics and checkpointed state; and the no-op composition when nothing is enabled."""

import pytest
import torch
from torch import nn

from trainer import algorithms, config
from trainer.algorithms import Algorithm, Stack
from trainer.train import Trainer

CARTPOLE = {"env": {"name": "gym:CartPole-v1", "num_envs": 4},
            "train": {"bptt_horizon": 8, "batch_size": 64, "minibatch_size": 32, "optimizer": "adam"}}


class Probe(Algorithm):
    """Appends [row index, 1] to every observation, adds 0.5 to every reward, and trains a scalar
    towards the mean entropy; counts what it was given."""

    extra_obs_size = 2

    @classmethod
    def enabled(cls, config):
        return True

    def __init__(self, config, *, num_envs, segments, device):
        self.num_envs, self.device = num_envs, device
        self.collected = 0
        self.bootstrap_calls = 0
        self.minibatches = 0

    def attach(self, trainer):
        self.scale = nn.Linear(1, 1).to(trainer.device)

    def modules(self):
        return [self.scale]

    def policy_inputs(self, obs, rows, first):
        if first is None:
            self.bootstrap_calls += 1
        else:
            self.collected += 1
            assert first.shape == (self.num_envs,)
        index = torch.arange(rows.start, rows.stop) if isinstance(rows, slice) else rows
        return torch.cat([obs, index[:, None].float(), torch.ones(len(obs), 1)], dim=-1)

    def shape_rewards(self, rewards, first, hidden, rows):
        assert hidden.shape == (self.num_envs, 128) and not hidden.requires_grad
        return rewards + 0.5

    def loss(self, batch, out):
        self.minibatches += 1
        assert out.logprobs.shape == batch.advantages.shape and out.logprobs.requires_grad
        return (self.scale(out.entropy.detach().mean()[None]) ** 2).sum()

    def metrics(self):
        return {"probe_minibatches": float(self.minibatches)}

    def state_dict(self):
        return {"minibatches": self.minibatches, "scale": self.scale.state_dict()}

    def load_state_dict(self, state):
        self.minibatches = state["minibatches"]
        self.scale.load_state_dict(state["scale"])


@pytest.fixture
def probe(monkeypatch):
    monkeypatch.setattr(algorithms, "REGISTRY", (*algorithms.REGISTRY, Probe))


def make(overrides=CARTPOLE):
    torch.set_num_threads(1)
    return Trainer(config.resolve(overrides))


def test_every_seam_is_called_with_what_it_promises(probe):
    trainer = make()
    probe_ = trainer.algorithm
    assert isinstance(probe_, Probe) and trainer.policy.encoder[0].in_features == 4 + 2
    trainer.evaluate()
    exp = trainer.experience
    assert probe_.collected == 2 * 8  # once per collected step, two row blocks of eight
    assert probe_.bootstrap_calls == 1  # the obs after the last row block (no truncation in 16 steps)
    rows = torch.arange(8)[:, None].expand(8, 8).float()
    assert torch.equal(exp.obs[..., 4], rows) and (exp.obs[..., 5] == 1).all()  # stored, so training sees them
    assert (exp.rewards[:, 1:] == 1.5).all()  # CartPole pays 1 per step, shaped to 1.5
    before = probe_.scale.weight.clone()
    stats = trainer.train()
    assert probe_.minibatches == 2 and stats["probe_minibatches"] == 2.0
    assert not torch.equal(before, probe_.scale.weight)  # its module is in the optimizer
    state = trainer.state_dict()
    again = make()
    again.load_state_dict(state)
    assert again.algorithm.minibatches == 2 and torch.equal(again.algorithm.scale.weight, probe_.scale.weight)


def test_one_enabled_is_itself_and_several_are_a_stack(probe):
    one = algorithms.build(config.resolve(CARTPOLE), num_envs=4, segments=8, device=torch.device("cpu"))
    assert isinstance(one, Probe)
    both = algorithms.build(config.resolve({**CARTPOLE, "train": {**CARTPOLE["train"], "replay_factor": 0.5}}),
                            num_envs=4, segments=8, device=torch.device("cpu"))
    assert isinstance(both, Stack) and both.extra_obs_size == 2 and both.retained_rows == 4


def test_the_baseline_builds_the_no_op_algorithm_and_logs_the_diagnostics():
    from puffctl.dashboard import DIAGNOSTIC_ORDER

    trainer = make()
    assert type(trainer.algorithm) is Algorithm
    obs = torch.randn(4, 4)
    assert trainer.algorithm.policy_inputs(obs, slice(0, 4), None) is obs
    assert trainer.algorithm.loss(None, None) is None and trainer.algorithm.metrics() == {}
    trainer.evaluate()
    stats = trainer.train()
    assert set(DIAGNOSTIC_ORDER) <= set(stats)  # what the live table shows is what the trainer logs
    assert stats["grad_norm"] > 0 and stats["advantage_max_abs"] >= abs(stats["advantage_mean"])
    assert stats["return_std"] > 0
