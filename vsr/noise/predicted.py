"""Predicted noise: InvSR's partial noise prediction behind the noise seam (METHOD.md 2).

`PredictedNoise` runs a model's `NoisePredictor` (vsr.models.noise_predictor) on the
upsampled frame: eps = f(x_up, t_start), so the start x_t = sqrt(abar) x_up +
sqrt(1 - abar) eps is the predictor's guess of a point on the high-resolution image's
trajectory (Yue et al. 2024, arXiv 2412.09013, eq. 7), and the frozen prior's 1-3 DDIM
steps finish it. A predictor conditioned on the upscaling factor (`scale_features` > 0)
gets the context's `scale`. Optionally a Gaussian field is added, eps = f(x_up, t) + mix * z, z
from a picture-blind base source (InvSR's predicted mean plus a fixed sigma).

The noise is a function of the frame's pixels (and the seed, through the base source):
every frame is predicted on its own, whole (tiled only above `max_pixels`), so the
result never depends on the batch it came in (STYLE.md 7). It follows the picture: a
static scene gets the same eps in every frame, a moving one gets eps that moves with it.

Its start timestep per scale is calibrated with the predictor and stored in the model
card under `noise_predictor:` (scales, t, mix); `noise_level(scale)` interpolates it like
the PRF curve (`vsr.core.schedule.prf_noise_level`).
"""
from __future__ import annotations

import copy
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from vsr.core.schedule import prf_noise_level
from vsr.core.tiling import apply_tiled
from vsr.errors import ModelError
from vsr.noise.base import NoiseContext, NoiseSource

log = logging.getLogger(__name__)

CARD_KEY = "noise_predictor"  # model card key: {scales: [...], t: [...], mix: float}


class PredictedNoise:
    """eps = f(x_up, t_start) [+ mix * base field], (N, 3, H, W) float32 on ctx's device.

    predictor: a `NoisePredictor`; scales/levels: its calibrated start t/T per upscaling
    factor (None: use the model card's PRF); steps: the DDIM step count they were
    calibrated for (what the engine runs under `steps: auto`); consistency: the
    back-projection passes per step they were calibrated with (what `consistency: auto`
    runs; None: the engine's default); mix >= 0: std of the Gaussian field added
    (needs `base`); max_pixels: frames larger than this are predicted in overlapping
    tiles of `tile` (blended, `vsr.core.tiling.apply_tiled`) to bound memory; source:
    the model folder it came from (pickling keeps only that path).
    """

    def __init__(
        self,
        predictor: torch.nn.Module,
        *,
        scales: Sequence[float] | None = None,
        levels: Sequence[float] | None = None,
        mix: float = 0.0,
        base: NoiseSource | None = None,
        max_pixels: int = 3840 * 2160,
        tile: int = 1024,
        overlap: int = 64,
        source: str | None = None,
        steps: int | None = None,
        consistency: int | None = None,
    ):
        if (scales is None) != (levels is None) or (scales is not None and len(scales) != len(levels or ())):
            raise ModelError("noise predictor: scales and t must both be given, with equal lengths")
        if steps is not None and (not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= 50):
            raise ModelError(f"noise predictor: steps must be an integer in 1..50, got {steps!r}")
        if consistency is not None and (not isinstance(consistency, int) or isinstance(consistency, bool)
                                        or not 0 <= consistency <= 10):
            raise ModelError(f"noise predictor: consistency must be an integer in 0..10, got {consistency!r}")
        if mix < 0 or (mix > 0 and base is None):
            raise ModelError("noise predictor: mix must be >= 0 and needs a base noise source when > 0")
        r = int(predictor.size_multiple)
        if tile % r or overlap % r:
            raise ModelError(f"noise predictor: tile and overlap must be multiples of {r}")
        self.predictor = predictor.eval().requires_grad_(False)
        self.scales = tuple(float(s) for s in scales) if scales is not None else None
        self.levels = tuple(float(v) for v in levels) if levels is not None else None
        self.mix = float(mix)
        self.steps = int(steps) if steps is not None else None
        self.consistency = int(consistency) if consistency is not None else None
        self.base = base
        self.max_pixels, self.tile, self.overlap = int(max_pixels), int(tile), int(overlap)
        self.source = source
        self._nets: dict[tuple[torch.device, torch.dtype, float | None], torch.nn.Module] = {}

    # -- the NoiseSource protocol ---------------------------------------------------------
    def noise_level(self, scale: float) -> float | None:
        """The calibrated start t/T at this scale (log-scale interpolation, clamped)."""
        if self.scales is None:
            return None
        return prf_noise_level(scale, self.scales, self.levels)

    def calibrated_steps(self) -> int | None:
        """The DDIM steps the start t was calibrated for (the card's `steps`), or None."""
        return self.steps

    def calibrated_consistency(self) -> int | None:
        """The back-projection passes per step the start t was calibrated with (the card's
        `consistency`), or None."""
        return self.consistency

    def __call__(self, ctx: NoiseContext) -> torch.Tensor:
        """(N, 3, H, W) float32: one prediction per frame, whatever the batch."""
        ac = ctx.alphas_cumprod.detach().to("cpu", torch.float64)
        own = self.predictor.alphas_cumprod.detach().to("cpu", torch.float64)
        if ac.shape != own.shape or not torch.allclose(ac, own, rtol=1e-6, atol=1e-9):
            raise ModelError("noise predictor: trained for another noise schedule than this model's")
        t = int(ctx.timestep)
        a = float(ac[t])
        sa, sb = a**0.5, (1.0 - a) ** 0.5
        if self.predictor.needs_scale and ctx.scale is None:
            raise ModelError("noise predictor: it is conditioned on the upscaling factor and the context has none")
        x_up = ctx.upsampled.float()
        eps = torch.stack([self._eps(x_up[i : i + 1], t, sa, sb, ctx.dtype, ctx.scale)[0]
                           for i in range(x_up.shape[0])])
        if self.mix > 0:
            eps = eps + self.mix * self.base(ctx).to(eps.device, torch.float32)
        return eps

    # -- pieces ------------------------------------------------------------------------
    def _net(self, device: torch.device, dtype: torch.dtype, scale: float | None = None) -> torch.nn.Module:
        """The predictor on this device and dtype (NHWC on the CPU), an anchored one folded
        to plain weights at `scale` (`NoisePredictor.at_scale`): made once per key, not per frame."""
        anchored = bool(getattr(self.predictor.config, "scale_anchors", None))
        key = (device, dtype, scale if anchored else None)
        if key not in self._nets:
            net = self.predictor.at_scale(scale) if anchored else self.predictor
            p = next(net.parameters())
            if (p.device, p.dtype) != (device, dtype):
                net = torch.nn.Module.to(copy.deepcopy(net), device=device, dtype=dtype)
            if device.type == "cpu":  # NHWC: oneDNN's convolutions are 1.25-1.4x faster on it (benchmarks.engine)
                net = torch.nn.Module.to(net if net is not self.predictor else copy.deepcopy(net),
                                         memory_format=torch.channels_last)
            self._nets[key] = net.eval().requires_grad_(False)
        return self._nets[key]

    def detail(self, x_up: torch.Tensor, t: int, dtype: torch.dtype = torch.float32,
               scale: float | None = None) -> torch.Tensor:
        """d (1, 3, H, W) float32 for one frame x_up (1, 3, H, W) in [-1, 1] upscaled by
        `scale` (needed by a predictor conditioned on it)."""
        net = self._net(x_up.device, dtype, scale)
        r = int(net.size_multiple)
        h, w = x_up.shape[-2:]
        ph, pw = (-h) % r, (-w) % r
        x = F.pad(x_up, (0, pw, 0, ph), mode="replicate") if ph or pw else x_up
        x = x.to(dtype)
        if x.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            if h * w <= self.max_pixels or min(x.shape[-2:]) < self.tile:
                d = net.detail(x, t, scale)
            else:
                (d,) = apply_tiled(lambda crops: (net.detail(crops, t, scale),), x, self.tile, self.overlap, 1)
        return d.float()[..., :h, :w].contiguous()

    def _eps(self, x_up: torch.Tensor, t: int, sa: float, sb: float, dtype: torch.dtype,
             scale: float | None) -> torch.Tensor:
        # eps_hat = ((1 - sqrt(abar)) x_up + d) / sqrt(1 - abar): the start is x_up + d
        return ((1.0 - sa) * x_up + self.detail(x_up, t, dtype, scale)) / sb

    # -- pickling: a loaded predictor travels as its folder ----------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if k != "_nets"}
        if self.source is not None:
            state["predictor"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._nets = {}
        if self.predictor is None:
            self.predictor = _load_predictor(Path(self.source)).eval().requires_grad_(False)


def _load_predictor(folder: Path) -> torch.nn.Module:
    from vsr.models.noise_predictor import SUBFOLDER, NoisePredictor

    try:
        return NoisePredictor.from_pretrained(str(folder), subfolder=SUBFOLDER, low_cpu_mem_usage=False).float()
    except Exception as exc:  # diffusers raises several types for a bad folder
        raise ModelError(f"cannot load the noise predictor from {folder / SUBFOLDER}: {exc}") from None


def load_noise_predictor(
    model: Any, *, base: NoiseSource | None = None, card: dict | None = None
) -> PredictedNoise | None:
    """The model's noise predictor as a noise source, or None when it has none.

    model: a `LoadedModel` (its `source` folder and card are used) or a model folder.
    The predictor lives in `FOLDER/noise_predictor/` (diffusers `save_pretrained`); its
    calibration in the card's `noise_predictor:` key (scales, t, steps, consistency, mix), taken from
    `card` if given, else the LoadedModel's card, else `FOLDER/model_card.yaml`. A card
    without the key gives a source whose `noise_level` is None (the PRF decides).
    base: the Gaussian source `mix` draws from (needed only when mix > 0).
    Raises ModelError for a folder whose predictor or card entry is broken.
    """
    from vsr.models.noise_predictor import SUBFOLDER

    if hasattr(model, "card") and hasattr(model, "source"):
        folder = Path(model.source) if model.source and Path(model.source).is_dir() else None
        entry = card if card is not None else model.card.extra.get(CARD_KEY)
    else:
        folder = Path(os.fspath(model))
        entry = card
        if entry is None and (folder / "model_card.yaml").is_file():
            import yaml

            entry = (yaml.safe_load((folder / "model_card.yaml").read_text()) or {}).get(CARD_KEY)
    if folder is None or not (folder / SUBFOLDER / "config.json").is_file():
        return None
    net = _load_predictor(folder)
    if entry is not None and not isinstance(entry, dict):
        raise ModelError(f"model card key '{CARD_KEY}' must be a mapping (scales, t, mix)")
    entry = entry or {}
    scales, levels = entry.get("scales"), entry.get("t")
    if scales is None or levels is None:
        log.warning("noise predictor in %s has no calibrated start timesteps: using the PRF curve (measure them "
                    "with `vsr calibrate --model FOLDER --noise-predictor --images DIR`)", folder)
        scales = levels = None
    try:
        return PredictedNoise(
            net, scales=scales, levels=levels, mix=float(entry.get("mix", 0.0)), base=base, source=str(folder),
            steps=entry.get("steps") if scales is not None else None,
            consistency=entry.get("consistency") if scales is not None else None,
        )
    except (TypeError, ValueError) as exc:
        raise ModelError(f"model card key '{CARD_KEY}' is invalid: {exc}") from None
