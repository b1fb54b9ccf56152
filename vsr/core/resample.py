"""The one resampler: bicubic with antialiasing (the engine's resize, back-projection,
calibration and the noise predictor's input all use it, so they agree on the kernel)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def resample(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, C, h, w) -> (N, C, *size): bicubic with antialiasing, unclamped; the one
    resampler of the engine (its input resize, back-projection, calibration)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False)


def resize(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(N, C, h, w) float [0, 1] -> (N, C, height, width), bicubic with antialiasing, clamped."""
    if x.shape[-2:] == (height, width):
        return x
    return resample(x, (height, width)).clamp(0.0, 1.0)
