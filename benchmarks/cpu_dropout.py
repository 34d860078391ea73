"""CPU training speed with PyTorch's dropout vs cifarlab's (models.layers.Dropout), side by side.

PyTorch's CPU dropout draws a double per element from its Mersenne Twister unless MKL serves it (Intel
CPUs only); cifarlab's draws 16 bits per element, four to a 64-bit draw. Timed in one process, the two
alternating round by round: the layer alone (forward + backward over patchmlp's largest hidden layer),
then patchmlp's training step at seed004's batch with its dropouts after each block (the recipe) and
after each hidden ReLU (model_args.dropout_at=hidden); the best of each is kept.

    python benchmarks/cpu_dropout.py
    python benchmarks/cpu_dropout.py --rounds 3 --precision bf16
"""

from __future__ import annotations

import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F
from _common import best_seconds, print_table

from cifarlab.models import get_model
from cifarlab.models.layers import Dropout
from cifarlab.runtime import keep_freed_cpu_memory


def with_torch_dropout(model: nn.Module) -> nn.Module:
    """The same model with every cifarlab Dropout swapped for torch's own (same p)."""
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, Dropout):
                setattr(parent, name, nn.Dropout(child.p))
    return model


def layer_step(impl: str, shape: tuple, p: float):
    layer = Dropout(p) if impl == "cifarlab" else nn.Dropout(p)
    x = torch.randn(shape, requires_grad=True)

    def step():
        layer(x).sum().backward()
        x.grad = None
    return step


def model_step(impl: str, dropout_at: str, batch: int, precision: str):
    torch.manual_seed(0)
    model = get_model("patchmlp", num_classes=10, in_channels=1, norm_relu=False, dropout_at=dropout_at)
    if impl == "torch":
        model = with_torch_dropout(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=5e-4)
    x, y = torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,))

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = model(x)
        F.cross_entropy(out.float(), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=128, help="seed004's batch size")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    keep_freed_cpu_memory()  # as the trainer does: otherwise page faults blur both sides alike
    cases = [("dropout layer, p=0.1, (128, 256, 512) fwd+bwd", "layer", None),
             ("patchmlp step, dropout_at=block (seed004)", "model", "block"),
             ("patchmlp step, dropout_at=hidden", "model", "hidden")]
    steps = {}
    for label, kind, at in cases:
        for impl in ("torch", "cifarlab"):
            steps[label, impl] = (layer_step(impl, (args.batch, 256, 512), 0.1) if kind == "layer"
                                  else model_step(impl, at, args.batch, args.precision))
    best = {key: float("inf") for key in steps}
    for _ in range(args.rounds):
        for key, step in steps.items():
            best[key] = min(best[key], best_seconds(step, repeats=3, warmup=2))
    print(f"{torch.get_num_threads()} threads, {args.precision}, batch {args.batch}; best of {args.rounds} rounds")
    rows = []
    for label, kind, _ in cases:
        t_torch, t_ours = best[label, "torch"], best[label, "cifarlab"]
        rate = (lambda s: f"{args.batch / s:,.0f} img/s") if kind == "model" else (lambda s: "")
        rows.append([label, f"{t_torch * 1e3:.1f} ms {rate(t_torch)}", f"{t_ours * 1e3:.1f} ms {rate(t_ours)}",
                     f"{t_torch / t_ours:.2f}x"])
    print_table(["case", "torch.nn.Dropout", "cifarlab Dropout", "speed-up"], rows)


if __name__ == "__main__":
    main()
