"""Samplers: plain functions of (denoiser, x, timesteps, alphas_cumprod).

A denoiser maps (x_t, t) -> (x0_pred, eps_pred), both (N, C, H, W) float32 in the
model's value range; the model's parametrisation (eps, v, sample), dtype and tiling all
live behind it, so the loop here is only the update rule.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import torch

from vsr.core.resample import resample


class Denoiser(Protocol):
    def __call__(self, x_t: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]: ...


def sample_ddim(
    denoiser: Denoiser,
    x: torch.Tensor,
    timesteps: Sequence[int],
    alphas_cumprod: torch.Tensor,
    *,
    project: Callable[[torch.Tensor], torch.Tensor] | None = None,
    callback: Callable[[dict], None] | None = None,
) -> torch.Tensor:
    """Deterministic DDIM (eta = 0) from x = x_{timesteps[0]} down to x_0.

    Eq. 12 of Song et al. (2021) with sigma = 0:
        x_prev = sqrt(a_prev) * x0_pred + sqrt(1 - a_prev) * eps_pred
    where a_prev is alpha_bar at the next timestep of the set, and 1 after the last one
    (so the final step returns x0_pred). timesteps must descend; an empty set returns x.
    project, if given, maps each x0_pred onto the set of images consistent with the input
    (`back_project`) before the update, keeping eps_pred: the range/null-space split of
    DDNM (Wang et al. 2023), so the prior only writes the detail the input cannot say.
    Arithmetic is float32 whatever the model's dtype.
    """
    ac = alphas_cumprod.detach().to(device="cpu", dtype=torch.float64)
    x = x.float()
    for i, t in enumerate(timesteps):
        x0, eps = denoiser(x, int(t))
        if project is not None:
            x0 = project(x0.float())
        a_prev = float(ac[int(timesteps[i + 1])]) if i + 1 < len(timesteps) else 1.0
        x = a_prev**0.5 * x0.float() + (1.0 - a_prev) ** 0.5 * eps.float()
        if callback is not None:
            callback({"step": i, "t": int(t), "steps": len(timesteps), "x": x, "x0": x0})
    return x


def back_project(x0: torch.Tensor, low: torch.Tensor, iterations: int = 2) -> torch.Tensor:
    """Replace x0's low band by the input's: x0 + up(low - down(x0)), repeated.

    x0 (N, C, H, W) and low (N or 1, C, h, w) share a value range; down/up are bicubic
    with antialiasing, the degradation the engine assumes. Without it, an unconditional
    prior at the small noise levels a small model tolerates adds its own error to the
    whole spectrum, including the band the input already knows exactly; with it, the
    output downscales back to (nearly) the input, so fidelity is that of iterative
    back-projection (Irani & Peleg 1991) and the prior only fills the band above the
    input's Nyquist. Each iteration shrinks the residual down(x0) - low (bicubic up/down
    is not an exact inverse pair, hence more than one). Pure; no clamping.
    """
    if iterations < 1:
        return x0
    size = tuple(x0.shape[-2:])
    small = tuple(low.shape[-2:])
    for _ in range(iterations):
        x0 = x0 + resample(low - resample(x0, small), size)
    return x0
