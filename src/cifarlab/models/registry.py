"""The model registry: register_model, get_model, list_models, and the hooks a model may offer.

Owns names -> factory functions and the check that keyword arguments exist, so a
typo in model_args is a one-line error naming the allowed keys. Every module in this
package registers its own models when imported (families import the registry, never the
other way round): a new family is a new file here. Never builds optimizers or touches data.

A factory is `f(num_classes, in_channels, **options) -> nn.Module`; it may also take
`image_size` (the data's side in pixels, filled in by the trainer). Its docstring's first line
is what `cifarlab models` shows. Optional hooks the trainer and tools look for:

- `model.data_init(x)`: called once before training with a seeded sample (5,000 images) of
  augmented, normalised training images, e.g. fastnet's whitening stem.
- `model.start_epoch(epoch) -> bool`: called before each training epoch (0-based); returns True when
  it changed which parameters train (DDP then rebuilds its wrapper), e.g. freezing a bias.
- `model.fold_batchnorm() -> nn.Module`: an equivalent eval-mode module with batch norm folded into
  the convolutions; int8 quantization uses it instead of tracing.
- `layer.expert_weights() -> list[Tensor]`: a layer holding K stacked kernels (MixConv2d) lists them;
  named inits and Muon treat each as its own conv weight.
- parameters named `*.router.*` (mix-conv routers) get `optim.router_lr` under Muon.
"""

from __future__ import annotations

import inspect
from typing import Callable

import torch.nn as nn

from ..errors import UserError

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_FAMILIES_LOADED = False


def register_model(name: str | None = None):
    """Decorator: register a factory `f(num_classes=..., in_channels=..., **kw) -> nn.Module`."""
    def wrap(fn):
        key = name or fn.__name__
        if key in _MODELS:
            raise ValueError(f"model '{key}' is already registered")
        params = inspect.signature(fn).parameters
        for required in ("num_classes", "in_channels"):
            if required not in params:
                raise TypeError(f"model factory '{key}' must accept {required}=")
        _MODELS[key] = fn
        return fn
    return wrap


def _load_families() -> None:
    """Import every family module of this package once (lazily, so `import cifarlab` stays light)."""
    global _FAMILIES_LOADED
    if not _FAMILIES_LOADED:
        _FAMILIES_LOADED = True
        import importlib
        import pkgutil

        package = __name__.rsplit(".", 1)[0]
        for module in pkgutil.iter_modules(importlib.import_module(package).__path__):
            if module.name not in ("registry", "layers"):
                importlib.import_module(f"{package}.{module.name}")


def list_models() -> list[str]:
    _load_families()
    return sorted(_MODELS)


def model_options(name: str) -> dict[str, object]:
    """The keyword arguments a model takes beyond num_classes/in_channels, with defaults."""
    _load_families()
    params = inspect.signature(_MODELS[name]).parameters
    return {k: p.default for k, p in params.items() if k not in ("num_classes", "in_channels")}


def model_summary(name: str) -> str:
    _load_families()
    doc = inspect.getdoc(_MODELS[name]) or ""
    return doc.splitlines()[0] if doc else ""


def check_model(name: str, kwargs: dict) -> None:
    """The one-line UserError get_model would raise for an unknown model or option, without building
    anything: a run checks this before it spends minutes loading data."""
    _load_families()
    if name not in _MODELS:
        raise UserError(f"unknown model '{name}'; registered models: {', '.join(sorted(_MODELS))}")
    allowed = model_options(name)
    unknown = [k for k in kwargs if k not in allowed]
    if unknown:
        listed = ", ".join(allowed) or "(none)"
        raise UserError(f"model '{name}' has no option '{unknown[0]}'; allowed model_args: {listed}")


def get_model(name: str, num_classes: int = 10, in_channels: int = 3, *, image_size: int | None = None,
              **kwargs) -> nn.Module:
    """Build a registered model; unknown names or keyword arguments -> UserError naming the allowed ones.

    image_size is passed on only to models that take it (e.g. patchmlp) and only when
    the caller did not set it in kwargs: the trainer fills it from the data.
    """
    check_model(name, kwargs)
    allowed = model_options(name)
    if image_size is not None and "image_size" in allowed and "image_size" not in kwargs:
        kwargs["image_size"] = image_size
    try:
        return _MODELS[name](num_classes=num_classes, in_channels=in_channels, **kwargs)
    except (TypeError, ValueError) as err:
        raise UserError(f"model '{name}' rejected its options {kwargs}: {err}") from None
