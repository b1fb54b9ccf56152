"""The noise seam: what a noise source sees and what it returns.

A noise source gives the eps injected at the start timestep (METHOD.md section 1:
x_t = sqrt(abar_t) x_up + sqrt(1 - abar_t) eps). Today's sources ignore the picture
(`gaussian.py`: one field shared by every frame, or a fresh field per frame); a learned
one predicts eps from the upsampled frame (InvSR's partial noise prediction, METHOD.md
section 2) and a temporal one warps the previous frame's eps along the optical flow.
All of them get the same `NoiseContext`, so adding one is a new file in this package
plus a line in `vsr.noise.SOURCES`; the sampling loop never changes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass(frozen=True)
class NoiseState:
    """What a temporal source may carry from one frame to the next.

    frame_index: the frame it belongs to; upsampled: (3, H, W) float32 in [-1, 1];
    eps: (3, H, W) float32, the noise that frame was given.
    """

    frame_index: int
    upsampled: torch.Tensor
    eps: torch.Tensor


@dataclass(frozen=True)
class NoiseContext:
    """Everything a source may look at for a batch of N same-size frames.

    frame_indices: N frame indices (the noise must be a function of these and the seed,
    never of the batching, STYLE.md 7); low: (N, 3, h, w) float32 in [-1, 1], the input
    frames; upsampled: (N, 3, H, W) float32 in [-1, 1], the input resized to the target
    (bicubic, antialiased); timestep: t_start, an integer in [1, T) indexing
    alphas_cumprod (T,) float64; previous: the state of the frame just before this batch
    (None at the start of a stream or a chunk); dtype: the precision networks run in;
    scale: the upscaling factor (geometric mean of the two axes', `Engine.scale_for`),
    None where unknown. Tensors are on the engine's device.
    """

    frame_indices: tuple[int, ...]
    low: torch.Tensor
    upsampled: torch.Tensor
    timestep: int
    alphas_cumprod: torch.Tensor
    previous: NoiseState | None = None
    dtype: torch.dtype = torch.float32
    scale: float | None = None

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of the target."""
        return int(self.upsampled.shape[-2]), int(self.upsampled.shape[-1])


class NoiseSource(Protocol):
    """eps for a batch: (N, 3, H, W) or (1, 3, H, W) (one field broadcast over the batch),
    float32, standard normal per pixel for the Gaussian sources, on the CPU or the
    context's device.

    `noise_level(scale)` returns the t/T the source was calibrated for at an upscaling
    factor, or None to use the model card's PRF curve (the Gaussian sources).
    `calibrated_steps()` returns the DDIM step count that calibration is for (what
    `steps: auto` runs), or None for the engine's default (2); `calibrated_consistency()`
    (optional) the back-projection passes per step it was measured with (what
    `consistency: auto` runs), or None for the engine's default (1).
    """

    def __call__(self, ctx: NoiseContext) -> torch.Tensor: ...

    def noise_level(self, scale: float) -> float | None: ...

    def calibrated_steps(self) -> int | None: ...
