"""The PPO losses of DOMAIN.md §3 and the statistics logged with them."""

from __future__ import annotations

import torch
from torch import Tensor


def policy_loss(advantages: Tensor, ratio: Tensor, clip_coef: float) -> Tensor:
    """Clipped surrogate: mean(max(-A * r, -A * clip(r, 1 - c, 1 + c)))."""
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip_coef, 1 + clip_coef)
    return torch.max(unclipped, clipped).mean()


def value_errors(new_values: Tensor, old_values: Tensor, returns: Tensor, vf_clip_coef: float | None) -> Tensor:
    """Per-step squared errors: max((v - R)^2, (v_c - R)^2), v_c = v_old + clip(v - v_old);
    plain (v - R)^2 when `vf_clip_coef` is None (value clipping off)."""
    if vf_clip_coef is None:
        return (new_values - returns) ** 2
    clipped = old_values + torch.clamp(new_values - old_values, -vf_clip_coef, vf_clip_coef)
    return torch.max((new_values - returns) ** 2, (clipped - returns) ** 2)


def value_loss(errors: Tensor) -> Tensor:
    """0.5 * mean of `value_errors`."""
    return 0.5 * errors.mean()


def summary(tensor: Tensor, prefix: str) -> dict[str, Tensor]:
    """mean, std and max |x| of `tensor`, named `<prefix>_mean`, `_std`, `_max_abs`."""
    return {f"{prefix}_mean": tensor.mean(), f"{prefix}_std": tensor.std(),
            f"{prefix}_max_abs": tensor.abs().max()}


def kl_stats(logratio: Tensor, ratio: Tensor, clip_coef: float) -> dict[str, Tensor]:
    """old_approx_kl, approx_kl (the low-variance k3 estimator), clipfrac, importance (mean ratio)."""
    return {
        "old_approx_kl": (-logratio).mean(),
        "approx_kl": ((ratio - 1) - logratio).mean(),
        "clipfrac": ((ratio - 1.0).abs() > clip_coef).float().mean(),
        "importance": ratio.mean(),
    }


def explained_variance(values: Tensor, returns: Tensor) -> float:
    """1 - Var(R - V) / Var(R); NaN when the returns do not vary."""
    var = returns.var()
    return float("nan") if var == 0 else float(1 - (returns - values).var() / var)
