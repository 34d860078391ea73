"""Training images/s for every registered model: fp32 vs bf16 autocast, eager vs torch.compile.

One optimizer step = forward + backward + SGD step on random 32x32 inputs, channels_last.
Compiled columns cost ~25-60 s of compilation per model; skip them with --no-compile.

    python benchmarks/model_throughput.py --batch 256
    python benchmarks/model_throughput.py --models fastnet resnet18 --no-compile
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from _common import best_seconds, print_table
from cifarlab.models import get_model, list_models
from cifarlab.runtime import to_channels_last

# report-faithful sizes are too slow to time on 2 cores in reasonable time; these keep each step under ~10 s
CPU_FRIENDLY = {"basenet": {"widths": (32, 64, 128, 256)}}


def rate(name: str, batch: int, precision: str, compiled: bool, dev: torch.device, kwargs: dict) -> float:
    torch.manual_seed(0)
    in_ch = 1 if name == "patchmlp" else 3
    size = 28 if name == "patchmlp" else 32
    model = get_model(name, num_classes=10, in_channels=in_ch, image_size=size, **kwargs).to(dev)
    model = to_channels_last(model)
    fwd = torch.compile(model) if compiled else model
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
    x = torch.randn(batch, in_ch, size, size, device=dev).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), device=dev)

    def step():
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = fwd(x)
        F.cross_entropy(out.float(), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.synchronize()

    return batch / best_seconds(step, repeats=2, warmup=2 if compiled else 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--models", nargs="*", default=None)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    dev = torch.device(args.device)
    modes = [("fp32", False), ("bf16", False)] + ([] if args.no_compile else [("fp32", True), ("bf16", True)])
    rows = []
    for name in args.models or list_models():
        kwargs = CPU_FRIENDLY.get(name, {}) if dev.type == "cpu" else {}
        rates = [rate(name, args.batch, p, c, dev, kwargs) for p, c in modes]
        label = name + (" (" + ", ".join(f"{k}={v}" for k, v in kwargs.items()) + ")" if kwargs else "")
        rows.append([label] + [f"{r:,.0f}" for r in rates] + [f"{rates[1] / rates[0]:.2f}x"])
        print(f"  measured {name}", flush=True)
    heads = [f"{p}{' compiled' if c else ''} img/s" for p, c in modes]
    print(f"training step, batch {args.batch}, device {dev}, {torch.get_num_threads()} threads")
    print_table(["model"] + heads + ["bf16/fp32 eager"], rows)


if __name__ == "__main__":
    main()
