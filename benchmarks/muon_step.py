"""Seconds per Muon optimizer step on fastnet's filter banks: Newton-Schulz in bf16 vs fp32, side by side.

On a CPU without native bf16 (no AVX512-BF16/AMX) torch emulates bf16 matmuls; optim.py then runs the
iteration in fp32. This prints both, so the choice can be checked on any machine:

    PYTHONPATH=src python3 benchmarks/muon_step.py
    PYTHONPATH=src python3 benchmarks/muon_step.py --widths 32 64 64
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import best_seconds, print_table  # noqa: E402


def newton_schulz(g: torch.Tensor, dtype: torch.dtype, steps: int = 3) -> torch.Tensor:
    # the same iteration as cifarlab.optim._newton_schulz, with the dtype forced
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.to(dtype)
    x = x / (x.norm() + 1e-7)
    tall = x.shape[0] > x.shape[1]
    x = x.T if tall else x
    for _ in range(steps):
        m = x @ x.T
        x = a * x + (b * m + c * m @ m) @ x
    return (x.T if tall else x).float()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--widths", type=int, nargs=3, default=[64, 256, 256], help="fastnet's widths (fast: 64 256 256)")
    args = ap.parse_args()
    from cifarlab.models import get_model
    from cifarlab.optim import _newton_schulz_dtype
    from cifarlab.runtime import cpu_has_native_bf16

    model = get_model("fastnet", num_classes=10, in_channels=3, widths=args.widths)
    # gradient-like stand-ins of each filter bank's shape (the dirac-initialised weights themselves are
    # mostly exact zeros, whose iterates turn subnormal and time the CPU's slow path instead)
    gen = torch.Generator().manual_seed(0)
    banks = [torch.randn(len(p), p[0].numel(), generator=gen) for p in model.parameters()
             if p.ndim == 4 and p.requires_grad]
    times = {}
    for dtype in (torch.float32, torch.bfloat16):
        times[dtype] = best_seconds(lambda: [newton_schulz(b, dtype) for b in banks], repeats=3)
    chosen = _newton_schulz_dtype(torch.device("cpu"))
    print(f"fastnet widths {args.widths}: {len(banks)} filter banks {[tuple(b.shape) for b in banks]}; "
          f"native bf16 on this CPU: {cpu_has_native_bf16()}; optim.py uses {chosen}")
    print_table(["Newton-Schulz dtype", "ms per Muon step", "vs fp32"],
                [[str(d), f"{1000 * times[d]:.1f}", f"{times[d] / times[torch.float32]:.2f}x"] for d in times])


if __name__ == "__main__":
    main()
