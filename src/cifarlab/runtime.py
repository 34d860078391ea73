"""Where and in what number format a run computes: device, precision, autocast, threads, CPU memory reuse.

Owns the 'auto' rules (bf16 on CPUs with native bf16 and on GPUs that have it,
fp16 + GradScaler on older GPUs). Never builds models or data.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import sys

import torch

from .errors import UserError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={name} asked for but no CUDA GPU is visible; use device=cpu or device=auto")
    return torch.device(name)


@functools.cache
def cpu_name_and_flags() -> tuple[str, frozenset]:
    """The first CPU's model name and feature flags from /proc/cpuinfo ("", empty where there is none)."""
    name, flags = "", frozenset()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and not name:
                    name = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = frozenset(value.split())
                if name and flags:
                    break
    except OSError:
        pass
    return name, flags


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matmuls/convolutions run natively and beat fp32; without them torch emulates
    bf16, far slower than fp32, so 'auto' must not pick it."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_name_and_flags()[1])


@functools.cache
def cpu_has_amx() -> bool:
    """AMX tiles for bf16: there bf16 convolutions run several times faster than fp32 ones."""
    return "amx_bf16" in cpu_name_and_flags()[1]


def resolve_precision(name: str, device: torch.device) -> str:
    """'auto' -> bf16 where the hardware runs it natively, else fp16 on CUDA, else fp32."""
    if name != "auto":
        if name == "fp16" and device.type == "cpu":
            raise UserError("precision=fp16 is for CUDA; on CPU use precision=bf16 or fp32")
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def eval_batch_size(configured: int, device: torch.device) -> int:
    """config eval_batch_size, where 0 picks by device: 256 on a CPU (fastnet's activations for 256 images
    stay in cache; benchmarks/eval_batch.py), 1024 on a GPU."""
    if configured:
        return configured
    return 256 if device.type == "cpu" else 1024


def autocast(device: torch.device, precision: str):
    """Autocast context for forward passes (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def to_channels_last(model: torch.nn.Module) -> torch.nn.Module:
    """NHWC memory for every 4-D parameter and buffer.

    module.to(memory_format=channels_last) refuses models holding tensors of other
    ranks in 4-D-format terms (MixConv2d's K stacked kernels are 5-D), so convert
    tensor by tensor and leave the rest alone.
    """
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            if t.ndim == 4:
                t.data = t.data.contiguous(memory_format=torch.channels_last)
    return model


def set_threads(n: int) -> None:
    if n > 0:
        torch.set_num_threads(n)


# glibc's mallopt() parameter numbers (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_KEEP_BELOW = 1 << 30


@functools.lru_cache(maxsize=1)
def keep_freed_cpu_memory() -> bool:
    """Make glibc keep freed activation memory for the next step instead of returning it to the OS.

    A CPU training step allocates and frees the same tens-of-MiB activations every step. glibc serves
    blocks above its mmap threshold (128 KiB, adapting up to 32 MiB) with a fresh mmap() and unmaps
    them on free, so every step page-faults them in again, which can cost more than the arithmetic on
    them (an elementwise op over a large activation; docs/RESULTS.md). Raising both thresholds
    keeps freed blocks in the heap, as PyTorch's caching allocator does on a GPU; the price is that the
    process keeps its peak memory until it exits. Process-wide, so done once; returns whether it took
    effect (only glibc has mallopt; CIFARLAB_KEEP_FREED_MEMORY=0 turns it off).
    """
    if os.environ.get("CIFARLAB_KEEP_FREED_MEMORY", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other libcs have no mallopt
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _KEEP_BELOW)) and bool(mallopt(_M_TRIM_THRESHOLD, _KEEP_BELOW))
