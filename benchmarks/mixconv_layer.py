"""One mix-conv layer (K=4) fwd+bwd vs a plain conv of the same shape, every implementation side by side.

Forms: naive K convolutions; one conv with K*C_out outputs then a per-sample mix
(MixConv2d.forward_wide), or as one matmul over unfolded patches (forward_wide_matmul); per-sample
kernels + ONE grouped conv (MixConv2d.forward_grouped);
per-sample kernels as batched matmuls over unfolded patches, built a cache-sized chunk of samples at
a time (MixConv2d.forward_bmm) and, for comparison, all at once; on a CPU the fused kernel
(MixConv2d.forward_fused: each sample's kernel mixed tile by tile in cache right before the GEMM that
uses it; compiled on first use, skipped where it cannot be built); and what forward() picks.

    python benchmarks/mixconv_layer.py --shapes 128:128:16 --dtypes fp32
    python benchmarks/mixconv_layer.py --seed-shapes --dtypes fp32 --no-naive   # every shape the seed nets use
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from _common import best_seconds, print_table
from cifarlab.models import mixconv_fused
from cifarlab.models.mixconv import MixConv2d
from cifarlab.runtime import keep_freed_cpu_memory

# (C_in, C_out, map size) of every 3x3 mix-conv layer in mixconv000/001/002 (repeats listed once)
SEED_SHAPES = sorted({(32, 32, 32), (64, 64, 16), (128, 128, 8), (256, 256, 4),  # 001
                      (64, 128, 32), (128, 256, 16), (256, 512, 8), (512, 512, 4),  # 000
                      (64, 64, 32), (128, 128, 16), (256, 256, 8)}, key=lambda s: (-s[2], s[0]))  # 002


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--shapes", default="128:128:16", help="C_in:C_out:size, comma-separated")
    ap.add_argument("--seed-shapes", action="store_true", help="every layer shape of the seed mix-conv nets")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtypes", default="fp32,bf16", help="bf16 is emulated, hence slow, on CPUs without it")
    ap.add_argument("--layouts", default="nchw,nhwc")
    ap.add_argument("--no-naive", action="store_true", help="skip the K-convolution reference (slowest)")
    ap.add_argument("--json", help="also write every time (ms, keyed by model_args.form name) to this file")
    args = ap.parse_args()
    dev = torch.device(args.device)
    if dev.type == "cpu":
        # as the trainer runs: without it each large output's pages fault in afresh on some calls and not
        # others, so the same layer's time depended on what the process had allocated before it
        keep_freed_cpu_memory()
    n = args.batch
    shapes = SEED_SHAPES if args.seed_shapes else [tuple(int(v) for v in s.split(":")) for s in args.shapes.split(",")]
    rows, names, records = [], None, []
    for c_in, c, s in shapes:
        plain = torch.nn.Conv2d(c_in, c, 3, padding=1).to(dev)
        mix = MixConv2d(c_in, c, args.k).to(dev)
        forms = {"plain conv": plain, "naive K convs": mix.forward_reference,
                 "wide (K*C outputs)": mix.forward_wide, "wide, one matmul": mix.forward_wide_matmul,
                 "grouped": mix.forward_grouped,
                 "bmm, chunked": mix.forward_bmm, "bmm, whole batch": lambda x: mix.forward_bmm(x, chunk=len(x)),
                 "fused (CPU)": mix.forward_fused, "forward() picks": mix}
        keys = dict(zip(forms, ["plain", "reference", "wide", "wide_matmul", "grouped", "bmm", "bmm_whole_batch",
                                "fused", "auto"]))  # model_args.form names, for --json
        if dev.type != "cpu" or not mixconv_fused.available():
            del forms["fused (CPU)"]
        if args.no_naive:
            del forms["naive K convs"]
        names = list(forms)
        for dtype in args.dtypes.split(","):
            for layout in args.layouts.split(","):
                fmt = torch.channels_last if layout == "nhwc" else torch.contiguous_format
                x = torch.randn(n, c_in, s, s, device=dev).contiguous(memory_format=fmt).requires_grad_()
                times = {}
                for name, fn in forms.items():
                    def step():
                        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dtype == "bf16"):
                            out = fn(x)
                        out.float().sum().backward()
                        if dev.type == "cuda":
                            torch.cuda.synchronize()
                    times[name] = best_seconds(step, repeats=3)
                base = times["plain conv"]
                records.append({"c_in": c_in, "c_out": c, "size": s, "dtype": dtype, "layout": layout,
                                "ms": {keys[name]: round(t * 1000, 3) for name, t in times.items()}})
                rows.append([f"{c_in}->{c} {s}x{s}", f"{dtype} {layout}", f"{base * 1000:.0f} ms"]
                            + [f"{t / base:.2f}x" for name, t in times.items() if name != "plain conv"])
                print(" | ".join(rows[-1]), flush=True)
                if args.json:  # after every row: a run stopped part-way still leaves what it measured
                    Path(args.json).write_text(json.dumps({"device": str(dev), "batch": n, "rows": records}))
    print(f"\nbatch {n}, K={args.k}, fwd+bwd, device {dev}; time relative to a plain conv of the same shape")
    print_table(["shape", "dtype/layout", "plain conv"] + names[1:], rows)


if __name__ == "__main__":
    main()
