"""Temporal scores: warping error (Lai et al. 2018) along a reliable optical flow, and
flicker (change of low-frequency luma in static regions), per pair and over a clip."""
from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

from vsr.core import flow as flow_
from vsr.metrics.fidelity import luma, to_float_rgb

# --------------------------------------------------------------------------------------
# Temporal


def _gray_u8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(luma(image)), 0, 255).astype(np.uint8)


def consistent_flow(prev_guide: np.ndarray, cur_guide: np.ndarray, preset: int = cv2.DISOPTICAL_FLOW_PRESET_MEDIUM
                    ) -> tuple[np.ndarray, np.ndarray]:
    """`vsr.core.flow.consistent_flow` on the guides' luma (HxWx3 RGB or HxW luma guides
    of the same size, e.g. the reference or the low-resolution input resized)."""
    return flow_.consistent_flow(_gray_u8(prev_guide), _gray_u8(cur_guide), preset)


def warping_error_pair(prev: np.ndarray, cur: np.ndarray, flow: np.ndarray, valid: np.ndarray) -> float:
    """Lai et al. (2018) warping error of one output pair: mean over non-occluded pixels of
    the squared RGB difference (values in [0, 1], averaged over channels) between the
    current frame and the previous one warped along ``flow``. NaN if no pixel is valid."""
    if prev.shape != cur.shape or flow.shape[:2] != cur.shape[:2]:
        raise ValueError(f"frame/flow sizes differ: {prev.shape}, {cur.shape}, {flow.shape}")
    if not valid.any():
        return math.nan
    diff = (to_float_rgb(cur) - flow_.warp(to_float_rgb(prev), flow)) ** 2
    return float(diff.mean(axis=2)[valid].mean())


FLICKER_BLOCK = 8


def low_pass_luma(image: np.ndarray, block: int = FLICKER_BLOCK) -> np.ndarray:
    """Block-average luma (area downsampling by ``block``): the low-frequency brightness
    whose frame-to-frame change a viewer sees as flicker. HxW -> (H//block)x(W//block)."""
    y = luma(image)
    h, w = (y.shape[0] // block) * block, (y.shape[1] // block) * block
    return y[:h, :w].reshape(h // block, block, w // block, block).mean(axis=(1, 3))


def static_mask_from_guide(prev_guide: np.ndarray, cur_guide: np.ndarray, threshold: float = 1.0,
                           block: int = FLICKER_BLOCK) -> np.ndarray:
    """Low-res bool mask of blocks whose guide luma changes less than ``threshold`` levels
    (0..255 scale) between the two frames: the static regions of the true content."""
    return np.abs(low_pass_luma(cur_guide, block) - low_pass_luma(prev_guide, block)) < threshold


def static_mask_from_flow(flow: np.ndarray, valid: np.ndarray, max_motion: float = 0.25,
                          block: int = FLICKER_BLOCK) -> np.ndarray:
    """Low-res bool mask of blocks where every pixel is reliable and moves less than
    ``max_motion`` px: the static regions when no reference is available."""
    h, w = (flow.shape[0] // block) * block, (flow.shape[1] // block) * block
    still = (np.hypot(flow[..., 0], flow[..., 1]) < max_motion) & valid
    return still[:h, :w].reshape(h // block, block, w // block, block).all(axis=(1, 3))


def flicker_pair(prev: np.ndarray, cur: np.ndarray, static: np.ndarray, block: int = FLICKER_BLOCK) -> float:
    """Mean absolute change of block-average luma (0..255 levels) over static blocks; 0 for a
    steady output. NaN if no block is static."""
    if not static.any():
        return math.nan
    return float(np.abs(low_pass_luma(cur, block) - low_pass_luma(prev, block))[static].mean())


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def _pairs(frames: Sequence[np.ndarray], guides: Sequence[np.ndarray] | None, what: str):
    if guides is not None and len(guides) != len(frames):
        raise ValueError(f"{what}: {len(frames)} frames but {len(guides)} guide frames")
    g = frames if guides is None else guides
    for i in range(1, len(frames)):
        yield frames[i - 1], frames[i], g[i - 1], g[i]


def warping_error(frames: Sequence[np.ndarray], guides: Sequence[np.ndarray] | None = None) -> float:
    """Mean warping error over consecutive pairs; flow from ``guides`` (same size as the
    frames: reference or upscaled low-res), else from the frames themselves."""
    return _nanmean([warping_error_pair(p, c, *consistent_flow(gp, gc)) for p, c, gp, gc in _pairs(frames, guides, "warping_error")])


def flicker(frames: Sequence[np.ndarray], guides: Sequence[np.ndarray] | None = None) -> float:
    """Mean flicker over consecutive pairs; static regions from ``guides`` when given,
    else from the frames' own optical flow (still and reliable blocks)."""
    values = []
    for p, c, gp, gc in _pairs(frames, guides, "flicker"):
        static = static_mask_from_guide(gp, gc) if guides is not None else static_mask_from_flow(*consistent_flow(p, c))
        values.append(flicker_pair(p, c, static))
    return _nanmean(values)
