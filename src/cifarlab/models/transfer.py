"""Transfer learning from torchvision ResNets (seed report 003, part 2).

Owns loading pretrained weights safely (a local state dict with weights_only=True,
or a torchvision weights name when online), the new linear head, the input policy
for small images and head-only vs full fine-tuning.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import UserError
from .registry import register_model


class TransferResNet(nn.Module):
    def __init__(self, arch: str, num_classes: int, in_channels: int, pretrained: str | None, finetune: str,
                 input_policy: str, upsample_size: int):
        super().__init__()
        import torchvision.models as tvm

        if finetune not in ("head", "full"):
            raise ValueError("finetune must be head or full")
        if input_policy not in ("adapt", "upsample"):
            raise ValueError("input_policy must be adapt (3x3 stem, no max-pool) or upsample")
        net = getattr(tvm, arch)(weights=None)
        if pretrained:
            net.load_state_dict(_pretrained_state(arch, pretrained))
        if in_channels != 3:
            # keep what pretraining learnt: a grey image is the mean of the RGB filters' responses
            old = net.conv1
            net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
            with torch.no_grad():
                net.conv1.weight.copy_(old.weight.mean(1, keepdim=True).expand(-1, in_channels, -1, -1))
        if input_policy == "adapt":
            # 32 px images: a 7x7/2 stem + max-pool would leave 1x1 maps; use the CIFAR stem (new weights)
            net.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
            net.maxpool = nn.Identity()
        net.fc = nn.Linear(net.fc.in_features, num_classes)
        if finetune == "head":
            for name, p in net.named_parameters():
                p.requires_grad_(name.startswith("fc.") or (input_policy == "adapt" and name.startswith("conv1.")))
        self.net = net
        self.upsample_size = upsample_size if input_policy == "upsample" else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.upsample_size and x.shape[-1] != self.upsample_size:
            x = F.interpolate(x, size=(self.upsample_size, self.upsample_size), mode="bilinear", align_corners=False)
        return self.net(x)


def _pretrained_state(arch: str, pretrained: str) -> dict:
    path = Path(pretrained).expanduser()
    if path.suffix in (".pt", ".pth") or path.exists():
        if not path.is_file():
            raise UserError(f"pretrained weights file not found: {path}; pass model_args.pretrained=PATH to a "
                            f"torchvision {arch} state dict, or a weights name such as IMAGENET1K_V1 when online")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001
            raise UserError(f"cannot load {path} safely ({str(err).splitlines()[0][:100]}); "
                            "it must be a plain state dict") from None
        return state.get("state_dict", state) if isinstance(state, dict) else state
    import torchvision.models as tvm

    try:
        weights = tvm.get_model_weights(arch)[pretrained]
        return weights.get_state_dict(progress=False)
    except KeyError:
        raise UserError(f"unknown {arch} weights '{pretrained}'; use a torchvision name such as IMAGENET1K_V1 "
                        "or a path to a .pth state dict") from None
    except Exception as err:  # noqa: BLE001 - offline download
        raise UserError(f"could not download {arch} weights {pretrained} ({str(err).splitlines()[0][:80]}); "
                        "offline, pass model_args.pretrained=PATH to a local state dict") from None


def _factory(arch: str):
    def build(num_classes: int = 10, in_channels: int = 3, pretrained: str = "", finetune: str = "full",
              input_policy: str = "adapt", upsample_size: int = 224) -> nn.Module:
        return TransferResNet(arch, num_classes, in_channels, pretrained or None, finetune, input_policy,
                              upsample_size)
    build.__doc__ = (f"torchvision {arch} with a new head; pretrained=PATH|WEIGHTS_NAME, finetune=head|full, "
                     "input_policy=adapt|upsample")
    return build


for _arch in ("resnet18", "resnet34", "resnet50"):
    register_model(f"transfer_{_arch}")(_factory(_arch))
