"""The shipped prior: loads with plain diffusers, meets its budgets, and actually denoises."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vsr.models import shipped_weights_dir, to_x0_eps

WEIGHTS = shipped_weights_dir("vsr-prior-s")
pytestmark = pytest.mark.skipif(not (WEIGHTS / "unet").is_dir(), reason="shipped prior weights not present")


@pytest.fixture(scope="module")
def prior():
    from diffusers import DDPMScheduler, UNet2DModel

    unet = UNet2DModel.from_pretrained(WEIGHTS / "unet").float().eval()
    sched = DDPMScheduler.from_pretrained(WEIGHTS / "scheduler")
    return unet, sched


def test_size_and_compute_budgets(prior):
    from vsr.pipelines.train_prior import TrainConfig, count_macs

    unet, _ = prior
    size = sum(p.stat().st_size for p in WEIGHTS.rglob("*.safetensors"))
    assert size <= 25e6
    r = int(round((unet.config.in_channels / 3) ** 0.5))
    assert count_macs(unet, TrainConfig(pixel_unshuffle=r), 256) <= 6e9


@pytest.mark.parametrize("t_frac", [0.1, 0.3])
def test_denoises_a_noisy_photo_better_than_leaving_it_noisy(prior, t_frac, photo):
    import torch.nn.functional as F

    unet, sched = prior
    r = int(round((unet.config.in_channels / 3) ** 0.5))
    img = photo[100:356, 140:396]  # a held-out validation image
    x0 = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float() / 127.5 - 1
    t = torch.tensor([int(t_frac * sched.config.num_train_timesteps)])
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    x_t = sched.add_noise(x0, noise, t)
    with torch.no_grad():
        v = F.pixel_shuffle(unet(F.pixel_unshuffle(x_t, r), t).sample, r)
    ac = sched.alphas_cumprod[t]
    assert sched.config.prediction_type == "v_prediction"
    x0_hat = to_x0_eps(v, x_t, t, sched.alphas_cumprod, "v_prediction")[0].clamp(-1, 1)
    noisy = (x_t / ac.sqrt()).clamp(-1, 1)
    err_model = float(((x0_hat - x0) ** 2).mean())
    err_noisy = float(((noisy - x0) ** 2).mean())
    assert err_model < 0.5 * err_noisy  # at least 3 dB better than doing nothing
