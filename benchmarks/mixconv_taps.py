"""A rejected mix-conv form, kept measurable: per-sample kernels applied tap by tap on shifted rows.

With a channels_last input padded by one pixel and flattened to (N, (H+2)*(W+2), C), the input of
tap (dy, dx) for every output row y*(W+2)+x is the same matrix shifted by dy*(W+2)+dx rows, so a 3x3
convolution with per-sample kernels is 9 batched matmuls on views (no unfolded patches; the two
padding columns of each row are computed and dropped). Exact (checked against the K-convolution
reference in float64 first); timed fwd+bwd against a plain conv, the grouped form and the chunked
bmm form, at each seed layer shape and recipe batch, and at three chunk sizes (samples per kernel build).

    python benchmarks/mixconv_taps.py
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from _common import best_seconds, print_table

from cifarlab.models.mixconv import MixConv2d
from cifarlab.runtime import keep_freed_cpu_memory

# (batch, C_in, C_out, map size): mixconv001 at 256, mixconv002 at 75, mixconv000 at 64
SHAPES = [(256, 3, 32, 32), (256, 32, 32, 32), (256, 32, 64, 32), (256, 64, 64, 16), (256, 64, 128, 16),
          (256, 128, 128, 8), (256, 128, 256, 8), (75, 64, 64, 32), (75, 128, 128, 16), (64, 64, 128, 32),
          (64, 128, 256, 16)]


class _TapsMatmul(torch.autograd.Function):
    """out (N, L, C_out) = sum over taps t of xflat[:, off_t:off_t+L] @ kernels[:, t], the per-sample kernels
    (a @ bank).view(N, 9, C_in, C_out) built `chunk` samples at a time (and again in backward)."""

    @staticmethod
    def forward(ctx, a, bank, xflat, offsets, length, chunk):
        n, _, c_in = xflat.shape
        c_out = bank.shape[1] // (len(offsets) * c_in)
        out = xflat.new_empty(n, length, c_out)
        for s in range(0, n, chunk):
            e = min(n, s + chunk)
            kernels = (a[s:e] @ bank).view(e - s, len(offsets), c_in, c_out)
            for t, off in enumerate(offsets):
                if t == 0:
                    torch.bmm(xflat[s:e, off:off + length], kernels[:, t], out=out[s:e])
                else:
                    out[s:e].baddbmm_(xflat[s:e, off:off + length], kernels[:, t])
        ctx.save_for_backward(a, bank, xflat)
        ctx.offsets, ctx.length, ctx.chunk = offsets, length, chunk
        return out

    @staticmethod
    def backward(ctx, grad):
        a, bank, xflat = ctx.saved_tensors
        offsets, length = ctx.offsets, ctx.length
        n, _, c_in = xflat.shape
        c_out = bank.shape[1] // (len(offsets) * c_in)
        grad = grad.contiguous()
        grad_x, grad_a, grad_bank = torch.zeros_like(xflat), torch.empty_like(a), torch.zeros_like(bank)
        for s in range(0, n, ctx.chunk):
            e = min(n, s + ctx.chunk)
            kernels = (a[s:e] @ bank).view(e - s, len(offsets), c_in, c_out)
            grad_kernels = xflat.new_empty(e - s, len(offsets), c_in, c_out)
            for t, off in enumerate(offsets):
                grad_x[s:e, off:off + length].baddbmm_(grad[s:e], kernels[:, t].transpose(1, 2))
                torch.bmm(xflat[s:e, off:off + length].transpose(1, 2), grad[s:e], out=grad_kernels[:, t])
            grad_kernels = grad_kernels.view(e - s, -1)
            grad_bank.addmm_(a[s:e].t(), grad_kernels)
            torch.mm(grad_kernels, bank.t(), out=grad_a[s:e])
        return grad_a, grad_bank, grad_x, None, None, None


def forward_taps(layer: MixConv2d, x: torch.Tensor, chunk: int = 16) -> torch.Tensor:
    """MixConv2d's result (3x3, stride 1) by the shifted-rows form."""
    n, c_in, h, w = x.shape
    k, c_out = layer.weight.shape[:2]
    a = layer.mixing(x)
    row = w + 2
    xflat = F.pad(x.permute(0, 2, 3, 1), (0, 0, 1, 1, 1, 1)).reshape(n, (h + 2) * row, c_in)
    length = h * row - 2  # the last row's two padding columns would read past the end
    offsets = [dy * row + dx for dy in range(3) for dx in range(3)]
    bank = layer.weight.permute(0, 3, 4, 2, 1).reshape(k, -1)  # (K, 9 * C_in * C_out), tap-major
    out = _TapsMatmul.apply(a, bank, xflat, offsets, length, chunk)
    out = F.pad(out, (0, 0, 0, 2)).view(n, h, row, c_out)[:, :, :w]
    out = out.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
    return out + (a @ layer.bias)[:, :, None, None] if layer.bias is not None else out


def check() -> float:
    """Largest difference from the K-convolution reference in float64, outputs and every gradient."""
    layer = MixConv2d(8, 12, 4).double()
    x = torch.randn(5, 8, 7, 9, dtype=torch.float64, requires_grad=True)
    ref = layer.forward_reference(x)
    g = torch.randn_like(ref)
    want = torch.autograd.grad(ref, [x, *layer.parameters()], g)
    out = forward_taps(layer, x, chunk=2)
    got = torch.autograd.grad(out, [x, *layer.parameters()], g)
    return max([(out - ref).abs().max().item()] + [(p - q).abs().max().item() for p, q in zip(got, want)])


def main() -> None:
    keep_freed_cpu_memory()
    print(f"largest difference from the reference (float64): {check():.1e}", flush=True)
    rows = []
    for n, c_in, c_out, size in SHAPES:
        layer = MixConv2d(c_in, c_out, 4, bias=False)
        plain = torch.nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        x = torch.randn(n, c_in, size, size).contiguous(memory_format=torch.channels_last).requires_grad_()
        forms = {"plain conv": plain, "grouped": layer.forward_grouped, "bmm": layer.forward_bmm,
                 **{f"taps, chunk {c}": (lambda x, c=c: forward_taps(layer, x, c)) for c in (4, 16, 64)}}
        ms = {name: best_seconds(lambda fn=fn: fn(x).sum().backward(), repeats=3) * 1e3 for name, fn in forms.items()}
        rows.append([f"{c_in}->{c_out} {size}x{size}, batch {n}"] + [f"{v:.0f} ms" for v in ms.values()])
        print(" | ".join(rows[-1]), flush=True)
    print(f"\nfwd+bwd, fp32, channels_last, K=4, {torch.get_num_threads()} threads")
    print_table(["layer"] + list(forms), rows)


if __name__ == "__main__":
    main()
