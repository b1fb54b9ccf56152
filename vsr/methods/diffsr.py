"""Diff-SR (METHOD.md section 1; seeds/000_*): noise injection, DDIM, back-projection.

Given the input frames and their upsampled version, inject forward noise to the first
timestep of the set (eps comes from a noise source: Gaussian, or predicted as in InvSR),
then run deterministic DDIM down to 0 with the frozen prior; every step's x0 estimate
is back-projected onto the input's low band (`consistency` passes; 0 = Diff-SR as
published). Pure torch and differentiable: the engine calls it under inference mode with
a tiled denoiser, the noise predictor's trainer calls it with gradients on plain crops.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from vsr.core.sampling import Denoiser, back_project, sample_ddim
from vsr.core.schedule import add_noise
from vsr.core.tiling import pad_to_min


def upscale(
    denoiser: Denoiser,
    low: torch.Tensor,
    upsampled: torch.Tensor,
    eps: torch.Tensor,
    timesteps: Sequence[int],
    alphas_cumprod: torch.Tensor,
    *,
    consistency: int = 1,
    min_size: int = 0,
    callback: Callable[[dict], None] | None = None,
) -> torch.Tensor:
    """(N, 3, H, W) float32 in [-1, 1] (unclamped): the restored frames.

    low: (N, 3, h, w) the input in [-1, 1]; upsampled: (N, 3, H, W) the input resized to
    the target in [-1, 1]; eps: (N or 1, 3, H, W) the noise injected at timesteps[0]
    (x_t = sqrt(abar) upsampled + sqrt(1 - abar) eps, `add_noise`); timesteps: the
    descending DDIM set; alphas_cumprod: (T,). consistency: back-projection passes per
    step (`back_project`). min_size: frames smaller than this (a tile) are padded on the
    bottom/right for sampling and cropped back; the projection sees only the picture.
    """
    # 1. inject noise at the start timestep (Diff-SR eq. 4; diffusers' add_noise)
    x_t = add_noise(upsampled, eps, timesteps[0], alphas_cumprod)
    # 2. pad a frame smaller than a tile (reflect), remembering the picture's size
    x_t, (h0, w0) = pad_to_min(x_t, min_size, min_size)
    padded = tuple(x_t.shape[-2:]) != (h0, w0)
    # 3. DDIM to 0, each x0 estimate projected onto the input's low band
    project = None
    if consistency:

        def project(x0: torch.Tensor) -> torch.Tensor:
            if not padded:  # the usual case: no copy of the frame
                return back_project(x0, low, consistency)
            x0 = x0.clone()  # project the picture, not the padding
            x0[..., :h0, :w0] = back_project(x0[..., :h0, :w0], low, consistency)
            return x0

    out = sample_ddim(denoiser, x_t, timesteps, alphas_cumprod, project=project, callback=callback)
    return out[..., :h0, :w0]
