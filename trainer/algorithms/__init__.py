"""Algorithms that plug into the trainer's seams (trainer/algorithms/base.py), one module each.

`build` composes the ones a config enables into the single `Algorithm` the trainer calls:
the no-op base class when none is, so the baseline loop pays one call per seam.
"""

from __future__ import annotations

import torch

from trainer.algorithms.base import Algorithm, Minibatch, Outputs, Stack
from trainer.algorithms.diayn import DiaynSkills
from trainer.algorithms.e3b import E3BBonus
from trainer.algorithms.replay import Replay

#: Every algorithm, in the order their hooks run (inputs appended, rewards shaped, losses summed).
#: E3B before DIAYN: its inverse-dynamics encoder sees the env's own observation, and DIAYN's
#: one_hot(z) is then the first extra input.
REGISTRY: tuple[type[Algorithm], ...] = (Replay, E3BBonus, DiaynSkills)

__all__ = ["REGISTRY", "Algorithm", "Minibatch", "Outputs", "Stack", "build"]


def build(config: dict, *, num_envs: int, segments: int, device: torch.device) -> Algorithm:
    """The algorithms `config` enables, as one: each is constructed as
    `cls(config, num_envs=..., segments=..., device=...)` before the policy and buffer exist."""
    active = [cls(config, num_envs=num_envs, segments=segments, device=device)
              for cls in REGISTRY if cls.enabled(config)]
    if not active:
        return Algorithm()
    return active[0] if len(active) == 1 else Stack(active)
