"""Policy shapes for each action head, sampling vs evaluation, and the LSTM's step/sequence."""

import numpy as np
import pytest
import torch
from gymnasium import spaces

from trainer.policy import GELU, NarrowInputLinear, Policy

SPACES = {
    "discrete": (spaces.Discrete(3), (), torch.int64),
    "multidiscrete": (spaces.MultiDiscrete([3, 3]), (2,), torch.int64),
    "multidiscrete-mixed": (spaces.MultiDiscrete([2, 5, 3]), (3,), torch.int64),
    "box": (spaces.Box(-1, 1, (2, 2), np.float32), (4,), torch.float32),
}


@pytest.mark.parametrize("name", list(SPACES))
@pytest.mark.parametrize("lstm", [False, True])
def test_shapes_and_logprobs_agree(name, lstm):
    torch.manual_seed(0)
    space, action_shape, dtype = SPACES[name]
    policy = Policy(5, space, hidden_size=16, lstm=lstm, lstm_hidden_size=8)
    obs = torch.randn(6, 5)
    state = policy.initial_state(6)
    params, values, new_state = policy.step(obs, state)
    actions, logprobs = policy.actor.sample(params)
    assert actions.shape == (6, *action_shape) and actions.dtype == dtype
    assert values.shape == (6,) and logprobs.shape == (6,)
    if lstm:
        assert new_state[0].shape == (6, 8) and not torch.equal(new_state[0], state[0])
    else:
        assert new_state is None
    again, entropy = policy.actor.evaluate(params, actions)
    assert torch.allclose(again, logprobs, atol=1e-6)
    assert entropy.shape == (6,) and bool((entropy > 0).all())
    if isinstance(space, spaces.Discrete | spaces.MultiDiscrete):
        nvec = [space.n] if isinstance(space, spaces.Discrete) else list(space.nvec)
        assert bool((entropy <= sum(np.log(nvec)) + 1e-5).all())
        high = torch.tensor(nvec)
        assert bool((actions < high).all()) and bool((actions >= 0).all())


def test_sampled_categorical_actions_follow_the_distribution():
    torch.manual_seed(0)
    policy = Policy(2, spaces.Discrete(2), hidden_size=4)
    logits = torch.log(torch.tensor([[0.2, 0.8]])).expand(20000, 2)
    actions, _ = policy.actor.sample(logits)
    assert actions.float().mean().item() == pytest.approx(0.8, abs=0.015)


def test_lstm_sequence_equals_stepping():
    torch.manual_seed(0)
    policy = Policy(3, spaces.Discrete(2), hidden_size=8, lstm=True, lstm_hidden_size=8)
    obs = torch.randn(4, 7, 3)
    start = (torch.randn(4, 8), torch.randn(4, 8))
    params_seq, values_seq = policy.sequence(obs, start)
    state = start
    for t in range(7):
        params, values, state = policy.step(obs[:, t], state)
        assert torch.allclose(params, params_seq[:, t], atol=1e-5)
        assert torch.allclose(values, values_seq[:, t], atol=1e-5)


def test_mlp_sequence_flattens_time():
    policy = Policy(3, spaces.Discrete(2), hidden_size=8)
    params, values = policy.sequence(torch.randn(4, 7, 3), None)
    assert params.shape == (4, 7, 2) and values.shape == (4, 7)


def test_narrow_input_linear_is_nn_linear_with_a_more_exact_weight_gradient():
    torch.manual_seed(0)
    reference, narrow = torch.nn.Linear(4, 32).double(), NarrowInputLinear(4, 32)
    narrow.load_state_dict({k: v.float() for k, v in reference.state_dict().items()})
    assert list(narrow.state_dict()) == list(reference.state_dict())
    x = torch.randn(64, 16, 4, dtype=torch.float64)
    x_narrow = x.float().requires_grad_()
    x_reference = x.clone().requires_grad_()
    (narrow(x_narrow) ** 2).sum().backward()
    (reference(x_reference) ** 2).sum().backward()
    for ours, exact in ((narrow.weight.grad, reference.weight.grad), (narrow.bias.grad, reference.bias.grad),
                        (x_narrow.grad, x_reference.grad)):
        assert torch.allclose(ours.double(), exact, rtol=1e-5, atol=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = narrow(x_narrow)
    out.float().sum().backward()  # bfloat16 autocast: gradients come back in the parameters' dtype
    assert out.dtype == torch.bfloat16 and narrow.weight.grad.dtype == torch.float32
    with torch.inference_mode():
        assert torch.allclose(narrow(x.float()), reference(x).float(), atol=1e-5)


@pytest.mark.parametrize("name", ["discrete", "box"])
def test_the_fused_heads_are_the_two_layers(name):
    """heads() runs actor and critic as one matmul: the same outputs and parameter gradients as
    the two layers applied one by one, and the state_dict keeps the two layers."""
    torch.manual_seed(0)
    policy = Policy(5, SPACES[name][0], hidden_size=16)
    hidden = torch.randn(32, 16)
    params, values = policy.heads(hidden)
    alone = policy.actor(hidden), policy.critic(hidden).squeeze(-1)
    assert torch.allclose(params, alone[0], atol=1e-6) and torch.allclose(values, alone[1], atol=1e-6)
    grads = []
    for outputs in ((params, values), alone):
        policy.zero_grad()
        (outputs[0].square().sum() + 3 * outputs[1].sum()).backward(retain_graph=True)
        grads.append([p.grad.clone() for p in (policy.actor.linear.weight, policy.actor.linear.bias,
                                               policy.critic.weight, policy.critic.bias)])
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(*grads))
    assert {"actor.linear.weight", "critic.weight"} <= set(policy.state_dict())


@pytest.mark.usefixtures("compiled_ops")
def test_the_compiled_gelu_is_torchs_gelu():
    """csrc/gelu_ops.cpp against torch's exact GELU in float64: values and gradients within float32's
    rounding over the whole range (the tails, huge and tiny inputs), NaN kept, any layout."""
    gelu = GELU()
    assert gelu.compiled
    x = torch.cat([torch.linspace(-12, 12, 200001), torch.tensor([0.0, 1e-8, -1e-8, 50.0, -50.0, 1e30, -1e30])])
    x = x.requires_grad_()
    grad = torch.rand_like(x)
    gelu(x).backward(grad)
    ours = x.grad.clone()
    x.grad = None
    reference = torch.nn.functional.gelu(x.double())
    reference.backward(grad.double())
    assert (gelu(x).double() - reference).abs().max() < 6e-7
    assert (ours.double() - x.grad).abs().max() < 6e-7
    assert torch.isnan(gelu(torch.tensor([float("nan"), 1.0]))).tolist() == [True, False]
    wide = torch.randn(6, 10)
    assert torch.allclose(gelu(wide.t()), torch.nn.functional.gelu(wide.t()), atol=6e-7)  # not contiguous
    assert torch.equal(gelu(wide.double()), torch.nn.functional.gelu(wide.double()))  # torch's own off float32


@pytest.mark.usefixtures("compiled_ops")
@pytest.mark.parametrize("horizon", [1, 7])
def test_the_compiled_lstm_is_nn_lstm_in_training(horizon):
    """csrc/lstm_ops.cpp in `Policy.sequence` against nn.LSTM on the same weights: outputs and the
    gradients of every parameter and of the start state agree to float32 rounding."""
    torch.manual_seed(0)
    policy = Policy(5, spaces.Discrete(3), hidden_size=16, lstm=True, lstm_hidden_size=12)
    assert policy.compiled_lstm
    for name, param in policy.lstm.named_parameters():
        if "bias" in name:
            torch.nn.init.normal_(param, std=0.5)  # zero at init: give the bias gradients something to carry
    obs = torch.randn(9, horizon, 5)
    results = []
    for compiled in (True, False):
        policy.compiled_lstm = compiled
        policy.zero_grad()
        h, c = (torch.randn(9, 12, generator=torch.Generator().manual_seed(seed)).requires_grad_() for seed in (1, 2))
        params, values = policy.sequence(obs, (h, c))
        (params.square().sum() + 3 * values.sum()).backward()
        results.append([params, values, h.grad, c.grad, *(p.grad.clone() for p in policy.parameters())])
    for ours, reference in zip(*results):
        assert torch.allclose(ours, reference, rtol=1e-4, atol=1e-5)
    steps = []
    for compiled in (True, False):  # one collection step (no graph) from the same state
        policy.compiled_lstm = compiled
        with torch.no_grad():
            steps.append([*policy.encode_step(obs[:, 0], (h.detach(), c.detach()))[1], *policy.step(obs[:, 0], (h, c))[:2]])
    for ours, reference in zip(*steps):
        assert torch.allclose(ours, reference, rtol=1e-4, atol=1e-5)
