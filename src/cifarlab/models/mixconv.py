"""Dynamic "mix K convolutions" CNNs from seed reports 000, 001 and 002.

A MixConv2d layer pools its input, predicts K mixing weights per sample (a softmax with a
temperature, or the linear layer's raw outputs: mixing="linear") and outputs the weighted sum
of K convolutions. Because convolution is linear in its weights,
sum_k a_k * conv(x, W_k) == conv(x, sum_k a_k W_k), so the layer has several exact forms
(tested equal in float64) and picks one by map size and device:
one kernel per sample in ONE grouped convolution (groups = batch) on large maps; per-sample
kernels as matmuls, built a cache-sized chunk at a time, on 8x8 maps (CPU); all K*C_out
filters in one wide layer, then the per-sample mix, on the smallest maps; and on CPUs, where a C++
compiler can build it, a fused fp32 kernel that mixes each sample's kernel tile by tile in cache right
before the GEMM that uses it (mixconv_fused: one convolution's FLOPs, 1.5-2.4x a plain conv's time).
`forward_reference` keeps the literal K-convolution form; model_args.form forces any of them.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..runtime import cpu_has_amx
from .layers import apply_init
from .registry import register_model

ACTIVATIONS = {"relu": nn.ReLU, "prelu": nn.PReLU, "leakyrelu": nn.LeakyReLU, "gelu": nn.GELU}


class _MixedKernelMatmul(torch.autograd.Function):
    """out[n] = (sum_k a[n, k] W_k) @ cols[n], with the per-sample kernels built a chunk of samples at a time.

    Materialising all N kernels (N x C_out x C_in*kh*kw) costs more memory traffic than the matmuls that use
    them on small maps; building them per chunk, and again in backward rather than saving them, keeps that
    traffic in cache. a: (N, K); w: (K, C_out*C_in*kh*kw); cols: (N, C_in*kh*kw, L) -> (N, C_out, L).
    """

    @staticmethod
    def forward(ctx, a, w, cols, chunk):
        n, patch, length = cols.shape
        c_out = w.shape[1] // patch
        out = cols.new_empty(n, c_out, length)
        for s in range(0, n, chunk):
            kernels = (a[s:s + chunk] @ w).view(-1, c_out, patch)
            torch.bmm(kernels, cols[s:s + chunk], out=out[s:s + chunk])
        ctx.save_for_backward(a, w, cols)
        ctx.chunk = chunk
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable  # a second derivative through it raises instead of lying
    def backward(ctx, grad_out):
        a, w, cols = ctx.saved_tensors
        n, patch, _ = cols.shape
        c_out = w.shape[1] // patch
        grad_out = grad_out.to(cols.dtype).contiguous()
        grad_a, grad_w, grad_cols = torch.empty_like(a), torch.zeros_like(w), torch.empty_like(cols)
        for s in range(0, n, ctx.chunk):
            g, c, a_s = grad_out[s:s + ctx.chunk], cols[s:s + ctx.chunk], a[s:s + ctx.chunk]
            kernels = (a_s @ w).view(-1, c_out, patch)
            torch.bmm(kernels.transpose(1, 2), g, out=grad_cols[s:s + ctx.chunk])
            grad_kernels = torch.bmm(g, c.transpose(1, 2)).view(a_s.shape[0], -1)
            grad_w.addmm_(a_s.t(), grad_kernels)
            torch.mm(grad_kernels, w.t(), out=grad_a[s:s + ctx.chunk])
        return grad_a, grad_w, grad_cols, None


def _exporting() -> bool:
    """Whether an exporter (TorchScript trace, ONNX, torch.export) is recording the model."""
    return bool(torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting())


def auto_form(pixels: int, wide_outputs: int, rules: str, fused: bool = False) -> str:
    """The form MixConv2d uses on maps of `pixels` input pixels with K*C_out = `wide_outputs` filters, by the
    rules measured for one device and dtype (benchmarks/mixconv_layer.py --seed-shapes, fwd+bwd, channels_last):
    - "gpu": the wide conv under 100 pixels, else grouped (the forms the H200 ran);
    - "fp32" (AVX2 CPU): 4x4 maps wide, as one matmul from 1,536 filters (512 channels on 4x4: 3.6x a plain
      conv instead of 6-7x as a wide conv); 8x8 per-sample kernels as chunked matmuls (2.6-3.1x instead of
      4.2-5.7x); 16x16 and up grouped;
    - "bf16" (AVX-512 CPU with AMX): the convs run so fast that building per-sample kernels costs more than
      the K-fold wide conv up to 16x16 (8x8: wide 2.2-4.3x vs chunked matmuls 4.0-6.0x; 16x16: wide 4.5-6.7x
      vs grouped 6.1-8.9x), and grouped only wins from 32x32 (2.4-4.8x vs wide 2.8-5.8x).
    fused: the fused CPU kernel can run this layer (mixconv_fused): FUSED_RULE says where it wins."""
    if rules not in ("gpu", "fp32", "bf16"):
        raise ValueError(f"unknown mix-conv rules {rules!r}: gpu, fp32 or bf16")
    if fused and rules in FUSED_RULE and pixels < FUSED_RULE[rules]:
        return "fused"
    if rules == "gpu":
        return "grouped" if pixels >= 100 else "wide"
    if pixels < 32:
        return "wide_matmul" if wide_outputs >= 1536 else "wide"
    if rules == "fp32":
        return "bmm" if pixels < 100 else "grouped"
    return "wide" if pixels < 1024 else "grouped"  # bf16


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype x's convolutions run in: autocast's where it is on, else x's own."""
    dev = x.device.type
    return torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype


# the fused kernel's rule, by CPU rules: used below this many input pixels. fp32: 1.2-1.9x a plain conv (fwd+bwd)
# on the seed shapes up to 32x32 (2.1-2.4x on 4x4), against 3.4-6.4x for the library forms on 8x8 and 4x4 maps
# and 1.7-2.5x (grouped) on 16x16 and 32x32; larger maps are unmeasured. bf16 (a CPU without AMX): its bf16
# variant (AVX512-BF16) runs 1.25-2.0x a bf16 conv on 8x8 to 32x32 and 2.9-3.3x on 4x4, ahead of every library
# form on each (grouped: 1.6-2.0x on 32x32). (benchmarks/mixconv_layer.py; model_throughput.py --without-fused)
FUSED_RULE = {"fp32": 1025, "bf16": 1025}

# every implementation of the same layer (tested equal in float64; the fused kernel's bf16 variant on bf16-rounded
# operands):
# "auto" picks one by map size and device by rules measured on a few machines; "timed" times the others on this
# machine once per layer shape (mixconv_timing)
FORMS = ("auto", "timed", "grouped", "wide", "wide_matmul", "bmm", "fused", "reference")


class MixConv2d(nn.Module):
    def __init__(self, c_in: int, c_out: int, k: int = 4, kernel_size: int = 3, stride: int = 1,
                 temperature: float = 1.0, bias: bool = True, form: str = "auto", mixing: str = "softmax"):
        super().__init__()
        if form not in FORMS:
            raise ValueError(f"form must be one of {', '.join(FORMS)}; got {form!r}")
        if mixing not in ("softmax", "linear"):
            raise ValueError(f"mixing must be softmax or linear; got {mixing!r}")
        self.mixing_fn = mixing
        self.k, self.stride, self.padding, self.temperature = k, stride, kernel_size // 2, temperature
        self.form = form
        self.weight = nn.Parameter(torch.empty(k, c_out, c_in, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(k, c_out)) if bias else None
        self.router = nn.Linear(c_in, k)
        for i in range(k):  # each expert starts like an ordinary conv layer
            nn.init.kaiming_uniform_(self.weight[i], a=math.sqrt(5))

    def expert_weights(self):
        """The K kernels one by one (so named inits treat each like an ordinary conv weight)."""
        return [self.weight[i] for i in range(self.k)]

    def mixing(self, x: torch.Tensor) -> torch.Tensor:
        """(N, K) weights predicted from the globally pooled input: a softmax, or the raw linear outputs."""
        logits = self.router(x.mean(dim=(2, 3)))
        return logits if self.mixing_fn == "linear" else torch.softmax(logits / self.temperature, dim=1)

    # Per-sample kernels cost K*C_out*C_in*k*k per sample to build, and as many bytes to move, for only H*W
    # multiply-adds per kernel element in the conv itself: on small maps moving them costs more than the conv.
    # So on small maps K ordinary filters in one wide layer (then a per-sample weighted sum of the K outputs)
    # win despite their K-fold FLOPs; on large maps, per-sample kernels in one grouped conv. Where the
    # crossovers lie depends on the device and on the dtype the convs run in: benchmarks/mixconv_layer.py
    # --seed-shapes measures them (see auto_form). CPU_RULES forces one set of rules, for comparisons:
    # "dtype" (default: the measured rules for the dtype in use), "fp32" (the fp32 CPU rules whatever the
    # dtype) or "gpu" (the GPU rules: the wide conv under 100 pixels).
    CPU_RULES = "dtype"
    # per-sample kernels built this many bytes at a time stay in a CPU's cache between being built and used
    CHUNK_BYTES, CHUNK_MIN_SAMPLES = 4 << 20, 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _exporting():
            # an exported file must serve any batch: the wide form has no batch-sized groups or Python Function
            return self.forward_wide(x)
        if self.form not in ("auto", "timed"):
            return self.run_form(self.form, x)
        dev = x.device.type
        low_precision = any(dt in (torch.bfloat16, torch.float16) for dt in (x.dtype, compute_dtype(x)))
        rules = "gpu" if dev != "cpu" else (self.CPU_RULES if self.CPU_RULES != "dtype"
                                            else "bf16" if low_precision else "fp32")
        # with AMX, bf16 convolutions run several times faster than the fp32 kernel: there the bf16 library
        # forms stay (FUSED_RULE's bf16 entry was measured without AMX; form=timed still times the kernel)
        fused = rules != "gpu" and not (rules == "bf16" and cpu_has_amx()) and self._fused_ok(x)
        form = auto_form(x.shape[-2] * x.shape[-1], self.weight.shape[0] * self.weight.shape[1], rules, fused)
        if self.form == "timed":
            from .mixconv_timing import timed_form

            form = timed_form(self, x, fallback=form)
        return self.run_form(form, x)

    def run_form(self, form: str, x: torch.Tensor) -> torch.Tensor:
        """forward_<form>(x), handed on in x's memory layout. The forms differ in the layout they produce (the
        grouped and bmm forms NCHW, the fused kernel and one matmul channels_last); without this, one layer's
        choice would change the layout of every layer after it, so form=timed, which times each layer alone,
        chose well per layer and badly for the net (the first layer's bmm form turned mixconv001's channels_last
        net to NCHW, where the grouped conv then beat the fused kernel that wins in channels_last)."""
        out = getattr(self, f"forward_{form}")(x)
        if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
            return out.contiguous(memory_format=torch.channels_last)
        return out.contiguous()

    def _fused_ok(self, x: torch.Tensor) -> bool:
        """Whether the automatic forms may use the fused CPU kernel for this layer on x: an fp32 step, or a
        bf16 one (its bf16 variant, or fp32 where the CPU lacks AVX512-BF16; float64 keeps the exact library
        forms), a layer it supports, and the kernel built (on first use)."""
        from . import mixconv_fused

        return (compute_dtype(x) in (torch.float32, torch.bfloat16) and mixconv_fused.supports(self, x)
                and mixconv_fused.available())

    def _output_size(self, h: int, w: int) -> tuple[int, int]:
        kh, kw = self.weight.shape[-2:]
        return (h + 2 * self.padding - kh) // self.stride + 1, (w + 2 * self.padding - kw) // self.stride + 1

    def forward_grouped(self, x: torch.Tensor) -> torch.Tensor:
        """One kernel per sample (the K kernels mixed), all samples in ONE grouped convolution."""
        n, c_in, h, w = x.shape
        a = self.mixing(x)
        kernels = torch.einsum("nk,koihw->noihw", a.to(self.weight.dtype), self.weight)
        kernels = kernels.reshape(-1, c_in, *self.weight.shape[-2:]).to(x.dtype)
        bias = (a @ self.bias).reshape(-1).to(x.dtype) if self.bias is not None else None
        out = F.conv2d(x.reshape(1, n * c_in, h, w), kernels, bias, self.stride, self.padding, groups=n)
        return out.reshape(n, -1, out.shape[-2], out.shape[-1])

    def forward_bmm(self, x: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        """One kernel per sample applied as batched matrix products over unfolded patches: the mixed kernel's
        FLOPs only, as GEMMs. The kernels are built `chunk` samples at a time and rebuilt in backward instead of
        stored, so on a CPU they are used while still in cache (default: chunks of about CHUNK_BYTES)."""
        n, c_in, h, w = x.shape
        k, c_out, _, kh, kw = self.weight.shape
        a = self.mixing(x)
        cols = F.unfold(x, (kh, kw), padding=self.padding, stride=self.stride)  # (N, C_in*kh*kw, L)
        dev = x.device.type
        dtype = compute_dtype(x)
        cols = cols.to(dtype)
        if chunk is None:  # a few samples at least: one sample's matmul alone keeps two cores poorly busy
            per_sample = c_out * cols.shape[1] * cols.element_size()
            chunk = n if x.device.type != "cpu" else max(self.CHUNK_MIN_SAMPLES, self.CHUNK_BYTES // per_sample)
        mix, bank = a.to(dtype), self.weight.reshape(k, -1).to(dtype)
        with torch.autocast(dev, enabled=False):  # a custom Function sees no autocast: its dtype set above
            out = _MixedKernelMatmul.apply(mix, bank, cols, int(chunk))
        out = out.view(n, c_out, *self._output_size(h, w))
        if self.bias is not None:
            out = out + (a @ self.bias).to(out.dtype)[:, :, None, None]
        return out

    def forward_fused(self, x: torch.Tensor) -> torch.Tensor:
        """One kernel per sample, never materialised: the fused CPU kernel (mixconv_fused). In a bf16 step
        (autocast or bf16 tensors) its products take bf16 operands where the CPU has AVX512-BF16 (bf16 out,
        as from an autocast conv), else it computes in fp32 (fp32 out under autocast, else x's dtype); sums
        in fp32 either way."""
        from . import mixconv_fused

        if not mixconv_fused.supports(self, x):
            raise ValueError("form=fused runs 3x3, stride-1 mix-conv layers on a CPU; use form=auto here")
        if not mixconv_fused.available():
            raise RuntimeError(f"form=fused: the fused mix-conv kernel is unavailable: "
                               f"{mixconv_fused.why_unavailable()}; or use form=auto")
        a = self.mixing(x)
        bf16 = compute_dtype(x) == torch.bfloat16 and mixconv_fused.bf16_supports(self, x)
        with torch.autocast("cpu", enabled=False):
            out = mixconv_fused.FusedMixConv.apply(x if bf16 else x.float(), a.float(), self.weight.float(), bf16)
            if self.bias is not None:
                out = out + (a.float() @ self.bias.float())[:, :, None, None]
        if bf16:  # bf16 out, as an autocast conv gives: the norms and activations after it move half the bytes
            return out.to(torch.bfloat16)
        return out if torch.is_autocast_enabled("cpu") else out.to(x.dtype)

    def forward_wide(self, x: torch.Tensor) -> torch.Tensor:
        """All K convolutions as one conv with K*C_out filters, then the per-sample weighted sum."""
        a = self.mixing(x)
        k, c_out = self.weight.shape[:2]
        weight = self.weight.reshape(k * c_out, *self.weight.shape[2:])
        bias = self.bias.reshape(-1) if self.bias is not None else None
        out = F.conv2d(x, weight.to(x.dtype) if x.dtype != weight.dtype else weight, bias, self.stride, self.padding)
        out = out.view(out.shape[0], k, c_out, out.shape[-2], out.shape[-1])
        return torch.einsum("nk,nkchw->nchw", a.to(out.dtype), out)

    def forward_wide_matmul(self, x: torch.Tensor) -> torch.Tensor:
        """forward_wide as unfolded patches times all K*C_out filters in ONE matmul: on tiny maps the CPU's
        convolution kernels run far below its matmul speed (512->512 channels on 4x4: 6x a plain conv as a
        wide conv, 3.7x as one matmul)."""
        n, c_in, h, w = x.shape
        k, c_out, _, kh, kw = self.weight.shape
        a = self.mixing(x)
        cols = F.unfold(x, (kh, kw), padding=self.padding, stride=self.stride)  # (N, C_in*kh*kw, L)
        length = cols.shape[-1]
        out = cols.transpose(1, 2).reshape(n * length, -1) @ self.weight.reshape(k * c_out, -1).t()
        if self.bias is not None:
            out = out + self.bias.reshape(-1)
        out = torch.einsum("nk,nlkc->nlc", a.to(out.dtype), out.view(n, length, k, c_out))
        return out.view(n, *self._output_size(h, w), c_out).permute(0, 3, 1, 2)  # a channels_last tensor, no copy

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        """The report's literal form: K convolutions, weighted per sample and summed."""
        a = self.mixing(x)
        out = 0
        for i in range(self.k):
            b = self.bias[i] if self.bias is not None else None
            out = out + a[:, i, None, None, None] * F.conv2d(x, self.weight[i], b, self.stride, self.padding)
        return out


class MixBlock(nn.Module):
    """MixConv -> BN -> activation [-> + shortcut] [-> max-pool]."""

    def __init__(self, c_in: int, c_out: int, *, k: int, temperature: float, activation: str, batch_norm: bool,
                 shortcut: bool, residual: bool, pool: bool, form: str = "auto", negative_slope: float = 0.01,
                 mixing: str = "softmax"):
        super().__init__()
        self.conv = MixConv2d(c_in, c_out, k, temperature=temperature, bias=not batch_norm, form=form, mixing=mixing)
        self.norm = nn.BatchNorm2d(c_out) if batch_norm else nn.Identity()
        self.act = nn.LeakyReLU(negative_slope) if activation == "leakyrelu" else ACTIVATIONS[activation]()
        self.shortcut = None
        if residual or shortcut:
            self.shortcut = nn.Identity() if c_in == c_out else nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out) if batch_norm else nn.Identity())
        self.pool = nn.MaxPool2d(2) if pool else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.norm(self.conv(x)))
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return self.pool(out)


class MixConvNet(nn.Module):
    def __init__(self, *, num_classes: int, in_channels: int, widths, k: int, temperature: float, activation: str,
                 pool_every: int, shortcut: bool, residual: bool, batch_norm: bool, init: str, form: str = "auto",
                 negative_slope: float = 0.01, mixing: str = "softmax"):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}")
        blocks, c = [], in_channels
        for i, w in enumerate(widths):
            pool = pool_every > 0 and (i % pool_every == pool_every - 1)
            blocks.append(MixBlock(c, int(w), k=k, temperature=temperature, activation=activation,
                                   batch_norm=batch_norm, shortcut=shortcut, residual=residual, pool=pool,
                                   form=form, negative_slope=negative_slope, mixing=mixing))
            c = int(w)
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(c, num_classes)
        apply_init(self, init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(x)
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


@register_model()
def mixconv000(num_classes: int = 10, in_channels: int = 3, widths: tuple = (64, 128, 128, 256, 256, 512, 512),
               k: int = 4, temperature: float = 1.0, init: str = "default", residual: bool = False,
               form: str = "auto", mixing: str = "softmax") -> nn.Module:
    """Report 000: 7 mix-conv blocks, PReLU, max-pool every other block (residual=True adds skips).
    form: how each mix-conv layer runs (auto, timed, grouped, wide, wide_matmul, bmm, fused, reference): same
    result; timed measures them once per layer shape on this machine and keeps the fastest.
    mixing: the K weights as a softmax (default) or the linear layer's raw outputs."""
    return MixConvNet(num_classes=num_classes, in_channels=in_channels, widths=widths, k=k, temperature=temperature,
                      activation="prelu", pool_every=2, shortcut=False, residual=residual, batch_norm=True, init=init,
                      form=form, mixing=mixing)


@register_model()
def mixconv001(num_classes: int = 10, in_channels: int = 3,
               widths: tuple = (32, 32, 64, 64, 64, 128, 128, 128, 256, 256, 256), k: int = 4,
               temperature: float = 1.0, init: str = "kaiming_normal", form: str = "auto",
               negative_slope: float = 0.01, mixing: str = "softmax") -> nn.Module:
    """Report 001: 11 mix-conv blocks, LeakyReLU, 1x1-conv shortcut where channels change, kaiming init.
    form: how each mix-conv layer runs (auto, timed, grouped, wide, wide_matmul, bmm, fused, reference): same
    result; timed measures them once per layer shape on this machine and keeps the fastest.
    mixing: the K weights as a softmax (default) or the linear layer's raw outputs.
    negative_slope: the LeakyReLU's (PyTorch's default 0.01; the report names none)."""
    return MixConvNet(num_classes=num_classes, in_channels=in_channels, widths=widths, k=k, temperature=temperature,
                      activation="leakyrelu", pool_every=3, shortcut=True, residual=False, batch_norm=True, init=init,
                      form=form, negative_slope=negative_slope, mixing=mixing)


@register_model()
def mixconv002(num_classes: int = 10, in_channels: int = 3, widths: tuple = (64, 64, 128, 128, 256, 256),
               k: int = 4, temperature: float = 1.0, init: str = "default", form: str = "auto",
               mixing: str = "softmax") -> nn.Module:
    """Report 002: residual mix-conv blocks, ReLU, max-pool every other block.
    form: how each mix-conv layer runs (auto, timed, grouped, wide, wide_matmul, bmm, fused, reference): same
    result; timed measures them once per layer shape on this machine and keeps the fastest.
    mixing: the K weights as a softmax (default) or the linear layer's raw outputs."""
    return MixConvNet(num_classes=num_classes, in_channels=in_channels, widths=widths, k=k, temperature=temperature,
                      activation="relu", pool_every=2, shortcut=False, residual=True, batch_norm=True, init=init,
                      form=form, mixing=mixing)
