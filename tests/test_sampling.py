import math

import torch
from diffusers import DDIMScheduler

from vsr.models import ModelDenoiser
from vsr.sampling import back_project, sample_ddim
from vsr.schedule import add_noise


def _schedule():
    return DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False, set_alpha_to_one=True)


class Identity(torch.nn.Module):
    def forward(self, x, t):
        return x


def test_ddim_from_t0_returns_the_input():
    ac = _schedule().alphas_cumprod
    x = torch.rand(1, 3, 8, 8) * 2 - 1
    assert torch.equal(sample_ddim(None, x, (), ac), x)  # no steps: nothing to undo
    den = ModelDenoiser(Identity(), ac, "sample", clip_x0=False)  # predicts x0 = x_t
    torch.testing.assert_close(sample_ddim(den, x, (0,), ac), x, rtol=0, atol=0)


def test_ddim_with_a_perfect_denoiser_recovers_x0_from_any_set():
    ac = _schedule().alphas_cumprod
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(2, 3, 8, 8, generator=g) * 2 - 1
    eps = torch.randn(2, 3, 8, 8, generator=g)

    def oracle(x_t, t):
        a = float(ac[t])
        return x0, (x_t - math.sqrt(a) * x0) / math.sqrt(1 - a)

    seen = []
    for ts in [(200,), (200, 100), (600, 400, 200, 50)]:
        out = sample_ddim(oracle, add_noise(x0, eps, ts[0], ac), ts, ac, callback=lambda d: seen.append(d["t"]))
        torch.testing.assert_close(out, x0, rtol=0, atol=1e-5)
    assert seen == [200, 200, 100, 600, 400, 200, 50]


def test_one_ddim_step_matches_diffusers():
    sched = _schedule()
    sched.set_timesteps(10)  # step ratio 100: 200 -> 100
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 3, 8, 8, generator=g)
    eps_model = torch.randn(1, 3, 8, 8, generator=g)

    class Const(torch.nn.Module):
        def forward(self, x, t):
            return eps_model

    den = ModelDenoiser(Const(), sched.alphas_cumprod, "epsilon", clip_x0=False)
    ours_x0, ours_eps = den(x, 200)
    a_prev = float(sched.alphas_cumprod[100])
    ours = math.sqrt(a_prev) * ours_x0 + math.sqrt(1 - a_prev) * ours_eps
    # sample_ddim's first step of (200, 100) is exactly this update
    calls = []
    sample_ddim(den, x, (200, 100), sched.alphas_cumprod, callback=lambda d: calls.append(d["x"].clone()))
    ref = sched.step(eps_model, 200, x, eta=0.0).prev_sample
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(calls[0], ref, rtol=1e-5, atol=1e-5)


def _down(x, size):
    return torch.nn.functional.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False)


def test_back_projection_makes_the_estimate_downscale_to_the_input():
    g = torch.Generator().manual_seed(3)
    low = torch.rand(2, 3, 12, 20, generator=g) * 2 - 1
    x0 = torch.rand(2, 3, 24, 40, generator=g) * 2 - 1  # an estimate unrelated to the input
    assert torch.equal(back_project(x0, low, 0), x0)
    residuals = [(_down(back_project(x0, low, k), (12, 20)) - low).abs().mean().item() for k in range(4)]
    assert residuals[1] < 0.5 * residuals[0]  # white noise: the worst case for bicubic up/down
    assert residuals[0] > residuals[1] > residuals[2] > residuals[3]  # each pass shrinks it
    one = back_project(x0[:1], low[1:], 2)  # a single-frame input broadcasts like any other
    torch.testing.assert_close(one, back_project(x0[:1], low[1:].expand(1, -1, -1, -1), 2))


def test_back_projection_keeps_detail_the_input_cannot_see():
    """Adding a band the downscaler removes (HR Nyquist checkerboard) commutes with projecting."""
    g = torch.Generator().manual_seed(4)
    low = torch.rand(1, 3, 16, 16, generator=g) * 2 - 1
    base = torch.rand(1, 3, 32, 32, generator=g) * 2 - 1
    yy, xx = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    checker = 0.3 * ((-1.0) ** (yy + xx)).expand(1, 3, 32, 32)
    inner = (..., slice(4, -4), slice(4, -4))  # the border sees the edge padding of the resize
    assert _down(checker, (16, 16))[..., 2:-2, 2:-2].abs().max() < 1e-6  # invisible at the input's size
    with_detail = back_project(base + checker, low, 2)
    torch.testing.assert_close((with_detail - checker)[inner], back_project(base, low, 2)[inner], rtol=0, atol=1e-4)


def test_projection_is_applied_to_every_step_and_to_the_output():
    ac = _schedule().alphas_cumprod
    x = torch.zeros(1, 3, 8, 8)
    den = ModelDenoiser(Identity(), ac, "sample", clip_x0=False)
    calls = []

    def project(x0):
        calls.append(x0.clone())
        return torch.full_like(x0, 0.25)

    out = sample_ddim(den, x, (300, 100), ac, project=project)
    assert len(calls) == 2
    torch.testing.assert_close(out, torch.full_like(x, 0.25))  # the last x0 is the output
