"""Counting a network's multiply-accumulates: the compute budgets of the prior and the
noise predictor (GMACs per 256x256 tile) are stated and tested in this unit."""
from __future__ import annotations

from collections.abc import Callable

import torch


def count_macs(net: torch.nn.Module, forward: Callable[[torch.Tensor], object], size: int = 256) -> int:
    """Multiply-accumulates of `forward(x)` on one zero (1, 3, size, size) input in net's
    dtype and device, counted by forward hooks on every Conv2d (output elements x kernel
    area x input channels per group) and Linear (output elements x input features);
    normalisation, activations and resampling are not counted."""
    total = 0

    def hook(m: torch.nn.Module, _inp: object, out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(m, torch.nn.Conv2d):
            total += out[0].numel() * m.kernel_size[0] * m.kernel_size[1] * m.in_channels // m.groups
        elif isinstance(m, torch.nn.Linear):
            total += out[0].numel() * m.in_features

    hooks = [m.register_forward_hook(hook) for m in net.modules()]
    try:
        with torch.no_grad():
            p = next(net.parameters())
            forward(torch.zeros(1, 3, size, size, dtype=p.dtype, device=p.device))
    finally:
        for h in hooks:
            h.remove()
    return total
