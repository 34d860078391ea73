"""How fast could a mix-conv layer run on a CPU? Per-sample work, piece by piece, against a plain conv.

A mix-conv layer's useful work is one convolution with a per-sample kernel. Done one sample at a
time with its buffers in cache (the order a fused kernel would use), it takes these library calls:
forward: unfold the sample's patches, build its kernel (sum of K kernels), one GEMM; backward: two
GEMMs (patch and kernel gradients), fold the patch gradient back, reduce the kernel gradient into
the K kernels' gradients and into the mixing weights' gradient. Each call is timed on one thread,
one sample (mean of --reps calls), and scaled by batch / threads, as one sample per core at a time would run.

Columns, each as a multiple of a plain conv's fwd+bwd on the whole batch (all threads, channels_last):
- "forward() picks": today's MixConv2d form for this shape and dtype, the same way;
- "per sample, composed": the sum of every call above: what composing library ops per sample costs;
- "per sample, threaded": the same calls really run, in a custom autograd Function that splits the batch
  over one Python thread per core (torch at one thread each; float64-checked against the reference form
  by --check): what the composed form achieves once threads share the memory bus;
- "C++ threads" (--cpp, fp32 only): the same per-sample calls in C++ (mixconv_per_sample.cpp, compiled on
  first use: needs a C++ compiler and `pip install ninja`), split over ATen's threads: no Python, no GIL;
- "its GEMMs alone": the three GEMMs only: what a fused kernel could approach if building kernels,
  unfolding and folding cost nothing (an ideal, not a form anyone runs);
- "outside GEMMs": the share of the composed time spent in the other calls.

    python benchmarks/mixconv_ceiling.py --dtypes bf16 fp32
    python benchmarks/mixconv_ceiling.py --check     # the threaded form equals MixConv2d.forward_reference
    python benchmarks/mixconv_ceiling.py --dtypes fp32 --cpp   # also the per-sample form in C++ (compiles it)
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import torch.nn.functional as F

from _common import best_seconds, print_table
from cifarlab.models.mixconv import MixConv2d
from mixconv_layer import SEED_SHAPES

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def per_call_seconds(fn, reps: int) -> float:
    """Mean seconds of `reps` calls after one warm-up: these calls take microseconds, too short to time one by one
    as _common.best_seconds does."""
    fn()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps


def _split_over_threads(n: int, work):
    """work(start, end) on `threads` slices of range(n), one Python thread each, torch single-threaded meanwhile
    (grad mode is per thread: the workers run without it, as a Function's forward does)."""
    threads = torch.get_num_threads()

    def no_grad_work(s, e):
        with torch.no_grad():
            return work(s, e)

    bounds = [n * i // threads for i in range(threads + 1)]
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(threads) as pool:
            futures = [pool.submit(no_grad_work, bounds[i], bounds[i + 1]) for i in range(threads)]
            return [f.result() for f in futures]
    finally:
        torch.set_num_threads(threads)


class _PerSampleThreaded(torch.autograd.Function):
    """out[n] = (sum_k a[n, k] W_k) conv x[n], one sample at a time (unfold, build, GEMM), samples split over
    threads."""

    @staticmethod
    def forward(ctx, x, a, bank, pad):
        n, c_in, h, w = x.shape
        c_out = bank.shape[1] // (c_in * 9)
        out = x.new_empty(n, c_out, h * w)

        def work(s, e):
            for i in range(s, e):
                cols = F.unfold(x[i:i + 1], 3, padding=pad)[0]
                torch.mm((a[i:i + 1] @ bank).view(c_out, -1), cols, out=out[i])

        _split_over_threads(n, work)
        ctx.save_for_backward(x, a, bank)
        ctx.pad = pad
        return out.view(n, c_out, h, w)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        x, a, bank = ctx.saved_tensors
        n, c_in, h, w = x.shape
        c_out = bank.shape[1] // (c_in * 9)
        g = grad_out.reshape(n, c_out, h * w).contiguous()
        grad_x, grad_a = torch.empty(x.shape, dtype=x.dtype), torch.empty_like(a)

        def work(s, e):
            grad_bank = torch.zeros_like(bank)  # one per thread, summed below
            for i in range(s, e):
                cols = F.unfold(x[i:i + 1], 3, padding=ctx.pad)[0]
                kernel = (a[i:i + 1] @ bank).view(c_out, -1)
                grad_x[i] = F.fold((kernel.t() @ g[i])[None], (h, w), 3, padding=ctx.pad)[0]
                grad_kernel = (g[i] @ cols.t()).view(1, -1)
                grad_bank.addmm_(a[i:i + 1].t(), grad_kernel)
                torch.mm(grad_kernel, bank.t(), out=grad_a[i:i + 1])
            return grad_bank

        return grad_x, grad_a, sum(_split_over_threads(n, work)), None




_CPP = {}


def cpp_extension():
    """benchmarks/mixconv_per_sample.cpp, compiled once per machine (torch caches the build)."""
    if "ext" not in _CPP:
        from torch.utils.cpp_extension import load
        source = Path(__file__).with_name("mixconv_per_sample.cpp")
        _CPP["ext"] = load("mixconv_per_sample", [str(source)], extra_cflags=["-O3", "-march=native", "-fopenmp"],
                           extra_ldflags=["-fopenmp"])
    return _CPP["ext"]


class _PerSampleCpp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, a, bank, pad):
        x = x.contiguous()  # the C++ code indexes NCHW samples; copied once here, not again in backward
        ctx.save_for_backward(x, a, bank)
        ctx.pad = pad
        n, c_in, h, w = x.shape
        c_out = bank.shape[1] // (c_in * 9)
        return cpp_extension().forward(x, a, bank, c_out, 3, 3, pad, 1).view(n, c_out, h, w)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        x, a, bank = ctx.saved_tensors
        grad_x, grad_a, grad_bank = cpp_extension().backward(
            grad_out.reshape(*grad_out.shape[:2], -1), x, a, bank, 3, 3, ctx.pad, 1)
        return grad_x, grad_a, grad_bank, None


def forward_per_sample(mix: MixConv2d, x: torch.Tensor, function: type[torch.autograd.Function]) -> torch.Tensor:
    """MixConv2d's function (3x3, stride 1), its convolution computed by `function` (_PerSampleThreaded or
    _PerSampleCpp) in the dtype autocast would use."""
    a = mix.mixing(x)
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
    with torch.autocast("cpu", enabled=False):  # a custom Function sees no autocast: its dtype set here
        out = function.apply(x.to(dtype), a.to(dtype), mix.weight.reshape(mix.k, -1).to(dtype),
                             mix.padding)
    if mix.bias is not None:
        out = out + (a @ mix.bias).to(out.dtype)[:, :, None, None]
    return out


def check(cpp: bool) -> None:
    torch.manual_seed(0)
    dtype = torch.float32 if cpp else torch.float64  # the C++ form is fp32 only
    mix = MixConv2d(5, 7, 4).to(dtype)
    x = torch.randn(6, 5, 9, 9, dtype=dtype, requires_grad=True)
    function = _PerSampleCpp if cpp else _PerSampleThreaded
    results = []
    for fn in (lambda: forward_per_sample(mix, x, function), lambda: mix.forward_reference(x)):
        x.grad = None
        mix.zero_grad()
        out = fn()
        out.pow(2).sum().backward()
        results.append([out.detach(), x.grad] + [p.grad for p in mix.parameters()])
    worst = max(((u - v).abs().max() / v.abs().max()).item() for u, v in zip(*results))
    print(f"per-sample {'C++' if cpp else 'threaded'} form vs reference, {str(dtype)[6:]}, output and every gradient: "
          f"max difference {worst:.1e} of the largest value")
    if worst > (1e-5 if cpp else 1e-12):
        raise SystemExit("MISMATCH")


def per_sample_pieces(c_in: int, c_out: int, size: int, k: int, dtype: torch.dtype, reps: int) -> dict[str, float]:
    """Seconds per sample of each library call the per-sample form makes (one thread)."""
    x = torch.randn(1, c_in, size, size, dtype=dtype)
    bank = torch.randn(k, c_out * c_in * 9, dtype=dtype)  # the K kernels, flattened
    a = torch.randn(1, k, dtype=dtype)  # this sample's mixing weights
    grad_out = torch.randn(c_out, size * size, dtype=dtype)
    cols = F.unfold(x, 3, padding=1)[0]
    kernel = (a @ bank).view(c_out, c_in * 9)
    grad_cols = kernel.t() @ grad_out
    grad_kernel = (grad_out @ cols.t()).view(1, -1)
    grad_bank = torch.zeros_like(bank)
    t = lambda fn: per_call_seconds(fn, reps)  # noqa: E731
    return {"unfold": t(lambda: F.unfold(x, 3, padding=1)),
            "build": 2 * t(lambda: a @ bank),  # built in forward, rebuilt in backward (not stored)
            "gemm": t(lambda: kernel @ cols) + t(lambda: kernel.t() @ grad_out) + t(lambda: grad_out @ cols.t()),
            "fold": t(lambda: F.fold(grad_cols[None], (size, size), 3, padding=1)),
            "grad reduce": t(lambda: grad_bank.addmm_(a.t(), grad_kernel)) + t(lambda: grad_kernel @ bank.t())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--dtypes", nargs="+", default=["bf16", "fp32"], choices=list(DTYPES))
    ap.add_argument("--shapes", nargs="*", help="C_in:C_out:size (default: every seed net's layer shape)")
    ap.add_argument("--reps", type=int, default=20, help="calls per per-sample timing")
    ap.add_argument("--check", action="store_true", help="only check the threaded form against the reference")
    ap.add_argument("--cpp", action="store_true", help="also time (or --check) the per-sample form in C++ (fp32)")
    args = ap.parse_args()
    if args.check:
        return check(args.cpp)
    threads = torch.get_num_threads()
    shapes = [tuple(int(v) for v in s.split(":")) for s in args.shapes] if args.shapes else SEED_SHAPES
    rows = []
    for dtype_name in args.dtypes:
        dtype = DTYPES[dtype_name]
        for c_in, c_out, size in shapes:
            x = torch.randn(args.batch, c_in, size, size).contiguous(memory_format=torch.channels_last)
            x.requires_grad_()
            plain = torch.nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
            mix = MixConv2d(c_in, c_out, args.k, bias=False)

            def step(layer):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
                    out = layer(x)
                out.float().sum().backward()

            base = best_seconds(lambda: step(plain), repeats=2)
            auto = best_seconds(lambda: step(mix), repeats=2)
            threaded = best_seconds(lambda: step(lambda x: forward_per_sample(mix, x, _PerSampleThreaded)), repeats=2)
            in_cpp = "-"
            if args.cpp and dtype == torch.float32:
                in_cpp = best_seconds(lambda: step(lambda x: forward_per_sample(mix, x, _PerSampleCpp)), repeats=2)
                in_cpp = f"{in_cpp / base:.2f}x"
            torch.set_num_threads(1)
            try:
                pieces = per_sample_pieces(c_in, c_out, size, args.k, dtype, args.reps)
            finally:
                torch.set_num_threads(threads)
            scale = args.batch / threads / base
            composed = sum(pieces.values())
            rows.append([f"{c_in}->{c_out} {size}x{size}", dtype_name, f"{base * 1000:.0f} ms",
                         f"{auto / base:.2f}x", f"{composed * scale:.2f}x", f"{threaded / base:.2f}x", in_cpp,
                         f"{pieces['gemm'] * scale:.2f}x", f"{1 - pieces['gemm'] / composed:.0%}"]
                        + [f"{v / composed:.0%}" for name, v in pieces.items() if name != "gemm"])
            print(" | ".join(rows[-1]), flush=True)
    print(f"\nbatch {args.batch}, K={args.k}, fwd+bwd, {threads} threads; multiples of a plain conv's time")
    print_table(["layer", "dtype", "plain conv", "forward() picks", "per sample, composed", "threaded", "C++ threads",
                 "its GEMMs alone", "outside GEMMs", "unfold", "build x2", "fold", "grad reduce"], rows)


if __name__ == "__main__":
    main()
