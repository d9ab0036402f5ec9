"""trainer/optim.py: Muon (torch.optim.Muon's update, with the Newton-Schulz iteration in float32
on CPU), and torch.optim run without its torch.compile guards' import of torch._dynamo."""

import subprocess
import sys
from pathlib import Path

import torch

from trainer.optim import Muon, orthogonalize, NS_COEFFICIENTS

REPO = Path(__file__).resolve().parents[2]


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


COMPILE_FREE = """
import sys, torch
from trainer import config
from trainer.optim import Muon, Optimizers, skip_compile_guards
from trainer.train import Trainer
trainer = Trainer(config.resolve({"env": {"name": "gym:CartPole-v1", "num_envs": 8},
                                  "train": {"bptt_horizon": 16, "minibatch_size": 64, "torch_deterministic": True}}))
for _ in range(2):
    trainer.evaluate()
    trainer.train()
trainer.optimizer.state_dict()
assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
assert "torch._dynamo" not in sys.modules, "a trainer imported torch._dynamo"

def run(ours):
    generator = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(16, 8, generator=generator)), torch.nn.Parameter(torch.randn(8, generator=generator))]
    optimizers = [Muon(params[:1], lr=0.02), torch.optim.Adam(params[1:], lr=0.01)]
    step = Optimizers(optimizers).step if ours else lambda: [optimizer.step() for optimizer in optimizers]
    for _ in range(3):
        for p in params:
            p.grad = torch.randn(p.shape, generator=generator)
        step()
    return params

skip_compile_guards()
eager = run(ours=True)
assert "torch._dynamo" not in sys.modules
reference = run(ours=False)
assert "torch._dynamo" in sys.modules
assert all(torch.equal(a, b) for a, b in zip(eager, reference))
print("ok")
"""


def test_training_runs_torch_optim_without_importing_the_compiler_and_steps_the_same():
    # torch._dynamo costs about 2 s of CPU at every start: its import is the compile guards'.
    done = subprocess.run([sys.executable, "-c", COMPILE_FREE], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
