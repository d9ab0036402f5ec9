"""The advantage estimators: formulas, identities, compiled vs reference, bad inputs, NaN rows."""

from __future__ import annotations

import math
import os
import random
import subprocess
import sys

import pytest
import torch

from trainer import advantage
from trainer.advantage import Bootstrap

GAMMA, LAMBDA = 0.99, 0.9


def naive(estimator: str, values, rewards, dones, importance=None, gamma=GAMMA, lam=LAMBDA, rho_clip=1.0,
          c_clip=1.0, bootstrap=None):
    """DOMAIN.md section 2 written out with plain Python loops, one row and one step at a time."""
    rows, horizon = len(values), len(values[0])
    adv = [[0.0] * horizon for _ in range(rows)]
    pg = [[0.0] * horizon for _ in range(rows)]
    for i in range(rows):
        v, r, d = list(values[i]), list(rewards[i]), list(dones[i])
        w = [1.0] * horizon if importance is None else list(importance[i])
        last = horizon - 1
        if bootstrap is not None:
            v.append(bootstrap[1][i]); r.append(bootstrap[0][i]); d.append(bootstrap[2][i])
            last = horizon
        vs_next_minus_v, a_next = 0.0, 0.0
        vs = list(v)
        for t in range(last - 1, -1, -1):
            nd = 1.0 - d[t + 1]
            rho = 1.0 if estimator == "gae" else min(w[t], rho_clip)
            c = 1.0 if estimator == "gae" else min(w[t], c_clip)
            delta = rho * (r[t + 1] + gamma * v[t + 1] * nd - v[t])
            if estimator == "gae":
                a_next = delta + gamma * lam * nd * a_next
                adv[i][t] = a_next
            elif estimator == "puff":
                a_next = delta + gamma * lam * c * nd * a_next
                adv[i][t] = a_next
            else:
                vs[t] = v[t] + delta + gamma * c * nd * vs_next_minus_v
                vs_next_minus_v = vs[t] - v[t]
                pg[i][t] = rho * (r[t + 1] + gamma * nd * vs[t + 1] - v[t])
                adv[i][t] = vs[t]
        if estimator == "vtrace" and bootstrap is None:
            adv[i][horizon - 1] = v[horizon - 1]
    out = torch.tensor(adv, dtype=torch.float32)
    return (out, torch.tensor(pg, dtype=torch.float32)) if estimator == "vtrace" else out


def batch(rows: int, horizon: int, seed: int = 0, done_p: float = 0.1, ratio: str = "random"):
    gen = torch.Generator().manual_seed(seed)
    values = torch.randn(rows, horizon, generator=gen)
    rewards = torch.randn(rows, horizon, generator=gen)
    dones = (torch.rand(rows, horizon, generator=gen) < done_p).float()
    importance = {"random": lambda: 2 * torch.rand(rows, horizon, generator=gen),
                  "ones": lambda: torch.ones(rows, horizon)}[ratio]()
    boot = Bootstrap(torch.randn(rows, generator=gen), torch.randn(rows, generator=gen),
                     (torch.rand(rows, generator=gen) < 0.3).float())
    return values, rewards, dones, importance, boot


def run(estimator, values, rewards, dones, importance, backend, bootstrap=None, rho_clip=1.0, c_clip=1.0, lam=LAMBDA):
    if estimator == "gae":
        return advantage.gae(values, rewards, dones, gamma=GAMMA, gae_lambda=lam, bootstrap=bootstrap, backend=backend)
    if estimator == "puff":
        return advantage.puff_advantage(values, rewards, dones, importance, gamma=GAMMA, gae_lambda=lam,
                                        rho_clip=rho_clip, c_clip=c_clip, bootstrap=bootstrap, backend=backend)
    return advantage.vtrace(values, rewards, dones, importance, gamma=GAMMA, rho_clip=rho_clip, c_clip=c_clip,
                            bootstrap=bootstrap, backend=backend)


def assert_same(a, b, tol=1e-4):
    if isinstance(a, tuple):
        for x, y in zip(a, b):
            assert_same(x, y, tol)
        return
    torch.testing.assert_close(a, b, rtol=tol, atol=tol, equal_nan=True)


@pytest.fixture(params=["torch", "compiled"])
def backend(request) -> str:
    """Each test that takes it runs on the pure-torch reference and on the compiled ops."""
    if request.param == "compiled":
        request.getfixturevalue("compiled_ops")
    return request.param


ESTIMATORS = ["gae", "puff", "vtrace"]


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("use_bootstrap", [False, True])
def test_matches_the_formulas_written_out(backend, estimator, use_bootstrap):
    values, rewards, dones, importance, boot = batch(5, 11, seed=3, done_p=0.25)
    bootstrap = boot if use_bootstrap else None
    expected = naive(estimator, values.tolist(), rewards.tolist(), dones.tolist(), importance.tolist(),
                     rho_clip=1.0, c_clip=0.8, bootstrap=None if bootstrap is None else [b.tolist() for b in boot])
    got = run(estimator, values, rewards, dones, importance, backend, bootstrap, rho_clip=1.0, c_clip=0.8)
    assert_same(got, expected, tol=1e-5)


def test_last_column_without_bootstrap_is_pufferlibs_convention():
    values, rewards, dones, importance, _ = batch(4, 6)
    assert torch.all(advantage.puff_advantage(values, rewards, dones, importance, gamma=GAMMA, gae_lambda=LAMBDA,
                                              backend="torch")[:, -1] == 0)
    vs, pg = advantage.vtrace(values, rewards, dones, importance, gamma=GAMMA, backend="torch")
    assert torch.equal(vs[:, -1], values[:, -1]) and torch.all(pg[:, -1] == 0)


@pytest.mark.parametrize("use_bootstrap", [False, True])
def test_identities(backend, use_bootstrap):
    values, rewards, dones, importance, boot = batch(64, 33, seed=7)
    bootstrap = boot if use_bootstrap else None
    ones = torch.ones_like(values)
    gae = run("gae", values, rewards, dones, None, backend, bootstrap)
    # puff with w == 1 equals GAE
    assert_same(run("puff", values, rewards, dones, ones, backend, bootstrap), gae)
    # puff with lambda = 1 equals vs - values
    vs, _ = run("vtrace", values, rewards, dones, importance, backend, bootstrap, c_clip=0.9)
    puff_l1 = run("puff", values, rewards, dones, importance, backend, bootstrap, c_clip=0.9, lam=1.0)
    assert_same(puff_l1, vs - values)
    # V-trace with w == 1 equals GAE with lambda = 1
    vs1, _ = run("vtrace", values, rewards, dones, ones, backend, bootstrap)
    assert_same(vs1 - values, run("gae", values, rewards, dones, None, backend, bootstrap, lam=1.0))


def random_shapes(count: int = 40) -> list[tuple[int, int]]:
    rng = random.Random(1234)
    edge = [(1, 1), (1, 257), (3000, 1), (2, 17), (127, 16), (129, 15), (31, 64), (3000, 257)]
    return edge + [(rng.randint(1, 3000), rng.randint(1, 257)) for _ in range(count - len(edge))]


@pytest.fixture(params=["cpu", "cuda"])
def device(request, compiled_ops) -> str:
    """The device the compiled ops run on; CUDA only where a GPU and a CUDA build exist."""
    if request.param == "cuda" and not (torch.cuda.is_available() and compiled_ops == "cuda"):
        pytest.skip("needs a GPU and the CUDA build of the extension")
    return request.param


def on(device: str, *tensors):
    return [None if t is None else (Bootstrap(*(b.to(device) for b in t)) if isinstance(t, Bootstrap) else t.to(device))
            for t in tensors]


def compiled_on(device, estimator, values, rewards, dones, importance, bootstrap, **kw):
    got = run(estimator, *on(device, values, rewards, dones, importance), "compiled", *on(device, bootstrap), **kw)
    return tuple(t.cpu() for t in got) if isinstance(got, tuple) else got.cpu()


@pytest.mark.parametrize("rows,horizon", random_shapes())
def test_compiled_matches_reference_on_random_shapes(rows, horizon, device):
    values, rewards, dones, importance, boot = batch(rows, horizon, seed=rows * 1000 + horizon)
    for estimator in ESTIMATORS:
        for bootstrap in (None, boot):
            expected = run(estimator, values, rewards, dones, importance, "torch", bootstrap, c_clip=0.95)
            got = compiled_on(device, estimator, values, rewards, dones, importance, bootstrap, c_clip=0.95)
            assert_same(got, expected)


@pytest.mark.parametrize("pattern", ["none", "one_per_row", "every_step", "alternate"])
@pytest.mark.parametrize("ratios", ["zero", "huge", "inf", "mixed"])
def test_done_patterns_and_extreme_ratios(pattern, ratios, device):
    rows, horizon = 37, 40
    values, rewards, _, _, boot = batch(rows, horizon, seed=11)
    one_per_row = torch.zeros(rows, horizon)
    one_per_row[torch.arange(rows), torch.arange(rows) % horizon] = 1.0
    dones = {"none": torch.zeros(rows, horizon), "one_per_row": one_per_row, "every_step": torch.ones(rows, horizon),
             "alternate": (torch.arange(horizon) % 2).float().expand(rows, horizon).contiguous()}[pattern]
    importance = {"zero": torch.zeros(rows, horizon), "huge": torch.full((rows, horizon), 1e30),
                  "inf": torch.full((rows, horizon), math.inf),
                  "mixed": torch.tensor([0.0, 1e-6, 1.0, 3.0, 1e30]).repeat(rows * horizon // 5 + 1)[:rows * horizon]
                  .reshape(rows, horizon)}[ratios]
    for estimator in ESTIMATORS:
        for bootstrap in (None, boot):
            expected = run(estimator, values, rewards, dones, importance, "torch", bootstrap)
            got = compiled_on(device, estimator, values, rewards, dones, importance, bootstrap)
            assert_same(got, expected)
            for t in (got if isinstance(got, tuple) else (got,)):
                assert torch.isfinite(t).all()
    if ratios == "zero":
        # rho = 0 removes every delta: no advantage anywhere
        assert torch.all(compiled_on(device, "puff", values, rewards, dones, importance, None) == 0)


def test_non_contiguous_inputs_and_outputs(backend):
    values, rewards, dones, importance, boot = batch(50, 24, seed=5)
    expected_adv = run("puff", values, rewards, dones, importance, "torch", boot)
    expected_vs, expected_pg = run("vtrace", values, rewards, dones, importance, "torch", boot)

    def transposed(t):  # same values, column-major storage
        return t.t().contiguous().t()

    def strided(t):  # every other column of a wider tensor
        wide = torch.zeros(t.shape[0], 2 * t.shape[1])
        wide[:, ::2] = t
        return wide[:, ::2]

    for view in (transposed, strided):
        args = [view(t) for t in (values, rewards, dones, importance)]
        assert not args[0].is_contiguous()
        boot_view = Bootstrap(*(torch.stack([b, b], dim=1)[:, 0] for b in boot))
        out = view(torch.full_like(values, 7.0))
        advantage.puff_advantage(*args, gamma=GAMMA, gae_lambda=LAMBDA, bootstrap=boot_view, out=out, backend=backend)
        assert_same(out, expected_adv)
        vs_out, pg_out = view(torch.zeros_like(values)), view(torch.zeros_like(values))
        advantage.vtrace(*args, gamma=GAMMA, bootstrap=boot_view, out=(vs_out, pg_out), backend=backend)
        assert_same((vs_out, pg_out), (expected_vs, expected_pg))


@pytest.mark.parametrize("field", ["values", "rewards", "dones", "importance"])
def test_nan_in_one_row_stays_in_that_row(backend, field):
    values, rewards, dones, importance, boot = batch(40, 20, seed=9)
    tensors = {"values": values, "rewards": rewards, "dones": dones, "importance": importance}
    tensors[field][17, 6] = math.nan
    for estimator in ESTIMATORS:
        got = run(estimator, *tensors.values(), backend, boot)
        for t in (got if isinstance(got, tuple) else (got,)):
            if not (estimator == "gae" and field == "importance"):
                assert torch.isnan(t[17]).any(), f"{estimator}: NaN in {field} vanished"
            others = torch.cat([t[:17], t[18:]])
            assert torch.isfinite(others).all(), f"{estimator}: NaN in {field} leaked into other rows"


BAD_INPUTS = [
    ("1-D values", lambda v, r, d, w: (v[0], r, d, w), "values must be 2-D"),
    ("3-D rewards", lambda v, r, d, w: (v, r[None], d, w), "rewards must be 2-D"),
    ("float64 dones", lambda v, r, d, w: (v, r, d.double(), w), "dones must be float32"),
    ("int importance", lambda v, r, d, w: (v, r, d, w.int()), "importance must be float32"),
    ("shape mismatch", lambda v, r, d, w: (v, r[:, :-1], d, w), "rewards has shape"),
    ("zero horizon", lambda v, r, d, w: (v[:, :0], r[:, :0], d[:, :0], w[:, :0]), "horizon"),
]


@pytest.mark.parametrize("name,mutate,message", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_inputs_name_the_tensor(backend, name, mutate, message):
    values, rewards, dones, importance, _ = batch(8, 6)
    args = mutate(values, rewards, dones, importance)
    with pytest.raises((ValueError, TypeError), match=message):
        advantage.puff_advantage(*args, gamma=GAMMA, gae_lambda=LAMBDA, backend=backend)


@pytest.mark.usefixtures("compiled_ops")
@pytest.mark.parametrize("name,mutate,message", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_the_registered_op_checks_its_inputs_too(name, mutate, message):
    values, rewards, dones, importance, _ = batch(8, 6)
    v, r, d, w = mutate(values, rewards, dones, importance)
    out = torch.empty_like(values)
    with pytest.raises((ValueError, TypeError), match=message):
        torch.ops.puffctl.puff_advantage(v, r, d, w, GAMMA, LAMBDA, 1.0, 1.0, out)


@pytest.mark.usefixtures("compiled_ops")
def test_the_registered_op_rejects_bad_outputs_and_bootstraps():
    values, rewards, dones, importance, boot = batch(8, 6)
    with pytest.raises(ValueError, match="advantages has shape"):
        torch.ops.puffctl.gae(values, rewards, dones, GAMMA, LAMBDA, torch.empty(8, 5))
    with pytest.raises(TypeError, match="pg_advantages must be float32"):
        torch.ops.puffctl.vtrace(values, rewards, dones, importance, GAMMA, 1.0, 1.0, torch.empty(8, 6),
                                 torch.empty(8, 6, dtype=torch.float64))
    with pytest.raises(ValueError, match="together"):
        torch.ops.puffctl.gae(values, rewards, dones, GAMMA, LAMBDA, torch.empty(8, 6), boot.rewards, None, None)
    with pytest.raises(ValueError, match=r"bootstrap_values must be 1-D \[rows\]"):
        torch.ops.puffctl.gae(values, rewards, dones, GAMMA, LAMBDA, torch.empty(8, 6), boot.rewards,
                              boot.values[:4], boot.dones)
    with pytest.raises(RuntimeError, match="memory location"):
        torch.ops.puffctl.gae(values, rewards, dones, GAMMA, LAMBDA, values)


def test_bad_bootstrap_and_device_through_the_api(backend):
    values, rewards, dones, importance, boot = batch(8, 6)
    with pytest.raises(ValueError, match="bootstrap_dones must be 1-D"):
        advantage.gae(values, rewards, dones, gamma=GAMMA, gae_lambda=LAMBDA,
                      bootstrap=Bootstrap(boot.rewards, boot.values, boot.dones[None]), backend=backend)
    with pytest.raises(ValueError, match="rewards is on meta"):
        advantage.gae(values, rewards.to("meta"), dones, gamma=GAMMA, gae_lambda=LAMBDA, backend=backend)


def test_compute_returns_advantages_and_value_targets():
    values, rewards, dones, importance, boot = batch(16, 12)
    adv, returns = advantage.compute(values, rewards, dones, importance, estimator="puff", gamma=GAMMA,
                                     gae_lambda=LAMBDA, bootstrap=boot, backend="torch")
    assert_same(returns, adv + values)
    pg, vs = advantage.compute(values, rewards, dones, importance, estimator="vtrace", gamma=GAMMA,
                               gae_lambda=LAMBDA, bootstrap=boot, backend="torch")
    assert_same((vs, pg), advantage.vtrace(values, rewards, dones, importance, gamma=GAMMA, bootstrap=boot,
                                           backend="torch"))
    with pytest.raises(ValueError, match="estimator must be one of"):
        advantage.compute(values, rewards, dones, estimator="td", gamma=GAMMA, gae_lambda=LAMBDA)


@pytest.mark.usefixtures("compiled_ops")
def test_the_cuda_kernels_row_scan_matches_the_reference_on_the_cpu():
    """PUFFCTL_PORTABLE_KERNEL=1 runs the CUDA kernel's per-row code on the CPU: hold it to the same tests."""
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
                           "-k", "random_shapes and cpu or done_patterns and cpu"],
                          capture_output=True, text=True, env={**os.environ, "PUFFCTL_PORTABLE_KERNEL": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert " passed" in proc.stdout and "failed" not in proc.stdout


def test_vtrace_pg_rho_clip_clips_only_the_policy_advantages(backend):
    values, rewards, dones, importance, boot = batch(16, 12, seed=3)
    importance = 2 * importance  # ratios in [0, 4): many above either clip
    kwargs = dict(estimator="vtrace", gamma=GAMMA, gae_lambda=LAMBDA, rho_clip=1.0, bootstrap=boot, backend=backend)
    pg, vs = advantage.compute(values, rewards, dones, importance, **kwargs)
    same_pg, same_vs = advantage.compute(values, rewards, dones, importance, pg_rho_clip=1.0, **kwargs)
    assert torch.equal(pg, same_pg) and torch.equal(vs, same_vs)  # default: the rho clip itself
    wide_pg, wide_vs = advantage.compute(values, rewards, dones, importance, pg_rho_clip=2.5, **kwargs)
    assert torch.equal(wide_vs, vs)  # the targets keep rho_clip
    # pg[t] = min(w[t], clip) * q[t] with the same q[t] = r + gamma * nd * vs[t+1] - v[t]
    assert_same(wide_pg, importance.clamp(max=2.5) * pg / importance.clamp(max=1.0))
    assert (wide_pg != pg).any()
