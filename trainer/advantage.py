"""Advantage estimators of DOMAIN.md section 2: GAE, puff advantage and V-trace.

The trainer calls `compute`. It runs the compiled csrc/ ops when a build for this torch exists
(`puffctl build`) and otherwise the pure-torch implementation below, warning once. The pure-torch
path (`backend="torch"`) is also the independent reference the tests hold the kernels to.

Inputs are [rows, horizon] float32 on one device, laid out as DOMAIN.md section 1: rewards[t]
and dones[t] arrived with obs[t]. `importance` holds the ratios w (None: on-policy, all ones).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from trainer import extension

ESTIMATORS = ("gae", "puff", "vtrace")
BACKENDS = extension.BACKENDS


class Bootstrap(NamedTuple):
    """The step after each row's last column: its reward, value and done flag, each [rows]."""

    rewards: Tensor
    values: Tensor
    dones: Tensor


def compiled_flavor() -> str | None:
    """The flavour of the loaded compiled ops ("cpu" or "cuda"), or None when none is built."""
    return extension.load()


def _use_compiled(device: torch.device, backend: str) -> bool:
    return extension.use_compiled(device, backend, "advantage ops")


def _check(op: str, values: Tensor, named: dict[str, Tensor | None], bootstrap: Bootstrap | None) -> None:
    """The compiled ops' own checks, so both paths fail alike, naming the tensor."""
    for name, t in {"values": values, **named}.items():
        if t is None:
            continue
        if t.dim() != 2:
            raise ValueError(f"puffctl.{op}: {name} must be 2-D [rows, horizon], got shape {list(t.shape)}")
        if t.dtype != torch.float32:
            raise TypeError(f"puffctl.{op}: {name} must be float32, got {t.dtype}")
        if t.shape != values.shape:
            raise ValueError(f"puffctl.{op}: {name} has shape {list(t.shape)} but values has shape {list(values.shape)}")
        if t.device != values.device:
            raise ValueError(f"puffctl.{op}: {name} is on {t.device} but values is on {values.device}")
    if values.shape[1] < 1:
        raise ValueError(f"puffctl.{op}: horizon (values.shape[1]) must be at least 1")
    if bootstrap is None:
        return
    for name, t in zip(("bootstrap_rewards", "bootstrap_values", "bootstrap_dones"), bootstrap):
        if t.dim() != 1 or t.shape[0] != values.shape[0]:
            raise ValueError(f"puffctl.{op}: {name} must be 1-D [rows] = [{values.shape[0]}], got shape {list(t.shape)}")
        if t.dtype != torch.float32:
            raise TypeError(f"puffctl.{op}: {name} must be float32, got {t.dtype}")
        if t.device != values.device:
            raise ValueError(f"puffctl.{op}: {name} is on {t.device} but values is on {values.device}")


def _reference(estimator: str, values: Tensor, rewards: Tensor, dones: Tensor, importance: Tensor | None,
               gamma: float, gae_lambda: float, rho_clip: float, c_clip: float,
               bootstrap: Bootstrap | None) -> tuple[Tensor, Tensor | None]:
    """Pure torch, vectorized over rows: one backward loop over the horizon."""
    rows, horizon = values.shape
    if bootstrap is None:
        # No successor for the last column: it keeps advantage 0 (scan over horizon - 1 columns).
        next_rewards, next_values, next_dones = rewards[:, 1:], values[:, 1:], dones[:, 1:]
    else:
        next_rewards = torch.cat([rewards[:, 1:], bootstrap.rewards[:, None]], dim=1)
        next_values = torch.cat([values[:, 1:], bootstrap.values[:, None]], dim=1)
        next_dones = torch.cat([dones[:, 1:], bootstrap.dones[:, None]], dim=1)
    cols = next_rewards.shape[1]
    current = values[:, :cols]
    nd = 1.0 - next_dones
    if estimator == "gae":
        rho = c = torch.ones_like(current)
    else:
        w = torch.ones_like(current) if importance is None else importance[:, :cols]
        rho, c = w.clamp(max=rho_clip), w.clamp(max=c_clip)
    delta = rho * (next_rewards + gamma * next_values * nd - current)
    trace = 1.0 if estimator == "vtrace" else gae_lambda
    coef = gamma * trace * c * nd

    scanned = torch.zeros_like(values)
    carry = torch.zeros(rows, dtype=values.dtype, device=values.device)
    for t in range(cols - 1, -1, -1):
        carry = delta[:, t] + coef[:, t] * carry
        scanned[:, t] = carry
    if estimator != "vtrace":
        return scanned, None
    vs = values + scanned
    return vs, vtrace_pg(vs, values, rewards, dones, importance, gamma=gamma, rho_clip=rho_clip, bootstrap=bootstrap)


def vtrace_pg(vs: Tensor, values: Tensor, rewards: Tensor, dones: Tensor, importance: Tensor | None, *,
              gamma: float, rho_clip: float, bootstrap: Bootstrap | None = None) -> Tensor:
    """V-trace policy advantages from the targets `vs`:
    pg[t] = min(w[t], rho_clip) * (rewards[t+1] + gamma * nd[t] * vs[t+1] - values[t]).
    TorchBeast's separate policy-gradient rho clip is this with its own `rho_clip`."""
    if bootstrap is None:
        next_rewards, next_dones, next_vs = rewards[:, 1:], dones[:, 1:], vs[:, 1:]
    else:
        next_rewards = torch.cat([rewards[:, 1:], bootstrap.rewards[:, None]], dim=1)
        next_dones = torch.cat([dones[:, 1:], bootstrap.dones[:, None]], dim=1)
        next_vs = torch.cat([vs[:, 1:], bootstrap.values[:, None]], dim=1)
    cols = next_rewards.shape[1]
    w = torch.ones_like(next_rewards) if importance is None else importance[:, :cols]
    pg = torch.zeros_like(values)
    pg[:, :cols] = w.clamp(max=rho_clip) * (next_rewards + gamma * (1.0 - next_dones) * next_vs - values[:, :cols])
    return pg


def _boot_args(bootstrap: Bootstrap | None) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    return (None, None, None) if bootstrap is None else tuple(bootstrap)  # type: ignore[return-value]


def gae(values: Tensor, rewards: Tensor, dones: Tensor, *, gamma: float, gae_lambda: float,
        bootstrap: Bootstrap | None = None, out: Tensor | None = None, backend: str = "auto") -> Tensor:
    """Generalized advantage estimation; returns `out` (allocated when not given)."""
    _check("gae", values, {"rewards": rewards, "dones": dones, "advantages": out}, bootstrap)
    out = torch.empty_like(values, memory_format=torch.contiguous_format) if out is None else out
    if _use_compiled(values.device, backend):
        torch.ops.puffctl.gae(values, rewards, dones, gamma, gae_lambda, out, *_boot_args(bootstrap))
    else:
        out.copy_(_reference("gae", values, rewards, dones, None, gamma, gae_lambda, 1.0, 1.0, bootstrap)[0])
    return out


def puff_advantage(values: Tensor, rewards: Tensor, dones: Tensor, importance: Tensor | None = None, *,
                   gamma: float, gae_lambda: float, rho_clip: float = 1.0, c_clip: float = 1.0,
                   bootstrap: Bootstrap | None = None, out: Tensor | None = None, backend: str = "auto") -> Tensor:
    """GAE with V-trace's clipped importance ratios (PufferLib's default); returns `out`."""
    _check("puff_advantage", values,
           {"rewards": rewards, "dones": dones, "importance": importance, "advantages": out}, bootstrap)
    out = torch.empty_like(values, memory_format=torch.contiguous_format) if out is None else out
    if _use_compiled(values.device, backend):
        torch.ops.puffctl.puff_advantage(values, rewards, dones, importance, gamma, gae_lambda, rho_clip, c_clip,
                                         out, *_boot_args(bootstrap))
    else:
        out.copy_(_reference("puff", values, rewards, dones, importance, gamma, gae_lambda, rho_clip, c_clip,
                             bootstrap)[0])
    return out


def vtrace(values: Tensor, rewards: Tensor, dones: Tensor, importance: Tensor | None = None, *,
           gamma: float, rho_clip: float = 1.0, c_clip: float = 1.0, bootstrap: Bootstrap | None = None,
           out: tuple[Tensor, Tensor] | None = None, backend: str = "auto") -> tuple[Tensor, Tensor]:
    """V-trace value targets `vs` and policy advantages `pg`; returns (vs, pg)."""
    vs_out, pg_out = (None, None) if out is None else out
    _check("vtrace", values, {"rewards": rewards, "dones": dones, "importance": importance,
                              "vs": vs_out, "pg_advantages": pg_out}, bootstrap)
    vs_out = torch.empty_like(values, memory_format=torch.contiguous_format) if vs_out is None else vs_out
    pg_out = torch.empty_like(values, memory_format=torch.contiguous_format) if pg_out is None else pg_out
    if _use_compiled(values.device, backend):
        torch.ops.puffctl.vtrace(values, rewards, dones, importance, gamma, rho_clip, c_clip, vs_out, pg_out,
                                 *_boot_args(bootstrap))
    else:
        vs, pg = _reference("vtrace", values, rewards, dones, importance, gamma, 1.0, rho_clip, c_clip, bootstrap)
        vs_out.copy_(vs)
        pg_out.copy_(pg)
    return vs_out, pg_out


def compute(values: Tensor, rewards: Tensor, dones: Tensor, importance: Tensor | None = None, *,
            estimator: str = "puff", gamma: float, gae_lambda: float, rho_clip: float = 1.0, c_clip: float = 1.0,
            pg_rho_clip: float | None = None, bootstrap: Bootstrap | None = None,
            backend: str = "auto") -> tuple[Tensor, Tensor]:
    """(advantages, returns): the policy advantages and value targets of `estimator`.

    gae and puff: returns = advantages + values. vtrace: advantages = pg, returns = vs, and
    `pg_rho_clip` (None: `rho_clip`) clips the ratio in pg only.
    """
    if estimator == "gae":
        advantages = gae(values, rewards, dones, gamma=gamma, gae_lambda=gae_lambda, bootstrap=bootstrap,
                         backend=backend)
    elif estimator == "puff":
        advantages = puff_advantage(values, rewards, dones, importance, gamma=gamma, gae_lambda=gae_lambda,
                                    rho_clip=rho_clip, c_clip=c_clip, bootstrap=bootstrap, backend=backend)
    elif estimator == "vtrace":
        vs, pg = vtrace(values, rewards, dones, importance, gamma=gamma, rho_clip=rho_clip, c_clip=c_clip,
                        bootstrap=bootstrap, backend=backend)
        if pg_rho_clip is not None and pg_rho_clip != rho_clip:
            pg = vtrace_pg(vs, values, rewards, dones, importance, gamma=gamma, rho_clip=pg_rho_clip,
                           bootstrap=bootstrap)
        return pg, vs
    else:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    return advantages, advantages + values
