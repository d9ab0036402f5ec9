"""PPO losses and statistics on hand-computed cases."""

import math

import pytest
import torch

from trainer import losses


def test_policy_loss_clips_the_ratio_pessimistically():
    advantages = torch.tensor([1.0, 1.0, -1.0, -1.0])
    ratio = torch.tensor([1.5, 0.5, 1.5, 0.5])
    # per element max(-A r, -A clip(r, 0.8, 1.2)):
    #  A=1,r=1.5: max(-1.5,-1.2)=-1.2 ; A=1,r=0.5: max(-0.5,-0.8)=-0.5
    #  A=-1,r=1.5: max(1.5,1.2)=1.5   ; A=-1,r=0.5: max(0.5,0.8)=0.8
    expected = (-1.2 - 0.5 + 1.5 + 0.8) / 4
    assert losses.policy_loss(advantages, ratio, 0.2).item() == pytest.approx(expected)


def test_value_loss_takes_the_worse_of_clipped_and_unclipped():
    new = torch.tensor([1.0, 0.0])
    old = torch.tensor([0.0, 0.0])
    returns = torch.tensor([2.0, 1.0])
    # row 0: v=1, v_c = 0 + clip(1, -0.2, 0.2) = 0.2: max((1-2)^2, (0.2-2)^2) = 3.24
    # row 1: v=0, v_c = 0: max(1, 1) = 1
    errors = losses.value_errors(new, old, returns, 0.2)
    assert losses.value_loss(errors).item() == pytest.approx(0.5 * (3.24 + 1) / 2)


def test_value_clipping_off_is_the_plain_squared_error():
    new, old, returns = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0]), torch.tensor([2.0, 1.0])
    assert losses.value_errors(new, old, returns, None).tolist() == [1.0, 1.0]


def test_kl_stats():
    ratio = torch.tensor([1.0, 1.5, 0.5])
    logratio = ratio.log()
    stats = losses.kl_stats(logratio, ratio, 0.2)
    assert stats["old_approx_kl"].item() == pytest.approx(-logratio.mean().item())
    expected_k3 = sum((r - 1) - math.log(r) for r in (1.0, 1.5, 0.5)) / 3
    assert stats["approx_kl"].item() == pytest.approx(expected_k3)
    assert stats["clipfrac"].item() == pytest.approx(2 / 3)
    assert stats["importance"].item() == pytest.approx(1.0)


def test_explained_variance():
    returns = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert losses.explained_variance(returns, returns) == pytest.approx(1.0)
    assert losses.explained_variance(torch.zeros(4) + 2.5, returns) == pytest.approx(0.0)
    assert math.isnan(losses.explained_variance(returns, torch.ones(4)))
