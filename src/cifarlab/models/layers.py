"""Building blocks shared by several model families: named weight initialisation.

Owns the init schemes a config can pick (init=kaiming_normal, ...). Never defines a
whole model.
"""

from __future__ import annotations

import torch.nn as nn

INITS = ("default", "kaiming_normal", "kaiming_uniform", "xavier_normal", "xavier_uniform")


def apply_init(model: nn.Module, init: str) -> None:
    """Re-initialise conv/linear weights (and MixConv experts) with a named scheme; biases to zero."""
    if init not in INITS:
        raise ValueError(f"init must be one of {', '.join(INITS)}")
    if init == "default":
        return
    fn = {"kaiming_normal": lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu"),
          "kaiming_uniform": lambda w: nn.init.kaiming_uniform_(w, nonlinearity="relu"),
          "xavier_normal": nn.init.xavier_normal_, "xavier_uniform": nn.init.xavier_uniform_}[init]
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            fn(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif hasattr(m, "expert_weights"):  # layers holding K stacked kernels (MixConv2d)
            for w in m.expert_weights():
                fn(w)
