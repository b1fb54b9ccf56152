"""Optical flow for temporal work: DIS (OpenCV) with a forward-backward reliability mask,
and backward warping. Used by the temporal metrics and by a flow-warped noise source.
numpy/OpenCV on the CPU; nothing here prints or picks a device."""
from __future__ import annotations

import cv2
import numpy as np


def consistent_flow(
    prev_gray: np.ndarray, cur_gray: np.ndarray, preset: int = cv2.DISOPTICAL_FLOW_PRESET_MEDIUM
) -> tuple[np.ndarray, np.ndarray]:
    """Backward flow from the current frame to the previous one, with its reliability mask.

    prev_gray, cur_gray: HxW uint8 luma of frames that carry the motion (the reference, or
    the low-resolution input resized to the output size). Returns ``flow`` HxWx2 float32 with
    ``cur(x) ~ prev(x + flow(x))`` (OpenCV DIS on luma) and ``valid`` HxW bool: the target
    lands inside the frame and the forward flow brings it back (forward-backward check of
    Sundaram et al. 2010: |f_b + f_f(x + f_b)|^2 <= 0.01 (|f_b|^2 + |f_f(x + f_b)|^2) + 0.5);
    the rest is treated as occluded.
    """
    g_prev, g_cur = prev_gray, cur_gray
    dis = cv2.DISOpticalFlow_create(preset)
    back = dis.calc(g_cur, g_prev, None)
    fwd = dis.calc(g_prev, g_cur, None)
    h, w = g_cur.shape
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    mx, my = gx + back[..., 0], gy + back[..., 1]
    fwd_at = cv2.remap(fwd, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    err = ((back + fwd_at) ** 2).sum(-1)
    bound = 0.01 * ((back**2).sum(-1) + (fwd_at**2).sum(-1)) + 0.5
    inside = (mx >= 0) & (mx <= w - 1) & (my >= 0) & (my <= h - 1)
    return back, inside & (err <= bound)


def warp(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Sample ``image`` (HxW or HxWxC float) at x + flow(x), bilinear, replicate borders."""
    h, w = flow.shape[:2]
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.remap(
        image.astype(np.float32), gx + flow[..., 0], gy + flow[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
