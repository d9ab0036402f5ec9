"""E3B's bonuses computed once per collected segment (`E3B.segment`, batched Woodbury) against the
per-step path (`E3B.step`) and the direct float64 inverse, alone and inside the trainer."""

import numpy as np
import pytest
import torch

from trainer import config
from trainer.algorithms.e3b import E3B, RunningStd
from trainer.config import ConfigError
from trainer.train import Trainer


def segment_resets(segments: int, envs: int, horizon: int, seed: int) -> np.ndarray:
    """`first` [segments >= 6, envs >= 4, horizon >= 8]: random resets, plus the cases the segment math must get right."""
    rng = np.random.default_rng(seed)
    first = rng.random((segments, envs, horizon)) < 0.08
    first[0, :, 0] = True
    first[1:, 0] = False  # env 0 never resets after the start
    first[2, 1, 0] = True  # env 1: a segment that starts with a reset
    first[1:, 2] = False
    first[1, 2, 5] = first[4, 2, 3] = True  # env 2: an episode through segments 1-4 (3 whole segments inside it)
    first[3, 3] = False
    first[3, 3, [2, 3, 7]] = True  # env 3: three episodes in one segment, one of a single step, one at the end
    return first


def run_both(phis: np.ndarray, first: np.ndarray, block: int = 32, **kwargs):
    """Feed the same data segment by segment to `E3B.segment` and step by step to `E3B.step`;
    yield each segment's (segment bonuses, step bonuses, the two E3Bs)."""
    segments, envs, horizon, dim = phis.shape
    batched = E3B(envs, dim, batch="segment", block=block, **kwargs)
    stepped = E3B(envs, dim, backend="torch", **kwargs)
    dtype = batched.eye.dtype
    for s in range(segments):
        phi, f = torch.from_numpy(phis[s]).to(dtype), torch.from_numpy(first[s])
        by_step = torch.stack([stepped.step(phi[:, t], f[:, t]) for t in range(horizon)], dim=1)
        yield batched.segment(phi, f), by_step, batched, stepped


@pytest.mark.parametrize("block", [5, 32])  # Cholesky blocks inside a segment (5: with a shorter last one), or one
def test_segment_bonuses_and_matrices_equal_the_step_path_at_the_profiles_width(block):
    segments, envs, horizon, dim = 8, 6, 16, 128
    phis = np.tanh(np.random.default_rng(0).standard_normal((segments, envs, horizon, dim))) * 0.8
    first = segment_resets(segments, envs, horizon, seed=0)
    for batched_bonus, step_bonus, batched, stepped in run_both(phis, first, norm=False, block=block):
        torch.testing.assert_close(batched_bonus, step_bonus, rtol=1e-4, atol=2e-4)
        scale = stepped.c_inv.abs().amax(dim=(1, 2), keepdim=True)
        torch.testing.assert_close(batched.c_inv / scale, stepped.c_inv / scale, rtol=0, atol=1e-5)
    assert torch.equal(batched.last_raw[torch.from_numpy(first[-1])], torch.zeros(int(first[-1].sum())))


def test_segment_bonus_and_matrix_equal_the_direct_inverse():
    segments, envs, horizon, dim, ridge = 6, 5, 8, 6, 0.1
    rng = np.random.default_rng(1)
    phis = rng.standard_normal((segments, envs, horizon, dim))
    first = segment_resets(segments, envs, horizon, seed=1)
    steps_phi = phis.transpose(1, 0, 2, 3).reshape(envs, -1, dim)  # [envs, all steps, dim]
    steps_first = first.transpose(1, 0, 2).reshape(envs, -1)
    runs = run_both(phis, first, block=3, ridge=ridge, norm=False, dtype=torch.float64)
    for s, (bonus, _, batched, _) in enumerate(runs):
        for env in range(envs):
            for t in range(horizon):
                now = s * horizon + t
                start = max(i for i in range(now + 1) if steps_first[env, i])
                seen = steps_phi[env, start:now]
                expected = 0.0 if steps_first[env, now] else (
                    steps_phi[env, now] @ np.linalg.inv(ridge * np.eye(dim) + seen.T @ seen) @ steps_phi[env, now])
                assert bonus[env, t].item() == pytest.approx(expected, rel=1e-9)
            seen = steps_phi[env, start:now + 1]
            np.testing.assert_allclose(batched.c_inv[env].numpy(), np.linalg.inv(ridge * np.eye(dim) + seen.T @ seen),
                                       rtol=1e-8, atol=1e-10)


def test_segment_normalisation_takes_the_whole_segment_into_the_running_std_first():
    segments, envs, horizon, dim = 6, 8, 16, 4
    phis = np.random.default_rng(2).standard_normal((segments, envs, horizon, dim))
    first = segment_resets(segments, envs, horizon, seed=2)
    raw, scaled = E3B(envs, dim, norm=False, batch="segment"), E3B(envs, dim, coef=0.5, batch="segment")
    stats = RunningStd()
    for s in range(segments):
        phi, f = torch.from_numpy(phis[s]).float(), torch.from_numpy(first[s])
        r, out = raw.segment(phi, f), scaled.segment(phi, f)
        stats.update(r[~f])
        torch.testing.assert_close(out, 0.5 * r / stats.std)
    assert scaled.stats.count == int((~first).sum())


def test_a_checkpoint_moves_between_the_step_and_the_segment_path():
    envs, horizon, dim = 4, 8, 16
    phis = np.random.default_rng(3).standard_normal((2, envs, horizon, dim)) * 0.3
    first = segment_resets(6, envs, horizon, seed=3)
    stepped, batched = E3B(envs, dim), E3B(envs, dim, batch="segment")  # stepped: the fused op where built
    phi, f = torch.from_numpy(phis[0]).float(), torch.from_numpy(first[0])
    for t in range(horizon):
        stepped.step(phi[:, t], f[:, t])
    batched.load_state_dict(stepped.state_dict())
    assert torch.equal(batched.c_inv, stepped.c_inv) and batched.stats.count == stepped.stats.count
    phi, f = torch.from_numpy(phis[1]).float(), torch.from_numpy(first[1])
    raw = []
    for t in range(horizon):
        stepped.step(phi[:, t], f[:, t])
        raw.append(stepped.last_raw)
    batched.segment(phi, f)
    torch.testing.assert_close(batched.last_raw, torch.stack(raw, dim=1), rtol=1e-4, atol=1e-4)
    assert batched.stats.count == stepped.stats.count


def test_the_decay_variant_has_no_segment_form():
    with pytest.raises(ValueError, match="no decay variant"):
        E3B(4, 8, decay=0.95, batch="segment")
    with pytest.raises(ConfigError, match="e3b_batch=segment has no decay"):
        config.resolve({"train": {"e3b_coef": 0.1, "e3b_decay": 0.95, "e3b_batch": "segment"}})


def maze_trainer(batch: str, **train) -> Trainer:
    return Trainer(config.resolve({
        "env": {"name": "puffer:maze", "num_envs": 8, "kwargs": {"size": 5, "max_steps": 20}},
        "policy": {"hidden_size": 32},
        "train": {"optimizer": "adam", "bptt_horizon": 16, "batch_size": 8 * 16 * 3, "minibatch_size": 128,
                  "cpu_threads": 1, "seed": 5, "e3b_coef": 0.5, "e3b_batch": batch, **train}}))


def test_a_collected_epoch_stores_the_same_rewards_by_segment_as_by_step():
    """Three row blocks per env and three epochs of collection, resets inside segments: the stored
    rewards and bootstrap rewards are the per-step path's (raw bonuses, so the running std's
    order does not enter)."""
    by_segment, by_step = maze_trainer("segment", e3b_norm=False), maze_trainer("step", e3b_norm=False)
    assert by_segment.algorithm.bonus.batch == "segment" and by_step.algorithm.bonus.batch == "step"
    for _ in range(3):
        rng = torch.get_rng_state()  # (global: both draw the same actions)
        by_segment.evaluate()
        torch.set_rng_state(rng)
        by_step.evaluate()
        segment, step = by_segment.experience, by_step.experience
        torch.testing.assert_close(segment.obs, step.obs, rtol=0, atol=0)
        assert (segment.terminations + segment.truncations)[:, 1:].sum() > 0  # resets inside segments
        torch.testing.assert_close(segment.rewards, step.rewards, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(segment.next_rewards, step.next_rewards, rtol=1e-4, atol=1e-4)
    metrics = by_segment.train()
    assert metrics["e3b_intrinsic_mean"] == pytest.approx(by_step.train()["e3b_intrinsic_mean"], rel=1e-4)
    assert 0 < metrics["e3b_share"] <= 1 and metrics["e3b_seconds"] > 0


def test_segment_collection_resumes_from_a_checkpoint_exactly():
    trainer = maze_trainer("auto")
    assert trainer.algorithm.bonus.batch == "segment"
    trainer.evaluate(), trainer.train()
    state = trainer.state_dict()  # between epochs, as every checkpoint: no segment is half collected
    resumed = maze_trainer("auto")
    resumed.load_state_dict(state)  # (and the global RNG back to the checkpoint's, which both draw from)
    rng = torch.get_rng_state()
    resumed.evaluate()
    torch.set_rng_state(rng)
    trainer.evaluate()
    torch.testing.assert_close(resumed.experience.rewards, trainer.experience.rewards, rtol=0, atol=0)
    torch.testing.assert_close(resumed.algorithm.bonus.c_inv, trainer.algorithm.bonus.c_inv, rtol=0, atol=0)
