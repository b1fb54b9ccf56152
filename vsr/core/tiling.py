"""Overlapping tiles and their smooth blend, pure torch.

The model works on its training crop; a frame is covered by tile x tile crops that
overlap by at least `overlap` pixels. Each tile's prediction is weighted by a window that
ramps smoothly (raised cosine) across the overlap and the weights are normalised to sum
to 1 at every pixel, so a pixel-wise model gives back exactly what it gives untiled, and
a real model shows no seams. The engine blends at every denoising step (METHOD.md 3).
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from vsr.core.schedule import eps_from_x0

Tile = tuple[int, int]  # (top, left) of a tile x tile crop


def _axis_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets along one axis: first at 0, last flush with the end, evenly spread
    so that neighbours overlap by >= overlap. Requires length >= tile."""
    if length <= tile:
        return [0]
    stride = tile - overlap
    n = 1 + math.ceil((length - tile) / stride)
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def plan_tiles(height: int, width: int, tile: int, overlap: int) -> list[Tile]:
    """Top-left corners of tiles covering a height x width frame (both >= tile), row-major."""
    if height < tile or width < tile:
        raise ValueError(f"frame {height}x{width} is smaller than the tile {tile}: pad it first")
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile), got {overlap} for tile {tile}")
    return [(y, x) for y in _axis_starts(height, tile, overlap) for x in _axis_starts(width, tile, overlap)]


def tile_window(tile: int, overlap: int) -> torch.Tensor:
    """(tile, tile) float32 blend window: 1 inside, a raised-cosine ramp over `overlap`
    pixels at each edge. Strictly positive, so frame borders (covered by one tile) and
    any pixel covered only by a ramp still normalise to weight 1."""
    ramp = torch.ones(tile, dtype=torch.float64)
    if overlap > 0:
        i = torch.arange(overlap, dtype=torch.float64)
        r = torch.sin(math.pi * (i + 0.5) / (2 * overlap)) ** 2
        ramp[:overlap] = r
        ramp[tile - overlap:] = torch.minimum(ramp[tile - overlap:], r.flip(0))
    return (ramp[:, None] * ramp[None, :]).float()


def blend_weights(height: int, width: int, tiles: list[Tile], window: torch.Tensor) -> torch.Tensor:
    """(H, W) sum of the windows of all tiles: divide by it to make weights sum to 1."""
    t = window.shape[-1]
    acc = torch.zeros(height, width, dtype=window.dtype, device=window.device)
    for y, x in tiles:
        acc[y:y + t, x:x + t] += window
    return acc


def pad_to_min(x: torch.Tensor, min_h: int, min_w: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad (N, C, H, W) on the bottom/right up to at least min_h x min_w (reflect where
    the frame is big enough, replicate beyond). Returns the padded tensor and the original
    (H, W) to crop back to."""
    h, w = x.shape[-2:]
    ph, pw = max(0, min_h - h), max(0, min_w - w)
    if ph == 0 and pw == 0:
        return x, (h, w)
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode), (h, w)


def apply_tiled(
    fn: Callable[[torch.Tensor], tuple[torch.Tensor, ...]],
    x: torch.Tensor,
    tile: int,
    overlap: int,
    batch: int,
) -> tuple[torch.Tensor, ...]:
    """Run fn on all tiles of all frames of x (N, C, H, W; H, W >= tile) and blend.

    fn takes (batch, C, tile, tile) and returns a tuple of same-shaped tensors; tiles of
    several frames share a call, so memory is bounded by `batch`. Every call gets exactly
    `batch` crops (the last one padded with zeros, their outputs dropped): a network's
    kernels are chosen by the batch size and round differently for another one (measured:
    up to 6e-3 in bf16), while at a fixed size each crop's output does not depend on its
    neighbours in the batch, so a frame gives the same pixels whatever frames it is
    grouped with (STYLE.md 7: resume and chunked runs are bit-identical).
    Returns the blended outputs as float32 (N, C, H, W), weights summing to 1 per pixel.
    """
    n, _, h, w = x.shape
    tiles, weights = _blend_plan(h, w, tile, overlap, x.device)
    jobs = [(i, y, xx) for i in range(n) for (y, xx) in tiles]
    acc: list[torch.Tensor] | None = None
    for start in range(0, len(jobs), batch):
        chunk = jobs[start:start + batch]
        crops = torch.stack([x[i, :, y:y + tile, xx:xx + tile] for i, y, xx in chunk])
        if len(chunk) < batch:
            crops = torch.cat([crops, crops.new_zeros((batch - len(chunk), *crops.shape[1:]))])
        outs = fn(crops)
        if acc is None:
            acc = [torch.zeros(n, o.shape[1], h, w, dtype=torch.float32, device=x.device) for o in outs]
        for a, o in zip(acc, outs):
            for k, (i, y, xx) in enumerate(chunk):
                a[i, :, y:y + tile, xx:xx + tile].addcmul_(o[k].float(), weights[(start + k) % len(tiles)])
    assert acc is not None
    return tuple(acc)


@functools.lru_cache(maxsize=8)
def _blend_plan(h: int, w: int, tile: int, overlap: int, device: torch.device) -> tuple[list[Tile], torch.Tensor]:
    """Tiles of an h x w frame and each tile's normalised weights (K, tile, tile) on
    `device`, which sum to 1 at every pixel. Cached: a stream reuses one frame size at
    every step, so the weights are built and copied to the device once, not per step."""
    tiles = plan_tiles(h, w, tile, overlap)
    window = tile_window(tile, overlap)
    norm = blend_weights(h, w, tiles, window)
    return tiles, torch.stack([window / norm[y:y + tile, x:x + tile] for y, x in tiles]).to(device)


class TiledDenoiser:
    """A whole-frame denoiser made of a tile denoiser: (x_t, t) -> (x0, eps) for frames
    of any size >= tile, so the sampler never knows tiles exist (METHOD.md section 3).

    predict_x0(crops, t): (B, C, tile, tile) -> (B, C, tile, tile) float32, the model's
    clean estimate; at every call all tiles of all frames are predicted `batch` at a time,
    their x0 blended with weights summing to 1 at every pixel, and eps is recomputed from
    the blend (`eps_from_x0`) so the DDIM step stays consistent with the x0 it was given.
    alphas_cumprod: (T,). Implements `vsr.core.sampling.Denoiser`.
    """

    def __init__(
        self,
        predict_x0: Callable[[torch.Tensor, int], torch.Tensor],
        alphas_cumprod: torch.Tensor,
        tile: int,
        overlap: int,
        batch: int,
    ):
        self.predict_x0 = predict_x0
        self.alphas_cumprod = alphas_cumprod
        self.tile, self.overlap, self.batch = tile, overlap, batch

    def __call__(self, x_t: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        (x0,) = apply_tiled(lambda crops: (self.predict_x0(crops, t),), x_t, self.tile, self.overlap, self.batch)
        return x0, eps_from_x0(x_t, x0, t, self.alphas_cumprod)
