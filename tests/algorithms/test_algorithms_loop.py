"""E3B and DIAYN inside the real trainer, through the algorithm seams: short runs on the built-in envs."""

import copy
import math

import numpy as np
import pytest
import torch

from trainer import config
from trainer.algorithms.diayn import DiaynSkills
from trainer.algorithms.e3b import E3BBonus
from trainer.train import Trainer

SNAKE = {"name": "puffer:snake", "num_envs": 16, "kwargs": {"snakes": 2, "width": 8, "height": 8, "food": 3, "view": 2}}


def make(env: dict, **train) -> Trainer:
    return Trainer(config.resolve({
        "env": env, "policy": {"hidden_size": 32},
        "train": {"optimizer": "adam", "learning_rate": 0.01, "bptt_horizon": 16, "minibatch_size": 128,
                  "total_timesteps": 100_000, "cpu_threads": 1, **train}}))


def train_epochs(trainer: Trainer, epochs: int) -> list[dict]:
    out = []
    for _ in range(epochs):
        trainer.evaluate()
        out.append(trainer.train())
    return out


def test_e3b_adds_its_bonus_to_the_stored_rewards_and_logs_it():
    maze = {"name": "puffer:maze", "num_envs": 8, "kwargs": {"size": 6}}
    plain, bonus = make(maze, seed=3), make(maze, seed=3, e3b_coef=0.5)
    assert isinstance(bonus.algorithm, E3BBonus)
    plain.evaluate(), bonus.evaluate()
    extra = bonus.experience.rewards - plain.experience.rewards
    first = torch.maximum(bonus.experience.terminations, bonus.experience.truncations) > 0
    assert torch.all(extra[:, 1:][~first[:, 1:]] > 0)  # every step but an episode's first earns a bonus
    metrics = bonus.train()
    assert metrics["e3b_intrinsic_mean"] > 0 and metrics["e3b_intrinsic_max"] >= metrics["e3b_intrinsic_mean"]
    assert 0 < metrics["e3b_share"] <= 1 and metrics["e3b_seconds"] > 0
    state = bonus.state_dict()
    twin = make(maze, seed=99, e3b_coef=0.5)
    twin.load_state_dict(state)
    torch.testing.assert_close(twin.algorithm.bonus.c_inv, bonus.algorithm.bonus.c_inv)


def test_e3b_inverse_dynamics_embedding_trains_its_encoder():
    trainer = make({"name": "puffer:maze", "num_envs": 8, "kwargs": {"size": 5}}, e3b_coef=1.0,
                   e3b_embedding="inverse_dynamics", e3b_dim=16)
    losses = [m["e3b_id_loss"] for m in train_epochs(trainer, 6)]
    assert losses[-1] < losses[0] and losses[0] == pytest.approx(math.log(4), rel=0.2)


def diayn_run(epochs: int, **train) -> list[dict]:
    torch.manual_seed(0)
    train = {"diayn_archive": 4, **train}
    trainer = make({**SNAKE, "num_envs": 64}, seed=1, update_epochs=4, minibatch_size=256, **train)
    assert isinstance(trainer.algorithm, DiaynSkills)
    return train_epochs(trainer, epochs)


def test_diayn_accuracy_rises_above_chance_and_the_stop_grad_control_does_not():
    learned = diayn_run(20, diayn_coef=5.0)  # a large coefficient, so it shows within seconds
    control = diayn_run(20, diayn_coef=5.0, diayn_stop_grad=True)
    assert learned[-1]["diayn_chance"] == 0.25
    late = lambda runs: np.mean([m["diayn_accuracy"] for m in runs[-3:]])  # noqa: E731
    assert late(learned) > 0.5, late(learned)
    assert late(control) < 0.4, late(control)
    assert control[-1]["diayn_loss"] > 0.95 * math.log(4)


def test_diayn_warmup_leaves_the_policy_alone_first():
    warm = diayn_run(2, diayn_coef=5.0, diayn_warmup=0.015)  # from 1,500 of 100,000 steps: the second epoch
    control = diayn_run(1, diayn_coef=5.0, diayn_stop_grad=True)
    assert warm[0] == pytest.approx(control[0], nan_ok=True)  # the first epoch as if cut off
    assert warm[0]["diayn_pushed"] == 0 < warm[1]["diayn_pushed"]


def test_diayn_with_one_skill_trains_at_chance_one():
    metrics = diayn_run(2, diayn_coef=0.1, diayn_archive=1)[-1]
    assert metrics["diayn_accuracy"] == metrics["diayn_chance"] == 1.0 and metrics["diayn_loss"] == 0.0


def test_diayn_skills_and_discriminator_are_restored_on_resume():
    settings = dict(seed=2, diayn_coef=0.1, diayn_archive=4, diayn_skills="episode")
    trainer = make(SNAKE, **settings)
    train_epochs(trainer, 2)
    state = copy.deepcopy(trainer.state_dict())  # (it holds the live weights, which train() changes)
    trainer.evaluate()
    rng = torch.get_rng_state()
    metrics = trainer.train()
    resumed = make(SNAKE, **settings)  # a fresh process: skills and draws back at the start
    assert not torch.equal(resumed.algorithm.skills.generator.get_state(), trainer.algorithm.skills.generator.get_state())
    assert resumed.load_state_dict(state)  # (torch's RNG is global: this also rewinds it for the comparison)
    assert torch.equal(resumed.algorithm.skills.z, state["algorithm"]["skills"]["z"])
    resumed.evaluate()
    torch.testing.assert_close(resumed.experience.obs, trainer.experience.obs)  # the same skills drawn onwards
    torch.set_rng_state(rng)
    assert resumed.train() == pytest.approx(metrics, nan_ok=True)


@pytest.mark.parametrize("pool", ["flat", "sum"])
def test_diayn_reward_mode_pays_the_discriminators_belief(pool):
    metrics = diayn_run(3, diayn_coef=0.5, diayn_mode="reward", diayn_pool=pool)
    assert math.isfinite(metrics[-1]["diayn_reward"]) and metrics[-1]["diayn_accuracy"] >= 0
