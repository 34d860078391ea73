"""The fused CPU kernel for MixConv2d (csrc/mixconv_fused.cpp), compiled on first use, and its autograd Function.

Why compiled here rather than shipped: the kernel mixes each sample's kernel tile by tile in cache right
before a oneDNN GEMM (through ATen's brgemm) consumes it, so it must be built against the installed torch and
for the CPU it runs on (-march=native). torch.utils.cpp_extension does that once per machine and torch version
(about 15 s; the library is kept under ~/.cache/cifarlab/extensions, or $CIFARLAB_EXTENSIONS, and loaded
in well under a second later).
Without a C++ compiler or ninja the kernel is simply not available: MixConv2d's automatic forms fall back to
the library forms, and only an explicit model_args.form=fused fails, with the fix. CIFARLAB_FUSED_MIXCONV=0
turns it off.

Where the compiler targets AVX512-BF16 the library also has a bf16 variant, which bf16 steps use: x, the
mixing weights, the K kernels, each mixed kernel and the output gradient rounded to bf16 as autocast rounds a
convolution's operands, products as bf16 pairs into fp32 sums (twice the fp32 rate). Layers with an odd C_out
or an odd H*W, and CIFARLAB_FUSED_MIXCONV_BF16=0, keep the fp32 kernel.
"""

from __future__ import annotations

import functools
import hashlib
import os
import sys
from pathlib import Path

import torch

SOURCE = Path(__file__).parent / "csrc" / "mixconv_fused.cpp"
# -fopenmp: ATen's parallel_for is an OpenMP pragma in its header, a serial loop without it
CFLAGS = ["-O3", "-march=native", "-fopenmp"]
_failure: str | None = None  # why the kernel could not be built, once a build was tried
_loaded = False  # a library registers its ops once per process: never load a second copy


def enabled() -> bool:
    return os.environ.get("CIFARLAB_FUSED_MIXCONV", "1") != "0"


def version() -> str:
    """This kernel's build (source, flags, torch, CPU), so that timings made with another one are redone."""
    return _build_name().rsplit("_", 1)[-1]


@functools.cache  # reads and hashes the source: once per process
def _build_name() -> str:
    """One library per source, flags, torch version and CPU (the code is compiled for the CPU that builds it)."""
    from ..runtime import cpu_name_and_flags

    name, flags = cpu_name_and_flags()
    key = "|".join([SOURCE.read_text(), " ".join(CFLAGS), torch.__version__, name, " ".join(sorted(flags))])
    return "cifarlab_mixconv_" + hashlib.sha256(key.encode()).hexdigest()[:12]


def build_dir() -> Path:
    """Where the library is built and kept: $CIFARLAB_EXTENSIONS, else ~/.cache/cifarlab/extensions."""
    root = os.environ.get("CIFARLAB_EXTENSIONS") or "~/.cache/cifarlab/extensions"
    return Path(root).expanduser() / _build_name()


def _load() -> bool:
    global _failure, _loaded
    if _loaded or _failure is not None:
        return _loaded
    name, directory = _build_name(), build_dir()
    built = directory / f"{name}.so"
    try:
        if built.exists():  # the name hashes source, flags, torch and CPU: a library under it is this one
            torch.ops.load_library(str(built))
            _fake_impls()
            _loaded = True
            return True
        import logging

        # importing cpp_extension warns that no CUDA runtime is found: irrelevant to a CPU-only extension
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
        from torch.utils import cpp_extension

        print(f"mix-conv: compiling the fused CPU kernel once for this machine (~15 s; kept in {directory})",
              file=sys.stderr, flush=True)
        directory.mkdir(parents=True, exist_ok=True)
        cpp_extension.load(name=name, sources=[str(SOURCE)], build_directory=str(directory),
                           extra_cflags=CFLAGS, extra_ldflags=["-fopenmp"],
                           is_python_module=False, verbose=False)
    except Exception as exc:  # no compiler, no ninja, a failed build: the library forms still work
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        _failure = f"could not build it ({first[:200]}); it needs a C++ compiler (g++) and `pip install ninja`"
        return False
    _fake_impls()
    _loaded = True
    return True


def available() -> bool:
    """Whether the fused kernel is on and loaded (building it on first call)."""
    return enabled() and _load()


def why_unavailable() -> str:
    if not enabled():
        return "CIFARLAB_FUSED_MIXCONV=0 turns it off"
    _load()
    return _failure or ""


def supports(layer, x: torch.Tensor) -> bool:
    """Whether the kernel computes this layer on this input: a CPU, 3x3 kernels, stride 1, padding 1."""
    return (x.device.type == "cpu" and x.dim() == 4 and tuple(layer.weight.shape[-2:]) == (3, 3)
            and layer.stride == 1 and layer.padding == 1)


def has_bf16() -> bool:
    """Whether the loaded kernel has its bf16 variant (built where the compiler targets AVX512-BF16) and it is
    on (CIFARLAB_FUSED_MIXCONV_BF16=0 keeps bf16 steps on the fp32 kernel)."""
    return os.environ.get("CIFARLAB_FUSED_MIXCONV_BF16", "1") != "0" and _built_with_bf16()


@functools.cache  # asked on every forward of a bf16 step
def _built_with_bf16() -> bool:
    return available() and bool(torch.ops.cifarlab_mixconv.has_bf16())


def bf16_supports(layer, x: torch.Tensor) -> bool:
    """Whether the bf16 variant computes this layer: it multiplies pairs of output channels and of pixels, so
    C_out and H*W must be even (every seed layer's are)."""
    return has_bf16() and layer.weight.shape[1] % 2 == 0 and (x.shape[-2] * x.shape[-1]) % 2 == 0


def _fake_impls() -> None:
    """Shapes for torch.compile's tracing (the kernel itself runs as one opaque op)."""
    @torch.library.register_fake("cifarlab_mixconv::forward")
    def _forward(x, a, w):
        return x.new_empty(x.shape[0], x.shape[1], x.shape[2], w.shape[1])

    @torch.library.register_fake("cifarlab_mixconv::backward")
    def _backward(x, a, w, grad_out, grad_out_t):
        return [torch.empty_like(x), torch.empty_like(a), torch.empty_like(w)]

    @torch.library.register_fake("cifarlab_mixconv::forward_bf16")
    def _forward_bf16(x, a, w):
        return a.new_empty(x.shape[0], x.shape[1], x.shape[2], w.shape[1])

    @torch.library.register_fake("cifarlab_mixconv::backward_bf16")
    def _backward_bf16(x, a, w, grad_out, grad_out_t):
        return [torch.empty_like(x, dtype=a.dtype), torch.empty_like(a), torch.empty_like(w)]


class FusedMixConv(torch.autograd.Function):
    """out = sum_k a[:, k] * conv2d(x, weight[k], padding=1), fp32, as (N, C_out, H, W) in channels_last memory.
    x: (N, C_in, H, W); a: (N, K); weight: (K, C_out, C_in, 3, 3) in fp32. The kernel must be loaded
    (available()). bf16=True (bf16_supports()): x, the mixed kernels and the output gradient are rounded to
    bf16 for the products, as autocast rounds a convolution's operands; sums, results and gradients in fp32."""

    @staticmethod
    def forward(ctx, x, a, weight, bf16=False):
        dtype = torch.bfloat16 if bf16 else torch.float32
        x_nhwc = x.permute(0, 2, 3, 1).to(dtype).contiguous()  # no copy for a channels_last x of that dtype
        a, weight = a.contiguous(), weight.contiguous()
        op = torch.ops.cifarlab_mixconv.forward_bf16 if bf16 else torch.ops.cifarlab_mixconv.forward
        out = op(x_nhwc, a, weight)
        ctx.save_for_backward(x_nhwc, a, weight)
        ctx.bf16 = bf16
        return out.permute(0, 3, 1, 2)

    @staticmethod
    @torch.autograd.function.once_differentiable  # a second derivative through it raises instead of lying
    def backward(ctx, grad_out):
        x_nhwc, a, weight = ctx.saved_tensors
        grad_out = grad_out.to(x_nhwc.dtype)
        op = torch.ops.cifarlab_mixconv.backward_bf16 if ctx.bf16 else torch.ops.cifarlab_mixconv.backward
        grad_x, grad_a, grad_weight = op(x_nhwc, a, weight, grad_out.permute(0, 2, 3, 1).contiguous(),
                                         grad_out.contiguous())
        return grad_x.permute(0, 3, 1, 2), grad_a, grad_weight, None
