"""E3B, exploration via elliptical episodic bonuses (DOMAIN.md §4): the bonus math, apart from the loop.

Per env (indexed by env id, not by buffer row) an inverse covariance `C_inv` [num_envs, H, H]
starts at `(1/ridge) I`. Each step, for the embedding `phi` of the observation that just
arrived: bonus `b = phi^T C_inv phi`, then the Sherman-Morrison update `u = C_inv phi;
C_inv -= u u^T / (1 + b)`, so `C_inv` stays `(ridge I + sum phi phi^T)^-1` over the episode.
On an episode's first step `C_inv` is reset (the ridge is added once, here) and the bonus is 0:
the agent did not act its way into a reset state. With `decay` set, the covariance is never
reset but decayed, `C <- decay C + phi phi^T` (the variant first streamed).

The same bonuses come out of a whole collected segment at once (`E3B.segment`, the default
without decay): by Woodbury, step t's bonus is `G_tt - g^T (I + G_<t)^-1 g` with
`G = Phi C0_inv Phi^T` over the segment's embeddings, which is `L_tt^2 - 1` for
`L = cholesky(I + G)`; so each env's `C_inv` is read and written once per block of steps
(32), in batched GEMMs, instead of once per step.

The raw bonus starts near `|phi|^2 / ridge`, large enough to swamp the value loss, so the
intrinsic reward is `coef * b / running_std(b)` (`norm`), and it joins the reward only.
The embedding is the policy's hidden state, detached, or `InverseDynamics`' encoder (the
paper's), trained with its own loss.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from trainer import extension
from trainer.algorithms.base import Algorithm, Means, Minibatch, Outputs

if TYPE_CHECKING:
    from trainer.train import Trainer


class RunningStd:
    """Standard deviation of every value seen so far (Chan et al.'s parallel merge, in float64)."""

    def __init__(self) -> None:
        self.count, self.mean, self.m2 = 0, 0.0, 0.0

    def update(self, values: Tensor) -> None:
        n = values.numel()
        if not n:
            return
        var, mean = torch.var_mean(values.detach().double(), correction=0)
        var, mean = torch.stack([var, mean]).tolist()  # one transfer: each step calls this
        m2 = var * n
        delta, total = mean - self.mean, self.count + n
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * self.count * n / total
        self.count = total

    @property
    def std(self) -> float:
        return (self.m2 / self.count) ** 0.5 if self.count > 1 else 1.0

    def state_dict(self) -> dict:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: dict) -> None:
        self.count, self.mean, self.m2 = state["count"], state["mean"], state["m2"]


TILE = 8  # csrc/e3b.h kTile
BATCHES = ("step", "segment")  # bonuses computed every step, or once per collected segment


def tile_layout(dim: int, device: torch.device) -> tuple[tuple[Tensor, Tensor, Tensor], int]:
    """Where the fused op keeps C_inv (csrc/e3b.h): ((slots, rows, cols), floats per env), where slot
    `slots[k]` of an env's tiles holds C_inv[rows[k], cols[k]]; the other slots are zero padding."""
    n = -(-dim // TILE)
    tile_rows, tile_cols = torch.triu_indices(n, n, device=device)
    r = torch.arange(TILE, device=device)
    rows = (tile_rows[:, None, None] * TILE + r[None, :, None]).expand(-1, TILE, TILE).reshape(-1)
    cols = (tile_cols[:, None, None] * TILE + r[None, None, :]).expand(-1, TILE, TILE).reshape(-1)
    inside = (rows < dim) & (cols < dim)
    return (inside.nonzero().squeeze(1), rows[inside], cols[inside]), rows.numel()


class E3B:
    """Per-env elliptical bonus: `step(phi, first)` gives each env's intrinsic reward for its new observation;
    with `batch="segment"`, `segment(phis, firsts)` gives a whole collected segment's at once."""

    def __init__(self, num_envs: int, dim: int, *, ridge: float = 0.1, coef: float = 1.0, decay: float | None = None,
                 norm: bool = True, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 backend: str = "auto", batch: str = "step", block: int = 32) -> None:
        if ridge <= 0:
            raise ValueError(f"e3b ridge must be > 0, got {ridge}")
        if decay is not None and not 0 < decay <= 1:
            raise ValueError(f"e3b decay must be in (0, 1], got {decay}")
        if batch not in BATCHES:
            raise ValueError(f"e3b batch must be one of {', '.join(BATCHES)}, got {batch!r}")
        if batch == "segment" and decay is not None:
            raise ValueError("e3b batch 'segment' has no decay variant: the decayed covariance needs batch 'step'")
        self.num_envs, self.dim, self.ridge, self.coef, self.decay, self.norm = num_envs, dim, ridge, coef, decay, norm
        self.batch = batch
        self.block = block  # steps per Cholesky in `segment`: T x T work grows as block^3, C_inv traffic as 1/block
        self.eye = torch.eye(dim, device=device, dtype=dtype) / ridge
        self.stats = RunningStd()
        self.last_raw = torch.zeros(num_envs, device=device, dtype=dtype)
        # csrc/e3b_*: the whole step in one pass per env over the tiles on and above C_inv's diagonal
        # (`packed`, layout in csrc/e3b.h); the torch code below, on full matrices, is its fallback and reference.
        # `segment` works on full matrices, read once per segment.
        self.compiled = batch == "step" and extension.use_compiled(torch.device(device), backend, "E3B step")
        if self.compiled:
            self.slots, size = tile_layout(dim, torch.device(device))
            self.packed = self.eye.new_zeros(num_envs, size)
            self.packed[:, self.slots[0]] = self.eye[self.slots[1:]]
        else:
            self.full = self.eye.repeat(num_envs, 1, 1)

    @property
    def c_inv(self) -> Tensor:
        """The inverse covariances [num_envs, H, H] (a copy when the fused op keeps them tiled)."""
        if not self.compiled:
            return self.full
        full = self.packed.new_empty(self.num_envs, self.dim, self.dim)
        slots, rows, cols = self.slots
        full[:, cols, rows] = self.packed[:, slots]
        full[:, rows, cols] = self.packed[:, slots]
        return full

    @torch.no_grad()
    def step(self, phi: Tensor, first: Tensor) -> Tensor:
        """Intrinsic rewards [num_envs] for embeddings `phi` [num_envs, H] of the observations that
        just arrived; `first` [num_envs] bool marks observations that start an episode."""
        phi = phi.detach().to(self.eye.dtype)
        d = 1.0 if self.decay is None else self.decay
        if self.compiled:
            bonus = torch.empty_like(self.last_raw)
            torch.ops.puffctl.e3b_step(self.packed, phi, first, self.ridge, d, self.decay is None, bonus)
        else:
            bonus = self._torch_step(phi, first, d)
        self.last_raw = bonus
        return self._scale(bonus, first)

    @torch.no_grad()
    def segment(self, phi: Tensor, first: Tensor) -> Tensor:
        """Intrinsic rewards [num_envs, T] for a whole segment of embeddings `phi` [num_envs, T, H]
        (`first` [num_envs, T] bool): the bonuses of T calls of `step`, C_inv read and written once per `block` steps.
        With `norm`, the running std takes the whole segment's bonuses before any of them is scaled."""
        if self.batch != "segment":
            raise RuntimeError("E3B.segment needs E3B(..., batch='segment')")
        phi = phi.detach().to(self.eye.dtype)
        raw = torch.cat([self._block(phi[:, t:t + self.block], first[:, t:t + self.block])
                         for t in range(0, phi.shape[1], self.block)], dim=1)
        self.last_raw = raw
        return self._scale(raw, first)

    def _block(self, phi: Tensor, first: Tensor) -> Tensor:
        """Raw bonuses [num_envs, T] of T consecutive steps, and C_inv moved past them."""
        episode = first.cumsum(1)  # 0: the episode carried in from the last segment, k: the k-th started here
        # rows phi_t A: A = the carried C_inv for the carried episode, I / ridge for episodes started here
        scaled = torch.bmm(phi, self.full)
        fresh = episode > 0
        scaled[fresh] = phi[fresh] * (1.0 / self.ridge)  # (indexing: torch.where over all rows is slower on CPUs)
        # steps of different episodes do not interact: I + G is block-diagonal, and so are L and L^-1
        gram = torch.bmm(scaled, phi.mT).masked_fill_(episode[:, :, None] != episode[:, None, :], 0.0).double()
        gram.diagonal(dim1=1, dim2=2).add_(1.0)
        factor = torch.linalg.cholesky(gram)  # float64: diag^2 - 1 cancels where the bonus is small
        raw = (factor.diagonal(dim1=1, dim2=2).square() - 1.0).to(phi.dtype) * ~first
        # the last episode's steps join its starting C_inv: C_inv = A - W^T W, W = L^-1 (Phi A) on its rows
        # (L^-1 as a T x T solve, then one GEMM: a solve against the [T, H] rows directly is slower on CPUs)
        last = episode == episode[:, -1:]
        eye = torch.eye(phi.shape[1], dtype=factor.dtype, device=factor.device).expand_as(factor)
        inverse = torch.linalg.solve_triangular(factor, eye, upper=False)
        w = torch.bmm((inverse * last[:, None, :]).to(phi.dtype), scaled)
        self.full[first.any(1)] = self.eye
        self.full.baddbmm_(w.mT, w, alpha=-1.0)
        return raw

    def _scale(self, raw: Tensor, first: Tensor) -> Tensor:
        if not self.norm:
            return self.coef * raw
        self.stats.update(raw[~first])
        return raw * (self.coef / max(self.stats.std, 1e-8))

    def _torch_step(self, phi: Tensor, first: Tensor, d: float) -> Tensor:
        if self.decay is None:
            self.full[first] = self.eye
        u = torch.bmm(self.full, phi.unsqueeze(-1)).squeeze(-1)
        raw = (phi * u).sum(-1)
        # one in-place pass over [num_envs, H, H]: C_inv <- C_inv / d - u u^T / (d (d + b)), d = decay or 1,
        # which is Sherman-Morrison for (d C + phi phi^T)^-1 given (d C)^-1 = C_inv / d
        self.full.baddbmm_(u.unsqueeze(-1), (u / (d * (d + raw))[:, None]).unsqueeze(-2), beta=1.0 / d, alpha=-1.0)
        return raw * ~first

    def state_dict(self) -> dict:
        return {"c_inv": self.c_inv if self.compiled else self.full.clone(), "stats": self.stats.state_dict()}  # c_inv: a copy either way

    def load_state_dict(self, state: dict) -> None:
        if self.compiled:
            self.packed[:, self.slots[0]] = state["c_inv"][:, self.slots[1], self.slots[2]].to(self.packed)
        else:
            self.full.copy_(state["c_inv"])
        self.stats.load_state_dict(state["stats"])


class InverseDynamics(nn.Module):
    """The paper's embedding: an encoder `phi(obs)` trained to tell which action led from one
    observation to the next (cross-entropy over `head([phi(s), phi(s')])`)."""

    def __init__(self, obs_size: int, n_actions: int, dim: int = 128) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(obs_size, dim), nn.GELU(), nn.Linear(dim, dim))
        self.head = nn.Sequential(nn.Linear(2 * dim, dim), nn.GELU(), nn.Linear(dim, n_actions))

    def forward(self, obs: Tensor) -> Tensor:
        return self.encoder(obs)

    def loss(self, obs: Tensor, next_obs: Tensor, actions: Tensor, valid: Tensor) -> Tensor:
        """Mean cross-entropy of predicting `actions` [B] from (obs, next_obs) [B, obs_size], over `valid` pairs
        (pairs that cross an episode boundary are not transitions)."""
        logits = self.head(torch.cat([self.encoder(obs), self.encoder(next_obs)], dim=-1))
        losses = nn.functional.cross_entropy(logits, actions.long(), reduction="none")
        return (losses * valid).sum() / valid.sum().clamp(min=1)


class E3BBonus(Algorithm):
    """E3B in the loop: each collected step's bonus joins the rewards the trainer stores.

    Keys (train section): `e3b_coef` (> 0 enables it), `e3b_ridge`, `e3b_decay` (null = reset
    per episode), `e3b_norm`, `e3b_embedding` (`hidden`: the policy's embedding, detached; or
    `inverse_dynamics`, its own encoder of `e3b_dim` trained with `e3b_id_coef * loss`),
    `e3b_batch` (`segment`: the step's embedding is recorded, and the row block's bonuses are
    added to its stored rewards when it ends; `step`: added as each step is stored).
    Metrics: intrinsic reward mean and max, its share of all reward, seconds spent per epoch.
    """

    @classmethod
    def enabled(cls, config: dict) -> bool:
        return config["train"]["e3b_coef"] > 0

    def __init__(self, config: dict, *, num_envs: int, segments: int, device: torch.device) -> None:
        train, policy = config["train"], config["policy"]
        self.embedding = train["e3b_embedding"]
        if self.embedding == "inverse_dynamics":
            dim = train["e3b_dim"]
        else:
            dim = policy["lstm_hidden_size"] if policy["lstm"] else policy["hidden_size"]
        batch = train["e3b_batch"]
        if batch == "auto":
            batch = "step" if train["e3b_decay"] is not None else "segment"
        self.bonus = E3B(num_envs, dim, ridge=train["e3b_ridge"], coef=train["e3b_coef"], decay=train["e3b_decay"],
                         norm=train["e3b_norm"], device=device, batch=batch)
        if batch == "segment":  # this row block's embeddings and episode starts, column by column
            self.phis = torch.zeros(num_envs, train["bptt_horizon"], dim, device=device)
            self.firsts = torch.zeros(num_envs, train["bptt_horizon"], dtype=torch.bool, device=device)
            self.column = 0
        self.id_coef = train["e3b_id_coef"]
        self.model: InverseDynamics | None = None
        self.obs: Tensor | None = None
        self.stats = Means()
        self.seconds = 0.0
        self.trainer: Trainer | None = None

    def attach(self, trainer: Trainer) -> None:
        from gymnasium import spaces

        self.trainer = trainer
        if self.embedding == "inverse_dynamics":
            space = trainer.envs.single_action_space
            if not isinstance(space, spaces.Discrete):
                raise ValueError(f"e3b_embedding: inverse_dynamics needs a Discrete action space, not {space}")
            self.model = InverseDynamics(trainer.envs.obs_size, int(space.n), self.bonus.dim).to(trainer.device)

    def modules(self) -> list[nn.Module]:
        return [self.model] if self.model is not None else []

    def policy_inputs(self, obs: Tensor, rows: Any, first: Tensor | None) -> Tensor:
        if first is not None:
            self.obs = obs  # the env's observation of this step, for the inverse-dynamics encoder
        return obs

    def shape_rewards(self, rewards: Tensor, first: Tensor, hidden: Tensor, rows: slice) -> Tensor:
        start = time.perf_counter()
        phi = hidden if self.model is None else self.model(self.obs)
        if self.bonus.batch == "segment":
            self.phis[:, self.column] = phi
            self.firsts[:, self.column] = first
            self.column += 1
            self.seconds += time.perf_counter() - start
            return rewards
        intrinsic = self.bonus.step(phi.float(), first.bool())
        self.seconds += time.perf_counter() - start
        self._log(intrinsic, rewards)
        return rewards + intrinsic

    def end_segment(self, rows: slice) -> None:
        if self.bonus.batch != "segment":
            return
        start = time.perf_counter()
        intrinsic = self.bonus.segment(self.phis, self.firsts)
        experience = self.trainer.experience
        self._log(intrinsic, experience.rewards[rows])
        experience.rewards[rows] += intrinsic
        if rows.start >= self.bonus.num_envs:  # column 0's reward is also the previous row block's bootstrap reward
            experience.next_rewards[rows.start - self.bonus.num_envs:rows.start] += intrinsic[:, 0]
        self.column = 0
        self.seconds += time.perf_counter() - start

    def _log(self, intrinsic: Tensor, rewards: Tensor) -> None:
        self.stats.add("e3b_intrinsic_mean", intrinsic.sum(), intrinsic.numel())
        self.stats.peak("e3b_intrinsic_max", intrinsic.max())
        self.stats.add("e3b_share", intrinsic.sum(), intrinsic.sum() + rewards.abs().sum())

    def loss(self, batch: Minibatch, out: Outputs) -> Tensor | None:
        if self.model is None:
            return None
        size = self.trainer.envs.obs_size
        obs = batch.obs[..., :size]
        experience = self.trainer.experience
        ended = torch.maximum(experience.terminations[batch.rows], experience.truncations[batch.rows])
        valid = 1.0 - ended[:, 1:]  # (obs t, action t) -> obs t+1 within one episode
        loss = self.model.loss(obs[:, :-1].flatten(0, 1), obs[:, 1:].flatten(0, 1), batch.actions[:, :-1].flatten(),
                               valid.flatten())
        self.stats.add("e3b_id_loss", loss.detach())
        return self.id_coef * loss

    def metrics(self) -> dict[str, float]:
        out = self.stats.read()
        out["e3b_seconds"], self.seconds = self.seconds, 0.0
        out["e3b_raw_std"] = self.bonus.stats.std
        return out

    def state_dict(self) -> dict[str, Any]:
        state = {"bonus": self.bonus.state_dict()}
        if self.model is not None:
            state["model"] = self.model.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "bonus" in state:
            self.bonus.load_state_dict(state["bonus"])
        if self.model is not None and "model" in state:
            self.model.load_state_dict(state["model"])
