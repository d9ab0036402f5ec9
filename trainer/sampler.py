"""Prioritized segment sampling (DOMAIN.md §3): rows drawn by the size of their advantages,
with importance weights that undo the bias as beta anneals to 1."""

from __future__ import annotations

import torch
from torch import Tensor


def priorities(advantages: Tensor, alpha: float) -> Tensor:
    """Sampling probability of each row: (sum_t |A[i, t]|) ** alpha, normalized.
    Uniform when every advantage is zero."""
    weights = advantages.abs().sum(dim=1).pow(alpha)
    weights = torch.nan_to_num(weights, nan=0.0, posinf=0.0, neginf=0.0)
    total = weights.sum()
    uniform = torch.full_like(weights, 1.0 / len(weights))
    return torch.where(total > 0, weights / total, uniform)


def sample(advantages: Tensor, rows: int, alpha: float, beta: float) -> tuple[Tensor, Tensor]:
    """Draw `rows` distinct rows by priority; return (indices [rows], weights [rows]) with
    weight (N * p_i) ** -beta."""
    probs = priorities(advantages, alpha)
    idx = torch.multinomial(probs, rows, replacement=False)
    weights = (len(probs) * probs[idx]).pow(-beta)
    return idx, weights


def beta_at(progress: float, beta0: float) -> float:
    """Importance exponent annealed linearly from beta0 (start) to 1 (end of training)."""
    return beta0 + (1.0 - beta0) * min(max(progress, 0.0), 1.0)
