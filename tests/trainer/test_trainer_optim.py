"""trainer/optim.py's Muon: torch.optim.Muon's update, with the Newton-Schulz iteration in float32 on CPU."""

import torch

from trainer.optim import Muon, orthogonalize, NS_COEFFICIENTS


def _train(optimizer_class, steps: int = 3, **kwargs) -> tuple[list[torch.nn.Parameter], torch.optim.Optimizer]:
    generator = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(64, 16, generator=generator)),
              torch.nn.Parameter(torch.randn(8, 32, generator=generator))]
    optimizer = optimizer_class(params, lr=0.02, weight_decay=0.0, momentum=0.95, nesterov=True,
                                adjust_lr_fn="match_rms_adamw", **kwargs)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=generator)
        optimizer.step()
    return params, optimizer


def test_muon_in_bfloat16_is_torch_muon_bit_for_bit():
    ours, _ = _train(Muon, ns_dtype=torch.bfloat16)
    reference, _ = _train(torch.optim.Muon)
    assert all(torch.equal(a, b) for a, b in zip(ours, reference))


def test_muon_on_cpu_iterates_in_float32_and_stays_close_to_torch_muon():
    ours, optimizer = _train(Muon)
    reference, torch_optimizer = _train(torch.optim.Muon)
    assert optimizer.ns_dtype is None
    differences = [float((a - b).detach().abs().max()) for a, b in zip(ours, reference)]
    assert all(0 < d < 5e-3 for d in differences)  # bfloat16 rounding apart, not the same numbers
    torch_optimizer.load_state_dict(optimizer.state_dict())  # checkpoints stay interchangeable
    optimizer.load_state_dict(torch_optimizer.state_dict())


def test_orthogonalize_gives_singular_values_near_one():
    matrix = torch.randn(48, 12, generator=torch.Generator().manual_seed(1))
    result = orthogonalize(matrix, NS_COEFFICIENTS, 5, 1e-7, torch.float32)
    assert result.dtype == torch.float32 and result.shape == matrix.shape
    singular = torch.linalg.svdvals(result)
    assert float(singular.min()) > 0.5 and float(singular.max()) < 1.5
