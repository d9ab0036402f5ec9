"""Learning smoke runs (seconds): the return rises on CartPole (baseline settings, and the
vtrace and replay_factor profiles); an LSTM beats an MLP on puffer:memory; PPO finds the goal of
a small puffer:maze."""

import statistics

import pytest
import torch

from trainer import config
from trainer.train import Trainer

pytestmark = pytest.mark.slow


def train(overrides, epochs, key="episode_return"):
    """Mean of `key` over the first and the last two epochs' finished episodes."""
    torch.set_num_threads(1)
    trainer = Trainer(config.resolve(overrides))
    history = []
    for _ in range(epochs):
        history.append([e[key] for e in trainer.evaluate() if key in e])
        trainer.train()
    trainer.close()
    first = statistics.fmean(history[0]) if history[0] else 0.0
    last = statistics.fmean([v for epoch in history[-2:] for v in epoch])
    return first, last


def test_cartpole_return_rises():
    first, last = train({"env": {"name": "gym:CartPole-v1", "num_envs": 64},
                         "train": {"optimizer": "adam", "learning_rate": 0.04, "bptt_horizon": 32,
                                   "minibatch_size": 1024, "gamma": 0.99, "gae_lambda": 0.95,
                                   "vf_coef": 0.5, "ent_coef": 0.001, "total_timesteps": 2_000_000}},
                        epochs=100)
    assert first < 40  # a random policy lasts about 22 steps
    assert last > 100


@pytest.mark.parametrize("profile", ["vtrace", "replay_factor"])
def test_the_off_policy_profiles_learn_cartpole(profile):
    from puffctl import profiles

    overrides = profiles.build_config(profiles.load(profile), sets=["train.seed=1"])
    first, last = train(overrides, epochs=60)
    assert first < 40
    assert last > 150


def test_lstm_remembers_where_an_mlp_cannot():
    overrides = {"env": {"name": "puffer:memory", "num_envs": 128, "kwargs": {"length": 4}},
                 "policy": {"hidden_size": 32, "lstm_hidden_size": 32},
                 "train": {"optimizer": "adam", "learning_rate": 0.01, "bptt_horizon": 16,
                           "minibatch_size": 1024, "total_timesteps": 200_000}}
    _, lstm = train({**overrides, "policy": {**overrides["policy"], "lstm": True}}, epochs=60, key="score")
    _, mlp = train(overrides, epochs=60, key="score")
    assert lstm > 0.9
    assert mlp < 0.7


def test_ppo_solves_a_small_maze():
    # a uniform random policy solves this maze in about 6% of episodes
    _, last = train({"env": {"name": "puffer:maze", "num_envs": 128, "kwargs": {"size": 4}},
                         "train": {"optimizer": "adam", "learning_rate": 0.01, "bptt_horizon": 32,
                                   "minibatch_size": 2048, "gamma": 0.99, "ent_coef": 0.01,
                                   "total_timesteps": 400_000}}, epochs=60, key="solved")
    assert last > 0.9
