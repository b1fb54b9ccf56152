"""Samplers: plain functions of (denoiser, x, timesteps, alphas_cumprod).

A denoiser maps (x_t, t) -> (x0_pred, eps_pred), both (N, C, H, W) float32 in the
model's value range; the model's parametrisation (eps, v, sample), dtype and tiling all
live behind it, so the loop here is only the update rule.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import torch


class Denoiser(Protocol):
    def __call__(self, x_t: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]: ...


def sample_ddim(
    denoiser: Denoiser,
    x: torch.Tensor,
    timesteps: Sequence[int],
    alphas_cumprod: torch.Tensor,
    *,
    callback: Callable[[dict], None] | None = None,
) -> torch.Tensor:
    """Deterministic DDIM (eta = 0) from x = x_{timesteps[0]} down to x_0.

    Eq. 12 of Song et al. (2021) with sigma = 0:
        x_prev = sqrt(a_prev) * x0_pred + sqrt(1 - a_prev) * eps_pred
    where a_prev is alpha_bar at the next timestep of the set, and 1 after the last one
    (so the final step returns x0_pred). timesteps must descend; an empty set returns x.
    Arithmetic is float32 whatever the model's dtype.
    """
    ac = alphas_cumprod.detach().to(device="cpu", dtype=torch.float64)
    x = x.float()
    for i, t in enumerate(timesteps):
        x0, eps = denoiser(x, int(t))
        a_prev = float(ac[int(timesteps[i + 1])]) if i + 1 < len(timesteps) else 1.0
        x = a_prev**0.5 * x0.float() + (1.0 - a_prev) ** 0.5 * eps.float()
        if callback is not None:
            callback({"step": i, "t": int(t), "steps": len(timesteps), "x": x, "x0": x0})
    return x
