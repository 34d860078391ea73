"""Building blocks shared by several model families: named weight initialisation.

Owns the init schemes a config can pick (init=kaiming_normal, ...). Never defines a
whole model.
"""

from __future__ import annotations

import torch.nn as nn

INITS = ("default", "kaiming_normal", "kaiming_uniform", "xavier_normal", "xavier_uniform")


INIT_LAYERS = ("all", "conv", "linear")


def apply_init(model: nn.Module, init: str, layers: str = "all") -> None:
    """Re-initialise conv and/or linear weights (and MixConv experts, which count as conv) with a named
    scheme; the biases of the layers it touches go to zero. layers="linear" is e.g. report 001's choice."""
    if init not in INITS:
        raise ValueError(f"init must be one of {', '.join(INITS)}")
    if layers not in INIT_LAYERS:
        raise ValueError(f"init layers must be one of {', '.join(INIT_LAYERS)}")
    if init == "default":
        return
    fn = {"kaiming_normal": lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu"),
          "kaiming_uniform": lambda w: nn.init.kaiming_uniform_(w, nonlinearity="relu"),
          "xavier_normal": nn.init.xavier_normal_, "xavier_uniform": nn.init.xavier_uniform_}[init]
    conv, linear = layers in ("all", "conv"), layers in ("all", "linear")
    for m in model.modules():
        if (conv and isinstance(m, nn.Conv2d)) or (linear and isinstance(m, nn.Linear)):
            fn(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif conv and hasattr(m, "expert_weights"):  # layers holding K stacked kernels (MixConv2d)
            for w in m.expert_weights():
                fn(w)
