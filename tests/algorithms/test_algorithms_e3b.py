"""E3B's bonus and inverse covariance against direct float64 computations, on the fused csrc/ op
(`backend="compiled"`) and on its pure-torch fallback, and the two against each other."""

import numpy as np
import pytest
import torch

from trainer.algorithms.e3b import E3B, InverseDynamics, RunningStd


@pytest.fixture(params=["torch", "compiled"])
def backend(request) -> str:
    """Each test that takes it runs on the pure-torch step and on the fused op."""
    if request.param == "compiled":
        request.getfixturevalue("compiled_ops")
    return request.param


def random_episode(steps: int, envs: int, dim: int, seed: int):
    rng = np.random.default_rng(seed)
    phis = rng.standard_normal((steps, envs, dim))
    first = rng.random((steps, envs)) < 0.15
    first[0] = True
    return phis, first


def test_bonus_and_matrix_equal_the_direct_inverse_with_resets_and_per_env_isolation(backend):
    steps, envs, dim, ridge = 40, 3, 6, 0.1
    phis, first = random_episode(steps, envs, dim, seed=0)
    e3b = E3B(envs, dim, ridge=ridge, norm=False, dtype=torch.float64, backend=backend)
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


def test_float32_state_stays_close_to_the_float64_answer(backend):
    steps, envs, dim, ridge = 200, 4, 32, 0.1
    phis, first = random_episode(steps, envs, dim, seed=1)
    fast = E3B(envs, dim, ridge=ridge, norm=False, backend=backend)
    exact = E3B(envs, dim, ridge=ridge, norm=False, dtype=torch.float64)
    for t in range(steps):
        a = fast.step(torch.from_numpy(phis[t]).float(), torch.from_numpy(first[t]))
        b = exact.step(torch.from_numpy(phis[t]), torch.from_numpy(first[t]))
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-3, atol=1e-4)


def test_decay_variant_equals_its_direct_formula_and_never_resets(backend):
    steps, envs, dim, ridge, decay = 30, 2, 5, 0.1, 0.95
    phis, first = random_episode(steps, envs, dim, seed=2)
    e3b = E3B(envs, dim, ridge=ridge, decay=decay, norm=False, dtype=torch.float64, backend=backend)
    cov = np.stack([ridge * np.eye(dim)] * envs)
    for t in range(steps):
        bonus = e3b.step(torch.from_numpy(phis[t]), torch.from_numpy(first[t]))
        for env in range(envs):
            expected = 0.0 if first[t, env] else phis[t, env] @ np.linalg.inv(cov[env]) @ phis[t, env]
            assert bonus[env].item() == pytest.approx(expected, rel=1e-7)
            cov[env] = decay * cov[env] + np.outer(phis[t, env], phis[t, env])
            np.testing.assert_allclose(e3b.c_inv[env].numpy(), np.linalg.inv(cov[env]), rtol=1e-6)


def test_normalised_reward_is_coef_over_running_std(backend):
    phis, first = random_episode(50, 8, 4, seed=3)
    raw, scaled = E3B(8, 4, norm=False, backend=backend), E3B(8, 4, coef=0.5, backend=backend)
    stats = RunningStd()
    for t in range(50):
        r = raw.step(torch.from_numpy(phis[t]).float(), torch.from_numpy(first[t]))
        s = scaled.step(torch.from_numpy(phis[t]).float(), torch.from_numpy(first[t]))
        stats.update(r[~torch.from_numpy(first[t])])
        np.testing.assert_allclose(s.numpy(), 0.5 * r.numpy() / stats.std, rtol=1e-5)
    assert stats.std == pytest.approx(scaled.stats.std)


@pytest.mark.usefixtures("compiled_ops")
@pytest.mark.parametrize("decay", [None, 0.95])
def test_the_fused_op_equals_the_torch_step_at_the_profiles_width(decay):
    """float32 at H = 128, resets (or decay) included: the fused op and the torch math stay together."""
    steps, envs, dim = 60, 8, 128
    phis, first = random_episode(steps, envs, dim, seed=5)
    phis *= 0.3  # hidden states are bounded (tanh/LSTM): |phi|^2 of about 10, as in the maze runs
    fused = E3B(envs, dim, decay=decay, norm=False, backend="compiled")
    plain = E3B(envs, dim, decay=decay, norm=False, backend="torch")
    assert fused.compiled and not plain.compiled
    for t in range(steps):
        phi, f = torch.from_numpy(phis[t]).float(), torch.from_numpy(first[t])
        torch.testing.assert_close(fused.step(phi, f), plain.step(phi, f), rtol=1e-4, atol=1e-5)
        assert torch.equal(fused.last_raw[f], torch.zeros(int(f.sum())))
    scale = plain.c_inv.abs().amax(dim=(1, 2), keepdim=True)
    torch.testing.assert_close(fused.c_inv / scale, plain.c_inv / scale, rtol=0, atol=1e-5)


@pytest.mark.usefixtures("compiled_ops")
def test_a_checkpoint_moves_between_the_fused_and_the_torch_step():
    phis, first = random_episode(10, 4, 8, seed=8)
    fused, plain = E3B(4, 8, backend="compiled"), E3B(4, 8, backend="torch")
    for t in range(5):
        fused.step(torch.from_numpy(phis[t]).float(), torch.from_numpy(first[t]))
    plain.load_state_dict(fused.state_dict())
    assert torch.equal(plain.c_inv, fused.c_inv)
    back = E3B(4, 8, backend="compiled")
    back.load_state_dict(plain.state_dict())
    assert torch.equal(back.packed, fused.packed)
    for t in range(5, 10):
        phi, f = torch.from_numpy(phis[t]).float(), torch.from_numpy(first[t])
        torch.testing.assert_close(back.step(phi, f), plain.step(phi, f), rtol=1e-4, atol=1e-5)


@pytest.mark.usefixtures("compiled_ops")
def test_the_fused_op_touches_each_env_only_through_its_own_row():
    envs, dim = 5, 16
    phis, _ = random_episode(3, envs, dim, seed=6)
    first = torch.tensor([True, False, True, False, False])
    a, b = E3B(envs, dim, backend="compiled", norm=False), E3B(envs, dim, backend="compiled", norm=False)
    for t in range(3):
        phi = torch.from_numpy(phis[t]).float()
        changed = phi.clone()
        changed[2] += 1.0
        out_a, out_b = a.step(phi, first), b.step(changed, first)
        keep = torch.arange(envs) != 2
        assert torch.equal(out_a[keep], out_b[keep]) and torch.equal(a.c_inv[keep], b.c_inv[keep])
        assert not torch.equal(a.c_inv[2], b.c_inv[2])


@pytest.mark.usefixtures("compiled_ops")
@pytest.mark.parametrize("name,args,message", [
    ("c_inv", dict(c_inv=torch.zeros(3, 16)), "c_inv must be a contiguous tiled"),
    ("c_inv", dict(c_inv=torch.zeros(64, 3).t()), "c_inv must be a contiguous tiled"),
    ("phi", dict(phi=torch.zeros(3, 4, dtype=torch.int32)), "phi must be"),
    ("c_inv", dict(c_inv=torch.zeros(3, 64, dtype=torch.float64)), "c_inv must be"),
    ("first", dict(first=torch.zeros(3)), "first must be bool"),
    ("bonus", dict(bonus=torch.zeros(2)), "bonus must be"),
])
def test_the_op_names_a_bad_tensor(name, args, message):
    call = dict(c_inv=torch.zeros(3, 64), phi=torch.zeros(3, 4), first=torch.zeros(3, dtype=torch.bool),
                bonus=torch.zeros(3))
    call.update(args)
    with pytest.raises(ValueError, match=message):
        torch.ops.puffctl.e3b_step(call["c_inv"], call["phi"], call["first"], 0.1, 1.0, True, call["bonus"])


def test_the_cuda_step_equals_the_cpu_one(compiled_ops):
    if not (torch.cuda.is_available() and compiled_ops == "cuda"):
        pytest.skip("needs a GPU and the CUDA build of the extension")
    envs, dim = 6, 128
    phis, first = random_episode(20, envs, dim, seed=7)
    gpu, cpu = E3B(envs, dim, norm=False, device="cuda", backend="compiled"), E3B(envs, dim, norm=False)
    for t in range(20):
        phi, f = torch.from_numpy(phis[t] * 0.3).float(), torch.from_numpy(first[t])
        torch.testing.assert_close(gpu.step(phi.cuda(), f.cuda()).cpu(), cpu.step(phi, f), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gpu.c_inv.cpu(), cpu.c_inv, rtol=1e-3, atol=1e-5)


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
