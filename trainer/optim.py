"""Optimizers (Adam, or Muon for 2-D weights with Adam for the rest) and the LR schedule."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable

import torch
from torch import Tensor, nn

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # torch.optim.Muon's (Keller Jordan's) quintic


def skip_compile_guards() -> None:
    """Let torch.optim run without importing torch._dynamo, about 2 s of CPU at every start.

    torch.optim guards its methods against torch.compile: add_param_group, zero_grad and
    state_dict through a wrapper that imports torch._dynamo on its first call and caches what it
    made on the function; Adam's step through one that imports it on every call (to mark graph
    breaks). The trainer never compiles. This caches the plain method in the first wrapper's place,
    and `Optimizers.step` calls the second's wrapped step under no_grad, as the wrapper would. A
    torch whose wrappers differ, or a process that has imported torch._dynamo, is left alone."""
    if "torch._dynamo" in sys.modules or not hasattr(torch, "_disable_dynamo"):
        return
    guard = torch._disable_dynamo(lambda: None).__code__
    for method in vars(torch.optim.Optimizer).values():
        if getattr(method, "__code__", None) is guard and hasattr(method, "__wrapped__"):
            setattr(method.__wrapped__, "__dynamo_disable", method.__wrapped__)


def _eager_step(optimizer: torch.optim.Optimizer) -> Callable[[], object]:
    """optimizer.step, or the step inside its graph-break guard run as the guard runs it
    (no_grad unless differentiable); step hooks, which the trainer does not use, are skipped."""
    step_guard = getattr(sys.modules.get("torch.optim.optimizer"), "_use_grad_for_differentiable", None)
    hooked = getattr(type(optimizer).step, "__wrapped__", None)
    plain = getattr(hooked, "__wrapped__", None)
    if step_guard is None or plain is None or "torch._dynamo" in sys.modules or \
            getattr(hooked, "__code__", None) is not step_guard(lambda: None).__code__:
        return optimizer.step

    def step() -> object:
        with torch.set_grad_enabled(bool(optimizer.defaults.get("differentiable", False))):
            return plain(optimizer)
    return step


class Optimizers:
    """One or two torch optimizers driven as one: zero_grad, step, lr, state_dict."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]) -> None:
        self.optimizers = optimizers
        self._steps = [_eager_step(optimizer) for optimizer in optimizers]

    def zero_grad(self) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)

    def step(self) -> None:
        for step in self._steps:
            step()

    def set_lr(self, lr: float) -> None:
        for optimizer in self.optimizers:
            for group in optimizer.param_groups:
                group["lr"] = lr

    def state_dict(self) -> list[dict]:
        return [optimizer.state_dict() for optimizer in self.optimizers]

    def load_state_dict(self, states: list[dict]) -> None:
        for optimizer, state in zip(self.optimizers, states, strict=True):
            optimizer.load_state_dict(state)


class Muon(torch.optim.Optimizer):
    """torch.optim.Muon's update (Nesterov momentum, 5 quintic Newton-Schulz steps, the
    match_rms_adamw scale), with the Newton-Schulz matmuls in float32 on CPU.

    torch.optim.Muon always iterates in bfloat16, which a CPU without native bfloat16 matmuls
    (AVX2) runs about 20x slower than float32: for the LSTM-128 policy that was a fifth of the
    training phase. Same param-group keys and state as torch.optim.Muon, so either loads the
    other's state_dict. `ns_dtype` None: bfloat16 on accelerators, float32 on CPU.
    """

    def __init__(self, params, lr: float, momentum: float = 0.95, nesterov: bool = True,
                 weight_decay: float = 0.0, ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
                 eps: float = 1e-7, ns_steps: int = 5, adjust_lr_fn: str | None = "match_rms_adamw",
                 ns_dtype: torch.dtype | None = None) -> None:
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                                      ns_coefficients=ns_coefficients, eps=eps, ns_steps=ns_steps,
                                      adjust_lr_fn=adjust_lr_fn))
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            momentum = group["momentum"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(param.grad)
                buffer = state["momentum_buffer"]
                buffer.lerp_(param.grad, 1 - momentum)
                update = param.grad.lerp(buffer, momentum) if group["nesterov"] else buffer
                dtype = self.ns_dtype or (torch.float32 if param.device.type == "cpu" else torch.bfloat16)
                update = orthogonalize(update, group["ns_coefficients"], group["ns_steps"], group["eps"], dtype)
                param.mul_(1 - group["lr"] * group["weight_decay"])
                param.add_(update, alpha=-group["lr"] * _lr_scale(group["adjust_lr_fn"], *param.shape))


def _lr_scale(adjust_lr_fn: str | None, rows: int, cols: int) -> float:
    """torch.optim.Muon's learning-rate adjustment for a [rows, cols] weight."""
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    if adjust_lr_fn in (None, "original"):
        return math.sqrt(max(1.0, rows / cols))
    return 1.0


def orthogonalize(matrix: Tensor, coefficients: tuple[float, float, float], steps: int, eps: float,
                  dtype: torch.dtype) -> Tensor:
    """The quintic Newton-Schulz iteration towards the nearest semi-orthogonal matrix (singular
    values end up in about [0.5, 1.5]), as torch.optim.Muon runs it, in `dtype`."""
    a, b, c = coefficients
    x = matrix.to(dtype)
    tall = matrix.size(0) > matrix.size(1)
    if tall:
        x = x.T
    x = x / x.norm().clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


def make_optimizer(policy: nn.Module, train: dict) -> Optimizers:
    """`train.optimizer`: adam, or muon (Muon on every 2-D weight, Adam on the rest)."""
    adam = dict(lr=train["learning_rate"], betas=(train["adam_beta1"], train["adam_beta2"]),
                eps=train["adam_eps"])
    skip_compile_guards()
    params = list(policy.parameters())
    if train["optimizer"] == "adam":
        return Optimizers([torch.optim.Adam(params, **adam)])
    matrices = [p for p in params if p.ndim == 2]
    others = [p for p in params if p.ndim != 2]
    muon = Muon(matrices, lr=train["learning_rate"], momentum=train["muon_momentum"])
    return Optimizers([muon, torch.optim.Adam(others, **adam)])


def learning_rate(train: dict, epoch: int, total_epochs: int) -> float:
    """Cosine anneal from learning_rate to learning_rate * min_lr_ratio over the epochs."""
    lr = train["learning_rate"]
    if not train["anneal_lr"]:
        return lr
    low = lr * train["min_lr_ratio"]
    progress = min(epoch / max(total_epochs, 1), 1.0)
    return low + (lr - low) * 0.5 * (1.0 + math.cos(math.pi * progress))
