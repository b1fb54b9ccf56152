"""Pure schedule maths: noise injection, timestep sets and the PRF curve.

Timesteps follow diffusers' convention: integers 0..T-1 indexing `alphas_cumprod`
(alpha_bar), so `add_noise(x0, eps, t, ac)` equals `DDPMScheduler.add_noise`. Nothing here
touches a device or a model.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def add_noise(x0: torch.Tensor, noise: torch.Tensor, t: int | torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Forward diffusion q(x_t | x_0): sqrt(a_t) * x0 + sqrt(1 - a_t) * noise.

    x0, noise: (N, C, H, W) in the model's value range; t: one int for the batch or an
    (N,) tensor; alphas_cumprod: (T,). Computed in x0's dtype.
    """
    a = alphas_cumprod.to(device=x0.device, dtype=torch.float64)
    if isinstance(t, torch.Tensor) and t.ndim > 0:
        a_t = a[t.to(device=x0.device, dtype=torch.long)].reshape(-1, *([1] * (x0.ndim - 1)))
    else:
        a_t = a[int(t)]
    a_t = torch.as_tensor(a_t, device=x0.device, dtype=torch.float64)
    return (a_t.sqrt().to(x0.dtype) * x0 + (1 - a_t).sqrt().to(x0.dtype) * noise)


def timestep_set(noise_level: float, steps: int, num_train_timesteps: int) -> tuple[int, ...]:
    """`steps` descending timesteps evenly spaced from t_start = round(noise_level * T) down.

    e.g. noise_level 0.2, steps 2, T 1000 -> (200, 100). Duplicates (more steps than
    t_start allows) are dropped, so the set is strictly descending and never empty.
    """
    if not 0 < noise_level < 1:
        raise ValueError(f"noise_level must be in (0, 1), got {noise_level}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    t_start = min(max(round(noise_level * num_train_timesteps), 1), num_train_timesteps - 1)
    ts = [round(t_start * (steps - i) / steps) for i in range(steps)]
    out: list[int] = []
    for t in ts:
        if t >= 1 and (not out or t < out[-1]):
            out.append(t)
    return tuple(out) if out else (t_start,)


def prf_noise_level(scale: float, scales: Sequence[float], levels: Sequence[float]) -> float:
    """t*/T for an upscaling factor from a calibrated PRF curve.

    Interpolates linearly in log(scale) between the calibrated points (so 2.83x sits
    halfway between 2x and 4x) and clamps outside them: extrapolating a noise level
    past the calibrated range would be a guess.
    """
    if len(scales) != len(levels) or not scales:
        raise ValueError("PRF curve needs matching, non-empty scales and t lists")
    pts = sorted(zip((float(s) for s in scales), (float(v) for v in levels)))
    if scale <= pts[0][0]:
        return pts[0][1]
    if scale >= pts[-1][0]:
        return pts[-1][1]
    ls = math.log(scale)
    for (s0, v0), (s1, v1) in zip(pts, pts[1:]):
        if s0 <= scale <= s1:
            w = (ls - math.log(s0)) / (math.log(s1) - math.log(s0))
            return v0 + w * (v1 - v0)
    raise AssertionError("unreachable: scale inside the curve's range")


def eps_from_x0(x_t: torch.Tensor, x0: torch.Tensor, t: int, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """The noise implied by x_t and an x0 estimate: (x_t - sqrt(a_t) x0) / sqrt(1 - a_t).

    Used after blending tiles' x0 predictions (and clipping): the DDIM step then stays
    consistent with the x0 it was given (diffusers' `use_clipped_model_output`).
    """
    a = float(alphas_cumprod[int(t)])
    return (x_t - a**0.5 * x0) / max((1.0 - a) ** 0.5, 1e-12)
