import math

import pytest
import torch
from diffusers import DDPMScheduler

from vsr.schedule import add_noise, prf_noise_level, timestep_set


def test_add_noise_matches_closed_form_and_diffusers():
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    ac = sched.alphas_cumprod
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(2, 3, 8, 8, generator=g) * 2 - 1
    eps = torch.randn(2, 3, 8, 8, generator=g)
    for t in (0, 1, 200, 999):
        a = float(ac[t])
        expect = math.sqrt(a) * x0 + math.sqrt(1 - a) * eps
        torch.testing.assert_close(add_noise(x0, eps, t, ac), expect, rtol=0, atol=1e-6)
    ts = torch.tensor([10, 700])
    torch.testing.assert_close(add_noise(x0, eps, ts, ac), sched.add_noise(x0, eps, ts), rtol=0, atol=1e-6)


def test_timestep_sets():
    assert timestep_set(0.2, 2, 1000) == (200, 100)
    assert timestep_set(0.2, 1, 1000) == (200,)
    assert timestep_set(0.4, 4, 1000) == (400, 300, 200, 100)
    assert timestep_set(0.003, 5, 1000) == (3, 2, 1)  # never repeats, never empty
    with pytest.raises(ValueError):
        timestep_set(1.0, 2, 1000)


def test_prf_curve_interpolates_in_log_scale_monotone_and_clamped():
    scales, levels = [2, 4, 8], [0.2, 0.4, 0.55]
    assert prf_noise_level(2, scales, levels) == pytest.approx(0.2)
    assert prf_noise_level(4, scales, levels) == pytest.approx(0.4)
    assert prf_noise_level(math.sqrt(8), scales, levels) == pytest.approx(0.3)  # halfway in log(scale)
    assert prf_noise_level(1.2, scales, levels) == pytest.approx(0.2)
    assert prf_noise_level(16, scales, levels) == pytest.approx(0.55)
    grid = [1 + 0.05 * i for i in range(200)]
    vals = [prf_noise_level(s, scales, levels) for s in grid]
    assert all(b >= a for a, b in zip(vals, vals[1:]))
    # unsorted input curves give the same answer
    assert prf_noise_level(3, [8, 2, 4], [0.55, 0.2, 0.4]) == prf_noise_level(3, scales, levels)


def test_eps_from_x0_inverts_add_noise():
    from vsr.schedule import eps_from_x0

    ac = DDPMScheduler(num_train_timesteps=1000).alphas_cumprod
    g = torch.Generator().manual_seed(3)
    x0 = torch.rand(1, 3, 8, 8, generator=g) * 2 - 1
    eps = torch.randn(1, 3, 8, 8, generator=g)
    for t in (5, 300, 900):
        torch.testing.assert_close(eps_from_x0(add_noise(x0, eps, t, ac), x0, t, ac), eps, rtol=0, atol=1e-3 if t == 5 else 1e-5)
