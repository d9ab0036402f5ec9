"""Optimizers (Adam, or Muon for 2-D weights with Adam for the rest) and the LR schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from trainer.config import ConfigError


class Optimizers:
    """One or two torch optimizers driven as one: zero_grad, step, lr, state_dict."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]) -> None:
        self.optimizers = optimizers

    def zero_grad(self) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)

    def step(self) -> None:
        for optimizer in self.optimizers:
            optimizer.step()

    def set_lr(self, lr: float) -> None:
        for optimizer in self.optimizers:
            for group in optimizer.param_groups:
                group["lr"] = lr

    def state_dict(self) -> list[dict]:
        return [optimizer.state_dict() for optimizer in self.optimizers]

    def load_state_dict(self, states: list[dict]) -> None:
        for optimizer, state in zip(self.optimizers, states, strict=True):
            optimizer.load_state_dict(state)


def make_optimizer(policy: nn.Module, train: dict) -> Optimizers:
    """`train.optimizer`: adam, or muon (torch.optim.Muon on every 2-D weight, Adam on the rest)."""
    adam = dict(lr=train["learning_rate"], betas=(train["adam_beta1"], train["adam_beta2"]),
                eps=train["adam_eps"])
    params = list(policy.parameters())
    if train["optimizer"] == "adam":
        return Optimizers([torch.optim.Adam(params, **adam)])
    if not hasattr(torch.optim, "Muon"):
        raise ConfigError(f"train.optimizer=muon needs torch.optim.Muon, which torch {torch.__version__} lacks "
                          "(torch 2.9 or newer has it): set train.optimizer=adam or upgrade torch")
    matrices = [p for p in params if p.ndim == 2]
    others = [p for p in params if p.ndim != 2]
    muon = torch.optim.Muon(matrices, lr=train["learning_rate"], weight_decay=0.0,
                            momentum=train["muon_momentum"], nesterov=True,
                            adjust_lr_fn="match_rms_adamw")
    return Optimizers([muon, torch.optim.Adam(others, **adam)])


def learning_rate(train: dict, epoch: int, total_epochs: int) -> float:
    """Cosine anneal from learning_rate to learning_rate * min_lr_ratio over the epochs."""
    lr = train["learning_rate"]
    if not train["anneal_lr"]:
        return lr
    low = lr * train["min_lr_ratio"]
    progress = min(epoch / max(total_epochs, 1), 1.0)
    return low + (lr - low) * 0.5 * (1.0 + math.cos(math.pi * progress))
