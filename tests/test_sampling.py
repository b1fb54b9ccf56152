import math

import torch
from diffusers import DDIMScheduler

from vsr.models import ModelDenoiser
from vsr.sampling import sample_ddim
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
