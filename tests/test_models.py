"""Every registered model gets shape, backward and parameter-count tests for free (timm's trick)."""

import pytest
import torch

from cifarlab.errors import UserError
from cifarlab.models import get_model, list_models, register_model

# small widths keep the registry sweep fast; a model listed here must accept that option
SMALL = {"resnet18": {"width": 8}, "fastnet": {"widths": (8, 16, 16)}}
KNOWN_PARAMS = {("resnet18", 10, 3): 11_173_962,  # the standard CIFAR ResNet-18 count
                ("fastnet", 10, 3): 1_972_792}  # by hand: stem 312 + groups 50,944 + 738,304 + 1,180,672 + head 2,560


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("classes, channels, size", [(10, 3, 32), (100, 3, 32), (10, 1, 28), (100, 1, 28)])
def test_forward_backward_shapes(name, classes, channels, size):
    torch.manual_seed(0)
    model = get_model(name, num_classes=classes, in_channels=channels, **SMALL.get(name, {}))
    x = torch.randn(3, channels, size, size)
    out = model(x)
    assert out.shape == (3, classes) and torch.isfinite(out).all()
    torch.nn.functional.cross_entropy(out.float(), torch.arange(3) % classes).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    # the loss reaches both ends of the network (zero-init residual branches may still be silent)
    assert grads[0].abs().sum() > 0 and grads[-1].abs().sum() > 0


@pytest.mark.parametrize("name", list_models())
def test_parameter_counts(name):
    for (n, classes, channels), count in KNOWN_PARAMS.items():
        if n == name:
            model = get_model(name, num_classes=classes, in_channels=channels)
            assert sum(p.numel() for p in model.parameters()) == count
    small10 = get_model(name, num_classes=10, **SMALL.get(name, {}))
    small100 = get_model(name, num_classes=100, **SMALL.get(name, {}))
    head = [m for m in small10.modules() if isinstance(m, torch.nn.Linear)][-1]
    extra = sum(p.numel() for p in small100.parameters()) - sum(p.numel() for p in small10.parameters())
    assert extra == 90 * (head.in_features + (head.bias is not None))  # only the classifier grows with the class count


def test_registry_errors():
    with pytest.raises(ValueError, match="already registered"):
        register_model("resnet18")(lambda num_classes=10, in_channels=3: None)
    with pytest.raises(UserError, match="unknown model 'resnet19'; registered models: .*resnet18"):
        get_model("resnet19")
    with pytest.raises(UserError, match="model 'resnet18' has no option 'widht'; allowed model_args: width"):
        get_model("resnet18", widht=3)


def test_fastnet_whitening_init_whitens_patches():
    torch.manual_seed(0)
    model = get_model("fastnet", widths=(8, 16, 16))
    # correlated colour channels: whitening must decorrelate the 2x2x3 patches
    base = torch.randn(256, 1, 16, 16)
    images = torch.cat([base, base * 0.9 + 0.1 * torch.randn_like(base), base * 0.5], 1)
    model.data_init(images)
    out = model.whiten(images)[:, :12] - model.whiten.bias[:12, None, None]  # first half: the whitening filters
    flat = out.permute(0, 2, 3, 1).reshape(-1, 12)
    cov = flat.T @ flat / len(flat)
    # the 4 strong components (eigenvalues >> eps) come out with unit variance, all 8 real ones uncorrelated
    assert torch.allclose(torch.diag(cov)[:4], torch.ones(4), atol=0.01)
    top = cov[:8, :8]
    assert (top - torch.diag(torch.diag(top))).abs().max() < 0.01
