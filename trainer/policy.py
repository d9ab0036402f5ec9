"""The policy: an MLP encoder, an optional LSTM, an action head and a value head.

Action heads: categorical (Discrete), one categorical per dimension (MultiDiscrete), and a
diagonal Gaussian with a learned log-std (Box). The LSTM keeps one state per env during
collection (`step`) and runs BPTT over a whole segment in training (`sequence`), starting from
the state the segment was collected with. Outputs are float32 even under bfloat16 autocast. The state carries across episode boundaries inside an
env, in collection and training alike, so both see the same computation.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from trainer import extension

State = tuple[Tensor, Tensor] | None


class _CompiledGELU(torch.autograd.Function):
    """torch's exact GELU through the csrc ops puffctl::gelu and gelu_backward (float32 on CPU)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return torch.ops.puffctl.gelu(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return torch.ops.puffctl.gelu_backward(grad, x)


class GELU(nn.GELU):
    """nn.GELU that runs the compiled kernels on float32 CPU tensors when the csrc/ extension is
    built (its backward took three times its forward in torch: csrc/gelu_ops.cpp); torch's otherwise."""

    def __init__(self) -> None:
        super().__init__()
        self.compiled = extension.use_compiled(torch.device("cpu"), "auto", "GELU")

    def forward(self, x: Tensor) -> Tensor:
        if self.compiled and x.dtype == torch.float32 and x.device.type == "cpu":
            if not torch.is_grad_enabled():  # collection: the op alone, without autograd's Function call
                return torch.ops.puffctl.gelu(x)
            return _CompiledGELU.apply(x)
        return super().forward(x)


ACTIVATIONS = {"gelu": GELU, "relu": nn.ReLU, "tanh": nn.Tanh}


class _CompiledLSTM(torch.autograd.Function):
    """One nn.LSTM layer over a time-major segment through the csrc ops puffctl::lstm_forward and
    lstm_backward (float32 on CPU): its output only, the final state is not needed in training."""

    @staticmethod
    def forward(ctx, x: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor,
                b_hh: Tensor) -> Tensor:
        out, cells, gates = torch.ops.puffctl.lstm_forward(x, h0, c0, w_ih, w_hh, b_ih + b_hh)
        ctx.save_for_backward(x, h0, c0, w_ih, w_hh, out, cells, gates)
        return out

    @staticmethod
    def backward(ctx, dout: Tensor):
        dx, dh0, dc0, dw_ih, dw_hh, dbias = torch.ops.puffctl.lstm_backward(dout, *ctx.saved_tensors)
        return dx, dh0, dc0, dw_ih, dw_hh, dbias, dbias


class _NarrowInputLinear(torch.autograd.Function):
    """x @ W^T + b whose weight gradient is computed as (x^T g)^T: for W [128, 4] and N rows,
    torch's own g^T x ([128, N] @ [N, 4]) took about 7x as long on CPU (a fifth of the MLP's
    training phase); the result is the same."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        ctx.save_for_backward(x, weight)
        flat = torch.addmm(bias, x.reshape(-1, x.shape[-1]), weight.t())
        return flat.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor, Tensor]:
        x, weight = ctx.saved_tensors
        grad = grad.reshape(-1, grad.shape[-1]).to(weight.dtype)
        flat_x = x.reshape(-1, x.shape[-1]).to(weight.dtype)
        grad_x = (grad @ weight).view(x.shape).to(x.dtype) if ctx.needs_input_grad[0] else None
        return grad_x, (flat_x.t() @ grad).t().contiguous(), grad.sum(0)


class NarrowInputLinear(nn.Linear):
    """nn.Linear (same parameters and state_dict) for in_features < out_features, with the
    faster weight gradient of `_NarrowInputLinear`."""

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled() and self.weight.requires_grad:
            return _NarrowInputLinear.apply(x, self.weight, self.bias)
        return super().forward(x)


def _layer(layer: nn.Linear, gain: float) -> nn.Linear:
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


class CategoricalHead(nn.Module):
    """Discrete(n) and MultiDiscrete(nvec): one categorical per action dimension."""

    def __init__(self, hidden: int, nvec: list[int], multi: bool) -> None:
        super().__init__()
        self.nvec = nvec
        self.multi = multi
        self.uniform = len(set(nvec)) == 1
        self.linear = _layer(nn.Linear(hidden, sum(nvec)), 0.01)

    def forward(self, hidden: Tensor) -> Tensor:
        return self.linear(hidden)

    def _split(self, logits: Tensor) -> list[Tensor]:
        if self.uniform:  # one reshape instead of a split: [..., k, n]
            return [logits.reshape(*logits.shape[:-1], len(self.nvec), self.nvec[0])]
        return list(logits.split(self.nvec, dim=-1))

    def sample(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        """(actions, logprobs). Actions [N] for Discrete, [N, k] for MultiDiscrete (int64).
        Exponential race (Gumbel-max): argmax p_i / E_i with E_i ~ Exp(1) samples i with
        probability p_i in a few ops, and never raises on non-finite logits (they surface as NaN
        logprobs, which the trainer reports as divergence)."""
        actions, logprobs = [], []
        for part in self._split(logits):
            log_p = torch.log_softmax(part, dim=-1)
            race = torch.empty_like(log_p).exponential_()
            action = torch.argmax(log_p.exp() / race, dim=-1, keepdim=True)
            actions.append(action.squeeze(-1))
            logprobs.append(log_p.gather(-1, action).squeeze(-1))
        if self.uniform:
            action, logprob = actions[0], logprobs[0].sum(-1)
        else:
            action, logprob = torch.stack(actions, -1), sum(logprobs)
        return (action if self.multi else action.squeeze(-1)), logprob

    def evaluate(self, logits: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
        """(logprobs, entropy) of `actions` under `logits`, summed over action dimensions."""
        if not self.multi:
            actions = actions.unsqueeze(-1)
        if self.uniform:
            log_p = torch.log_softmax(self._split(logits)[0], dim=-1)
            logprob = log_p.gather(-1, actions.unsqueeze(-1)).squeeze(-1).sum(-1)
            entropy = -(log_p.exp() * log_p).sum(-1).sum(-1)
            return logprob, entropy
        logprob, entropy = 0, 0
        for i, part in enumerate(self._split(logits)):
            log_p = torch.log_softmax(part, dim=-1)
            logprob = logprob + log_p.gather(-1, actions[..., i : i + 1]).squeeze(-1)
            entropy = entropy - (log_p.exp() * log_p).sum(-1)
        return logprob, entropy


class GaussianHead(nn.Module):
    """Box actions: a diagonal Gaussian with a state-independent learned log-std."""

    def __init__(self, hidden: int, dim: int) -> None:
        super().__init__()
        self.linear = _layer(nn.Linear(hidden, dim), 0.01)
        self.log_std = nn.Parameter(torch.zeros(dim))

    def forward(self, hidden: Tensor) -> Tensor:
        return self.linear(hidden)

    def sample(self, mean: Tensor) -> tuple[Tensor, Tensor]:
        actions = mean + self.log_std.exp() * torch.randn_like(mean)
        return actions, self._logprob(mean, actions)

    def _logprob(self, mean: Tensor, actions: Tensor) -> Tensor:
        z = (actions - mean) * torch.exp(-self.log_std)
        return (-0.5 * z * z - self.log_std - 0.5 * math.log(2 * math.pi)).sum(-1)

    def evaluate(self, mean: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
        entropy = (0.5 + 0.5 * math.log(2 * math.pi) + self.log_std).sum().expand(mean.shape[:-1])
        return self._logprob(mean, actions), entropy


def make_head(hidden: int, action_space) -> nn.Module:
    """The action head for a gymnasium action space."""
    from gymnasium import spaces

    if isinstance(action_space, spaces.Discrete):
        return CategoricalHead(hidden, [int(action_space.n)], multi=False)
    if isinstance(action_space, spaces.MultiDiscrete):
        return CategoricalHead(hidden, [int(n) for n in np.asarray(action_space.nvec).ravel()], multi=True)
    if isinstance(action_space, spaces.Box):
        return GaussianHead(hidden, int(np.prod(action_space.shape)))
    raise TypeError(f"unsupported action space {action_space}")


class Policy(nn.Module):
    """Encoder -> (LSTM) -> action head and value head."""

    def __init__(self, obs_size: int, action_space, hidden_size: int = 128, num_layers: int = 1,
                 activation: str = "gelu", lstm: bool = False, lstm_hidden_size: int = 128) -> None:
        super().__init__()
        act = ACTIVATIONS[activation]
        layers: list[nn.Module] = []
        for i in range(num_layers):
            inputs = obs_size if i == 0 else hidden_size
            linear = NarrowInputLinear if inputs < hidden_size else nn.Linear
            layers += [_layer(linear(inputs, hidden_size), math.sqrt(2)), act()]
        self.encoder = nn.Sequential(*layers)
        self.lstm = nn.LSTM(hidden_size, lstm_hidden_size) if lstm else None  # time-major, its native layout
        self.compiled_lstm = lstm and extension.use_compiled(torch.device("cpu"), "auto", "LSTM")
        if self.lstm is not None:
            for name, param in self.lstm.named_parameters():
                if "weight" in name:
                    nn.init.orthogonal_(param)
                else:
                    nn.init.zeros_(param)
        out = lstm_hidden_size if lstm else hidden_size
        self.actor = make_head(out, action_space)
        self.critic = _layer(nn.Linear(out, 1), 1.0)

    @property
    def recurrent(self) -> bool:
        return self.lstm is not None

    def initial_state(self, n: int, device: torch.device | str = "cpu") -> State:
        """Zero LSTM state (h, c), each [n, lstm_hidden]; None for an MLP policy."""
        if self.lstm is None:
            return None
        size = self.lstm.hidden_size
        return torch.zeros(n, size, device=device), torch.zeros(n, size, device=device)

    def encode_step(self, obs: Tensor, state: State) -> tuple[Tensor, State]:
        """One step for N envs: obs [N, obs_size] -> (hidden [N, out], new state): the embedding
        both heads read (the LSTM output when recurrent)."""
        hidden = self.encoder(obs)
        if self.lstm is not None:
            h, c = state
            if self._compiled_for(hidden) and not torch.is_grad_enabled():  # collection: no graph to keep
                lstm = self.lstm
                out, cells, _ = torch.ops.puffctl.lstm_forward(hidden.unsqueeze(0), h, c, lstm.weight_ih_l0,
                                                               lstm.weight_hh_l0, lstm.bias_ih_l0 + lstm.bias_hh_l0)
                return out[0], (out[0], cells[0])
            out, (h, c) = self.lstm(hidden.unsqueeze(0), (h.unsqueeze(0), c.unsqueeze(0)))
            hidden, state = out.squeeze(0), (h.squeeze(0).float(), c.squeeze(0).float())
        return hidden, state

    def _compiled_for(self, x: Tensor) -> bool:
        """Whether the LSTM runs the compiled ops on input `x` (float32 on CPU, no autocast, a build):
        forward and backward over a segment took about 3/4 of oneDNN's time at B 256, T 64, H 128,
        and one collection step at B 1024 about half (csrc/lstm_ops.cpp)."""
        return self.compiled_lstm and x.dtype == torch.float32 and x.device.type == "cpu" \
            and not torch.is_autocast_enabled("cpu")

    def heads(self, hidden: Tensor) -> tuple[Tensor, Tensor]:
        """(head params, values) of an embedding, float32. Both heads are one matmul over their
        stacked weights (the parameters stay the two layers'): on CPU, two skinny matmuls and the sum
        of their input gradients took a fifth of the MLP's training phase."""
        weight = torch.cat([self.actor.linear.weight, self.critic.weight])
        bias = torch.cat([self.actor.linear.bias, self.critic.bias])
        out = nn.functional.linear(hidden, weight, bias).float()
        return out[..., :-1], out[..., -1]

    def step(self, obs: Tensor, state: State) -> tuple[Tensor, Tensor, State]:
        """One step for N envs: obs [N, obs_size] -> (head params, values [N], new state)."""
        hidden, state = self.encode_step(obs, state)
        return *self.heads(hidden), state

    def sequence(self, obs: Tensor, state: State) -> tuple[Tensor, Tensor]:
        """A segment for B rows: obs [B, T, obs_size] -> (head params [B, T, ...], values [B, T]).
        The LSTM runs time-major: only the small obs and outputs are transposed, never the
        [B, T, hidden] activations (two copies each way, forward and backward)."""
        if self.lstm is None:
            return self.heads(self.encoder(obs))
        h, c = state
        x = self.encoder(obs.transpose(0, 1))
        if self._compiled_for(x):
            lstm = self.lstm
            hidden = _CompiledLSTM.apply(x.contiguous(), h.contiguous(), c.contiguous(), lstm.weight_ih_l0,
                                         lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0)
        else:
            hidden, _ = self.lstm(x, (h.unsqueeze(0), c.unsqueeze(0)))
        params, values = self.heads(hidden)
        return params.transpose(0, 1), values.transpose(0, 1)
