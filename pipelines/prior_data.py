"""The prior's training data: corpus images, random multi-scale training crops and the
fixed validation crops (see `train_prior`)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vsr.errors import InputError

from .prior_model import TrainConfig


def load_images(corpus: str | Path, split: str, max_side: int) -> list[torch.Tensor]:
    """The split's photographs as uint8 CHW tensors, capped at `max_side` (area filter)."""
    import cv2

    folder = Path(corpus) / "images" / split
    paths = sorted(p for p in folder.glob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not paths:
        raise InputError(f"no {split} images under {folder}: build the corpus with 'vsr corpus build {corpus}'")
    images = []
    for p in paths:
        bgr = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if bgr is None:
            raise InputError(f"cannot read corpus image {p}")
        h, w = bgr.shape[:2]
        s = max_side / max(h, w)
        if s < 1:
            bgr = cv2.resize(bgr, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)
        images.append(torch.from_numpy(np.ascontiguousarray(bgr[:, :, ::-1])).permute(2, 0, 1).contiguous())
    return images


def random_crops(images: list[torch.Tensor], cfg: TrainConfig, gen: torch.Generator) -> torch.Tensor:
    """A batch of crops in [-1, 1]: each from a random image, at a random downscale, flipped.

    The downscale picks a window of `crop * s` pixels (s in [1, max_downscale], log-uniform)
    and area-resizes it to `crop`, as if the photograph had been taken at lower resolution.
    """
    out = torch.empty(cfg.batch_size, 3, cfg.crop, cfg.crop)
    for i in range(cfg.batch_size):
        img = images[int(torch.randint(len(images), (1,), generator=gen))]
        _, h, w = img.shape
        s_max = min(cfg.max_downscale, h / cfg.crop, w / cfg.crop)
        u = float(torch.rand((), generator=gen))
        s = math.exp(u * math.log(max(s_max, 1.0)))
        win = max(cfg.crop, min(int(round(cfg.crop * s)), h, w))
        y = int(torch.randint(h - win + 1, (1,), generator=gen))
        x = int(torch.randint(w - win + 1, (1,), generator=gen))
        crop = img[:, y : y + win, x : x + win].float().unsqueeze(0) / 127.5 - 1.0
        if win != cfg.crop:
            crop = F.interpolate(crop, size=(cfg.crop, cfg.crop), mode="area")
        if cfg.hflip and float(torch.rand((), generator=gen)) < 0.5:
            crop = crop.flip(-1)
        out[i] = crop[0]
    return out


def val_crops(images: list[torch.Tensor], size: int) -> torch.Tensor:
    """Deterministic centre crops of the held-out images (downscaled 2x first, area)."""
    crops = []
    for img in images:
        x = img.float().unsqueeze(0) / 127.5 - 1.0
        x = F.interpolate(x, scale_factor=0.5, mode="area")
        _, _, h, w = x.shape
        if min(h, w) < size:
            continue
        y0, x0 = (h - size) // 2, (w - size) // 2
        crops.append(x[:, :, y0 : y0 + size, x0 : x0 + size])
    return torch.cat(crops)

