"""E3B's bonus and inverse covariance against direct float64 computations."""

import numpy as np
import pytest
import torch

from trainer.algorithms.e3b import E3B, InverseDynamics, RunningStd


def random_episode(steps: int, envs: int, dim: int, seed: int):
    rng = np.random.default_rng(seed)
    phis = rng.standard_normal((steps, envs, dim))
    first = rng.random((steps, envs)) < 0.15
    first[0] = True
    return phis, first


def test_bonus_and_matrix_equal_the_direct_inverse_with_resets_and_per_env_isolation():
    steps, envs, dim, ridge = 40, 3, 6, 0.1
    phis, first = random_episode(steps, envs, dim, seed=0)
    e3b = E3B(envs, dim, ridge=ridge, norm=False, dtype=torch.float64)
    for t in range(steps):
        bonus = e3b.step(torch.from_numpy(phis[t]), torch.from_numpy(first[t]))
        for env in range(envs):
            start = max(s for s in range(t + 1) if first[s, env])
            seen = phis[start:t, env]  # this env's own episode so far, before this step
            c_inv = np.linalg.inv(ridge * np.eye(dim) + seen.T @ seen)
            expected = 0.0 if first[t, env] else phis[t, env] @ c_inv @ phis[t, env]
            assert bonus[env].item() == pytest.approx(expected, rel=1e-9)
            now = phis[start:t + 1, env]
            np.testing.assert_allclose(e3b.c_inv[env].numpy(), np.linalg.inv(ridge * np.eye(dim) + now.T @ now), rtol=1e-8, atol=1e-10)


def test_float32_state_stays_close_to_the_float64_answer():
    steps, envs, dim, ridge = 200, 4, 32, 0.1
    phis, first = random_episode(steps, envs, dim, seed=1)
    fast, exact = E3B(envs, dim, ridge=ridge, norm=False), E3B(envs, dim, ridge=ridge, norm=False, dtype=torch.float64)
    for t in range(steps):
        a = fast.step(torch.from_numpy(phis[t]).float(), torch.from_numpy(first[t]))
        b = exact.step(torch.from_numpy(phis[t]), torch.from_numpy(first[t]))
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-3, atol=1e-4)


def test_decay_variant_equals_its_direct_formula_and_never_resets():
    steps, envs, dim, ridge, decay = 30, 2, 5, 0.1, 0.95
    phis, first = random_episode(steps, envs, dim, seed=2)
    e3b = E3B(envs, dim, ridge=ridge, decay=decay, norm=False, dtype=torch.float64)
    cov = np.stack([ridge * np.eye(dim)] * envs)
    for t in range(steps):
        bonus = e3b.step(torch.from_numpy(phis[t]), torch.from_numpy(first[t]))
        for env in range(envs):
            expected = 0.0 if first[t, env] else phis[t, env] @ np.linalg.inv(cov[env]) @ phis[t, env]
            assert bonus[env].item() == pytest.approx(expected, rel=1e-7)
            cov[env] = decay * cov[env] + np.outer(phis[t, env], phis[t, env])
            np.testing.assert_allclose(e3b.c_inv[env].numpy(), np.linalg.inv(cov[env]), rtol=1e-6)


def test_normalised_reward_is_coef_over_running_std():
    phis, first = random_episode(50, 8, 4, seed=3)
    raw, scaled = E3B(8, 4, norm=False), E3B(8, 4, coef=0.5)
    stats = RunningStd()
    for t in range(50):
        r = raw.step(torch.from_numpy(phis[t]).float(), torch.from_numpy(first[t]))
        s = scaled.step(torch.from_numpy(phis[t]).float(), torch.from_numpy(first[t]))
        stats.update(r[~torch.from_numpy(first[t])])
        np.testing.assert_allclose(s.numpy(), 0.5 * r.numpy() / stats.std, rtol=1e-5)
    assert stats.std == pytest.approx(scaled.stats.std)


def test_running_std_matches_numpy():
    values = np.random.default_rng(4).standard_normal(1000) * 3 + 2
    stats = RunningStd()
    for chunk in np.array_split(values, 7):
        stats.update(torch.from_numpy(chunk))
    assert stats.std == pytest.approx(values.std(), rel=1e-12)


def test_inverse_dynamics_learns_which_action_moved_the_agent():
    torch.manual_seed(0)
    obs = torch.randn(512, 6)
    actions = torch.randint(4, (512,))
    next_obs = obs.clone()
    next_obs[torch.arange(512), actions] += 1.0  # action k nudges feature k
    valid = torch.ones(512)
    model = InverseDynamics(6, 4, dim=32)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        loss = model.loss(obs, next_obs, actions, valid)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.2 < np.log(4)
    assert model(obs).shape == (512, 32)
