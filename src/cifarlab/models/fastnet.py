"""fastnet: the speed-run network family (after airbench / hlb-CIFAR10 / Myrtle ResNet-9).

A frozen 2x2 patch-whitening stem (initialised from data), then three conv groups
(conv -> max-pool -> BN -> GELU -> conv -> BN -> GELU) with dirac-initialised
convolutions, batch norm without a learned scale, and a scaled linear head.
Owns its architecture and its data-dependent initialisation (`data_init`).
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import register_model


class BatchNormNoScale(nn.BatchNorm2d):
    """BN with the scale fixed at 1 (only the bias learns): as good, fewer parameters to tune."""

    def __init__(self, channels: int, momentum: float = 0.4, eps: float = 1e-12):
        super().__init__(channels, eps=eps, momentum=momentum)
        self.weight.requires_grad_(False)


class DiracConv(nn.Conv2d):
    """3x3 'same' conv whose first in_channels filters start as the identity (an implicit residual)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__(c_in, c_out, 3, padding=1, bias=False)
        with torch.no_grad():
            nn.init.dirac_(self.weight[: min(c_in, c_out)])


def dirac_mixconv(c_in: int, c_out: int, k: int, temperature: float) -> nn.Module:
    """A mix-conv layer whose K experts start as DiracConv filters (identity where channels allow)."""
    from .mixconv import MixConv2d

    layer = MixConv2d(c_in, c_out, k, temperature=temperature, bias=False)
    with torch.no_grad():
        for w in layer.expert_weights():
            w.copy_(DiracConv(c_in, c_out).weight)
    # the router keeps its random init: with identical experts, per-sample mixing weights that differ are
    # what makes the experts' gradients (and so the experts) differ; a zero router would never break symmetry
    return layer


class ConvGroup(nn.Module):
    def __init__(self, c_in: int, c_out: int, *, bn_momentum: float, mix_k: int = 0, mix_temperature: float = 1.0):
        super().__init__()
        self.conv1 = DiracConv(c_in, c_out)
        self.norm1 = BatchNormNoScale(c_out, bn_momentum)
        self.conv2 = dirac_mixconv(c_out, c_out, mix_k, mix_temperature) if mix_k else DiracConv(c_out, c_out)
        self.norm2 = BatchNormNoScale(c_out, bn_momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.norm1(F.max_pool2d(self.conv1(x), 2)))
        return F.gelu(self.norm2(self.conv2(x)))


class FastNet(nn.Module):
    def __init__(self, *, num_classes: int, in_channels: int, widths: tuple[int, int, int], whiten_kernel: int,
                 bn_momentum: float, head_scale: float, head_init: str, mix_k: int = 0, mix_groups: tuple = (),
                 mix_temperature: float = 1.0, whiten_bias_epochs: int = 0):
        super().__init__()
        if whiten_bias_epochs < 0:
            raise ValueError("whiten_bias_epochs must be >= 0 (0 = train the stem's bias throughout)")
        self.whiten_bias_epochs = whiten_bias_epochs
        whiten_width = 2 * in_channels * whiten_kernel ** 2
        self.whiten = nn.Conv2d(in_channels, whiten_width, whiten_kernel, padding=0, bias=True)
        self.whiten.weight.requires_grad_(False)  # set by data_init, then frozen
        nn.init.zeros_(self.whiten.bias)
        c = whiten_width
        groups = []
        for i, w in enumerate(widths):
            k = mix_k if i in mix_groups else 0
            groups.append(ConvGroup(c, w, bn_momentum=bn_momentum, mix_k=k, mix_temperature=mix_temperature))
            c = w
        self.groups = nn.Sequential(*groups)
        self.head = nn.Linear(c, num_classes, bias=False)
        if head_init == "unit":  # airbench94_muon: unit-std head weights with a 1/width output scale
            with torch.no_grad():
                self.head.weight.mul_(1 / self.head.weight.std())
        elif head_init != "default":
            raise ValueError("head_init must be default or unit")
        self.head_scale = head_scale

    @torch.no_grad()
    def data_init(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        """Set the stem to ZCA-style whitening of the data's 2x2 patches (+ its negation, so GELU keeps both signs).

        `images` are normalised training images (N,C,H,W); a few thousand are plenty.
        """
        k = self.whiten.kernel_size[0]
        x = images.float()
        c = x.shape[1]
        patches = x.unfold(2, k, 1).unfold(3, k, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, c * k * k)
        cov = patches.T @ patches / len(patches)
        eigvals, eigvecs = torch.linalg.eigh(cov.double())
        eigvals, eigvecs = eigvals.flip(0).float(), eigvecs.T.flip(0).float()
        filters = (eigvecs / torch.sqrt(eigvals.clamp_min(0) + eps)[:, None]).reshape(-1, c, k, k)
        self.whiten.weight.copy_(torch.cat([filters, -filters]).to(self.whiten.weight))

    def start_epoch(self, epoch: int) -> bool:
        """Called by the trainer before each 0-based epoch; True when the set of trained parameters changed.

        With whiten_bias_epochs=N the stem's bias trains for N epochs, then freezes (airbench's
        whiten_bias_train_steps): the stem's output then needs no gradient, so backward skips the first
        group's input gradient and the stem itself (faster steps for the rest of the run)."""
        train_bias = not self.whiten_bias_epochs or epoch < self.whiten_bias_epochs
        if self.whiten.bias.requires_grad == train_bias:
            return False
        self.whiten.bias.requires_grad_(train_bias)
        return True

    def fold_batchnorm(self) -> nn.Module:
        """An inference-only copy with every BN folded into the conv before it (what int8 quantization wants).

        conv1's BN sits after the max-pool; a per-channel affine map with a positive scale commutes with
        max, so it folds into conv1 too. mixfastnet's per-sample kernels cannot be folded this way."""
        return FoldedFastNet(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.whiten(x))
        x = self.groups(x)
        # global max-pool (the 3x3 max-pool of the 3x3 map at 32 px input). Not torch.amax: its backward splits
        # the gradient among ties by comparing with the max, and inductor's fused CPU kernel recomputes the
        # bf16 input in fp32, finds no tie, divides by zero and makes every gradient NaN (torch 2.14, compile=true)
        x = F.adaptive_max_pool2d(x, 1).flatten(1)
        return self.head(x) * self.head_scale


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    if not isinstance(conv, nn.Conv2d) or not bool((scale > 0).all()):
        raise ValueError("only plain convolutions followed by a BN with positive scale fold")
    folded = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, padding=conv.padding, bias=True)
    with torch.no_grad():
        folded.weight.copy_(conv.weight * scale[:, None, None, None])
        folded.bias.copy_(bn.bias - bn.running_mean * scale)
    return folded.to(conv.weight.device)


class FoldedFastNet(nn.Module):
    """FastNet for inference only: whiten, then (conv -> max-pool -> GELU -> conv -> GELU) x 3, BN folded in.

    Carries PyTorch's eager-mode quantization stubs (identities in float): quantize.py turns it into
    int8 convolutions with GELU, the global max and the head left in float."""

    def __init__(self, net: FastNet):
        from torch.ao.quantization import DeQuantStub, QuantStub

        super().__init__()
        self.whiten = copy.deepcopy(net.whiten)
        self.convs = nn.ModuleList([_fold(conv, bn) for g in net.groups
                                    for conv, bn in ((g.conv1, g.norm1), (g.conv2, g.norm2))])
        self.quant = nn.ModuleList([QuantStub() for _ in range(len(self.convs) + 1)])  # before every conv
        self.dequant = nn.ModuleList([DeQuantStub() for _ in range(len(self.convs) + 1)])  # before every GELU
        self.head = copy.deepcopy(net.head)
        self.head_scale = net.head_scale
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.dequant[0](self.whiten(self.quant[0](x))))
        for i, conv in enumerate(self.convs):
            x = conv(self.quant[i + 1](x))
            if i % 2 == 0:
                x = F.max_pool2d(x, 2)  # on int8 values when quantized: max commutes with the rounding
            x = F.gelu(self.dequant[i + 1](x))
        return self.head(F.adaptive_max_pool2d(x, 1).flatten(1)) * self.head_scale


@register_model()
def fastnet(num_classes: int = 10, in_channels: int = 3, widths: tuple = (64, 256, 256), whiten_kernel: int = 2,
            bn_momentum: float = 0.4, head_scale: float = 1 / 9, head_init: str = "default",
            whiten_bias_epochs: int = 0) -> nn.Module:
    """Speed-run CNN: whitened 2x2 stem, 3 conv groups, BN without scale, dirac init (airbench94-style)."""
    return FastNet(num_classes=num_classes, in_channels=in_channels, widths=tuple(int(w) for w in widths),
                   whiten_kernel=whiten_kernel, bn_momentum=bn_momentum, head_scale=head_scale, head_init=head_init,
                   whiten_bias_epochs=int(whiten_bias_epochs))


@register_model()
def mixfastnet(num_classes: int = 10, in_channels: int = 3, widths: tuple = (64, 256, 256), whiten_kernel: int = 2,
               bn_momentum: float = 0.4, head_scale: float = 1 / 9, head_init: str = "default", k: int = 4,
               mix_groups: tuple = (2,), temperature: float = 1.0, whiten_bias_epochs: int = 0) -> nn.Module:
    """fastnet whose second conv in the chosen groups is a dynamic mix of K convs (report 000-002's idea at
    speed-run cost: only the small late feature maps pay for per-sample kernels)."""
    return FastNet(num_classes=num_classes, in_channels=in_channels, widths=tuple(int(w) for w in widths),
                   whiten_kernel=whiten_kernel, bn_momentum=bn_momentum, head_scale=head_scale, head_init=head_init,
                   mix_k=int(k), mix_groups=tuple(int(g) for g in mix_groups), mix_temperature=temperature,
                   whiten_bias_epochs=int(whiten_bias_epochs))
