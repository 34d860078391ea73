"""One mix-conv layer (K=4) fwd+bwd vs a plain conv of the same shape, every implementation side by side.

Forms: naive K convolutions; one conv with K*C_out outputs then a per-sample mix
(MixConv2d.forward_wide); per-sample kernels + ONE grouped conv (MixConv2d.forward_grouped);
per-sample kernels + one batched matmul over unfolded patches (MixConv2d.forward_bmm).
Target: <= 2.5x a plain conv on CPU.

    python benchmarks/mixconv_layer.py --batch 256 --channels 128 --size 16
    python benchmarks/mixconv_layer.py --batch 512 --channels 256 --size 3    # fastnet's last conv
"""

from __future__ import annotations

import argparse

import torch

from _common import best_seconds, print_table
from cifarlab.models.mixconv import MixConv2d


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--channels", type=int, default=128)
    ap.add_argument("--size", type=int, default=16)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--c-in", type=int, default=0, help="input channels (default: --channels)")
    ap.add_argument("--dtypes", default="fp32,bf16", help="bf16 is emulated, hence slow, on CPUs without it")
    args = ap.parse_args()
    dev = torch.device(args.device)
    c, n, s = args.channels, args.batch, args.size
    c_in = args.c_in or c
    plain = torch.nn.Conv2d(c_in, c, 3, padding=1).to(dev)
    mix = MixConv2d(c_in, c, args.k).to(dev)
    forms = {"plain conv (reference)": plain, "naive K convs": mix.forward_reference,
             "one conv, K*C outputs": mix.forward_wide, "per-sample kernels + grouped conv": mix.forward_grouped,
             "per-sample kernels + bmm": mix.forward_bmm}
    rows = []
    combos = [(d, f) for d in args.dtypes.split(",") for f in (torch.contiguous_format, torch.channels_last)]
    for dtype, fmt in combos:
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
        base = times["plain conv (reference)"]
        layout = "channels_last" if fmt == torch.channels_last else "NCHW"
        rows.append([f"{dtype} {layout}"] + [f"{t * 1000:.1f} ms ({t / base:.2f}x)" for t in times.values()])
    print(f"batch {n}, {c_in}->{c} channels, {s}x{s}, K={args.k}, fwd+bwd, device {dev}")
    print_table(["dtype/layout"] + list(forms), rows)


if __name__ == "__main__":
    main()
