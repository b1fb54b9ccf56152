"""The one denoiser adapter: the only place that knows a model's parametrisation
(eps / v / sample), dtype and pixel-unshuffle stem. The sampler, the tiler, the trainers
and the tests see (x_t, t) -> (x0, eps) through `to_x0_eps` and `ModelDenoiser`."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from vsr.errors import ModelError
from vsr.models.card import PREDICTION_TYPES


def to_x0_eps(
    model_output: torch.Tensor,
    x_t: torch.Tensor,
    t: int | torch.Tensor,
    alphas_cumprod: torch.Tensor,
    prediction_type: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0, eps) implied by a network output, float32 (N, C, H, W), unclipped.

    With a = alphas_cumprod[t], x_t = sqrt(a) x0 + sqrt(1 - a) eps (DDPM, Ho et al. 2020
    eq. 4), and the network predicts one of: "epsilon" eps; "v_prediction"
    v = sqrt(a) eps - sqrt(1 - a) x0 (Salimans & Ho 2022, sec. 4); "sample" x0. The other
    two follow by solving these two linear equations. t: an int for the batch, or an
    (N,) tensor of per-sample timesteps (training). alphas_cumprod: (T,).
    """
    if prediction_type not in PREDICTION_TYPES:
        raise ModelError(f"unsupported prediction_type {prediction_type!r}")
    x_t, out = x_t.float(), model_output
    if isinstance(t, torch.Tensor) and t.ndim > 0:  # per-sample coefficients, shaped for broadcasting
        a = alphas_cumprod.to(device=x_t.device, dtype=torch.float64)[t.to(x_t.device).long()]
        sa = a.sqrt().float().view(-1, *([1] * (x_t.ndim - 1)))
        sb = (1 - a).sqrt().float().view(-1, *([1] * (x_t.ndim - 1)))
        out = out.float()
        if prediction_type == "epsilon":
            return (x_t - sb * out) / sa, out
        if prediction_type == "v_prediction":
            return sa * x_t - sb * out, sa * out + sb * x_t
        return out, (x_t - sa * out) / sb.clamp_min(1e-8)
    a = float(alphas_cumprod[int(t)])
    sa, sb = a**0.5, (1.0 - a) ** 0.5
    if prediction_type == "epsilon":
        return torch.sub(x_t, out, alpha=sb).div_(sa), out.float()
    if prediction_type == "v_prediction":
        return torch.sub(x_t * sa, out, alpha=sb), torch.add(out * sa, x_t, alpha=sb)
    return out.float(), torch.sub(x_t, out, alpha=sa).div_(max(sb, 1e-8))


class ModelDenoiser:
    """(x_t, t) -> (x0_pred, eps_pred): float32 (N, 3, H, W) in [-1, 1] space in and out.

    The only place that knows the model's parametrisation (epsilon, v_prediction,
    sample), its dtype and its pixel-unshuffle stem (the UNet runs on
    pixel_unshuffle(x_t, r); its output is pixel_shuffled back). With clip_x0 the x0
    prediction is clamped to [-1, 1] (eps kept as predicted, as diffusers' DDIM does).
    """

    def __init__(
        self,
        net: torch.nn.Module,
        alphas_cumprod: torch.Tensor,
        prediction_type: str,
        *,
        pixel_unshuffle: int = 1,
        clip_x0: bool = True,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        if prediction_type not in PREDICTION_TYPES:
            raise ModelError(f"unsupported prediction_type {prediction_type!r}")
        self.net = net
        self.alphas_cumprod = alphas_cumprod.detach().to("cpu", torch.float64)
        self.prediction_type = prediction_type
        self.r = pixel_unshuffle
        self.clip_x0 = clip_x0
        self.device = torch.device(device)
        self.dtype = dtype
        self.channels_last = not (self.device.type == "cpu" and dtype == torch.float32)

    def model_output(self, x_t: torch.Tensor, t: int) -> torch.Tensor:
        """The raw network output in pixel space (N, 3, H, W), in the model's dtype."""
        x = x_t.to(device=self.device, dtype=self.dtype)
        if self.r > 1:
            x = F.pixel_unshuffle(x, self.r)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        ts = torch.full((x.shape[0],), int(t), device=self.device, dtype=torch.long)
        out = self.net(x, ts)
        out = getattr(out, "sample", out)
        if self.r > 1:
            out = F.pixel_shuffle(out, self.r)
        return out.to(device=x_t.device)

    def predict_x0(self, x_t: torch.Tensor, t: int) -> torch.Tensor:
        """x0 prediction only, float32 (what the tiled engine blends); clipped per the card."""
        return self(x_t, t)[0]

    def __call__(self, x_t: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        x0, eps = to_x0_eps(self.model_output(x_t, t), x_t, t, self.alphas_cumprod, self.prediction_type)
        return (x0.clamp(-1.0, 1.0) if self.clip_x0 else x0), eps
