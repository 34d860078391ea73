import os
import subprocess
import sys

from cifarlab import runtime

# Steady-state page faults per training step of an MLP whose hidden activations are 64 MiB, well above
# the largest block glibc ever serves from its heap by default (32 MiB).
_FAULTS_PER_STEP = """
import resource, torch
from cifarlab import runtime
runtime.keep_freed_cpu_memory()
model = torch.nn.Sequential(torch.nn.Linear(256, 8192), torch.nn.ReLU(), torch.nn.Linear(8192, 10))
x = torch.randn(2048, 256)
def step():
    model(x).square().mean().backward()
for _ in range(10):  # the heap grows to its working size over the first few steps
    step()
counts = []
for _ in range(5):  # the fewest of 5 steps: a late growth of the heap (seen under load) lands in one step only
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step()
    counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(min(counts))
"""


def _faults_per_step(keep: str) -> float:
    env = dict(os.environ, CIFARLAB_KEEP_FREED_MEMORY=keep)
    out = subprocess.run([sys.executable, "-c", _FAULTS_PER_STEP], env=env, capture_output=True, text=True,
                         check=True)
    return float(out.stdout.split()[-1])


def test_a_training_step_reuses_freed_activation_memory_instead_of_faulting_it_in_again():
    if not sys.platform.startswith("linux"):
        return
    kept, default = _faults_per_step("1"), _faults_per_step("0")
    # glibc's default maps the large blocks afresh every step: tens of thousands of 4 KiB page faults
    assert default > 5_000
    assert kept < default / 20


def test_keeping_freed_memory_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("CIFARLAB_KEEP_FREED_MEMORY", "0")
    runtime.keep_freed_cpu_memory.cache_clear()
    try:
        assert runtime.keep_freed_cpu_memory() is False
    finally:
        runtime.keep_freed_cpu_memory.cache_clear()
