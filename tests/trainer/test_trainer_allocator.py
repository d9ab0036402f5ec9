"""trainer/allocator.py: with glibc told to keep freed memory, a training phase reuses the last
phase's pages instead of faulting fresh ones in (measured as minor page faults, in a subprocess:
malloc settings are per process)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROBE = """
import resource, sys, torch
from trainer import allocator, config
from trainer.train import Trainer
if sys.argv[1] == "default":
    allocator.keep_freed_memory = lambda: False
torch.set_num_threads(1)
trainer = Trainer(config.resolve({"env": {"name": "gym:CartPole-v1", "num_envs": 1024},
                                  "train": {"bptt_horizon": 64, "minibatch_size": 16384, "cpu_threads": 1}}))
for _ in range(2):
    trainer.evaluate()
    trainer.train()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    trainer.train()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_training_reuses_freed_memory_instead_of_faulting_it_in_again():
    faults = {mode: int(subprocess.run([sys.executable, "-c", PROBE, mode], cwd=REPO, capture_output=True, text=True,
                                       check=True, timeout=120).stdout.split()[-1])
              for mode in ("keep", "default")}
    assert faults["default"] > 2000  # the phase's megabyte tensors, faulted in page by page every time
    assert faults["keep"] < faults["default"] / 4, faults
