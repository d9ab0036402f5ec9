"""Prioritized segment sampling: priorities, importance weights, beta annealing."""

import pytest
import torch

from trainer import sampler


def test_priorities_are_summed_abs_advantages_to_the_alpha():
    advantages = torch.tensor([[1.0, -1.0], [0.0, 0.5], [0.0, 0.0], [-4.0, 0.0]])
    probs = sampler.priorities(advantages, alpha=0.5)
    raw = torch.tensor([2.0, 0.5, 0.0, 4.0]).sqrt()
    assert torch.allclose(probs, raw / raw.sum())
    uniform = sampler.priorities(advantages, alpha=0.0)
    assert torch.allclose(uniform, torch.full((4,), 0.25))  # 0 ** 0 == 1: alpha 0 is uniform


def test_all_zero_advantages_sample_uniformly():
    probs = sampler.priorities(torch.zeros(5, 3), alpha=0.8)
    assert torch.allclose(probs, torch.full((5,), 0.2))


def test_sample_draws_distinct_rows_by_priority_with_is_weights():
    torch.manual_seed(0)
    advantages = torch.zeros(8, 4)
    advantages[3] = 1.0
    advantages[5] = 3.0
    idx, weights = sampler.sample(advantages, rows=2, alpha=1.0, beta=0.5)
    assert sorted(idx.tolist()) == [3, 5]  # only rows with non-zero priority
    probs = sampler.priorities(advantages, 1.0)
    assert torch.allclose(weights, (8 * probs[idx]) ** -0.5)


def test_sampling_frequency_follows_priority():
    torch.manual_seed(0)
    advantages = torch.tensor([[1.0], [3.0]])
    counts = torch.zeros(2)
    for _ in range(4000):
        idx, _ = sampler.sample(advantages, rows=1, alpha=1.0, beta=1.0)
        counts[idx] += 1
    assert counts[1] / counts.sum() == pytest.approx(0.75, abs=0.03)


def test_beta_anneals_from_beta0_to_one():
    assert sampler.beta_at(0.0, 0.2) == pytest.approx(0.2)
    assert sampler.beta_at(0.5, 0.2) == pytest.approx(0.6)
    assert sampler.beta_at(1.0, 0.2) == pytest.approx(1.0)
    assert sampler.beta_at(2.0, 0.2) == pytest.approx(1.0)
