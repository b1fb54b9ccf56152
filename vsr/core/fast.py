"""The fast path: bicubic upsampling plus one back-projection pass, on uint8/uint16 frames.

The bottom rung of `vsr stream`'s quality ladder: what the engine's back-projection does
to its x0 estimate (`vsr.core.sampling.back_project`), done once to the bicubic upsample
with OpenCV instead of torch (10-25 ms for a 360p -> 720p frame on 2 busy CPU cores,
against 130-160 ms for torch's antialiased resampler): the output downscales back to
(nearly) the input, and no model runs. The downsampling is OpenCV's area filter, not the
engine's antialiased bicubic, so the fast path is close to, not equal to, a
back-projection with the engine's kernel.
"""
from __future__ import annotations

import cv2
import numpy as np


def fast_upscale(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """HxWx3 uint8 or uint16 -> size (width, height) of the same dtype.

    up = bicubic(image); up += bicubic(image - area(up)): the residual of the upsample
    against the input, measured at the input's size, is added back at the output's.
    """
    width, height = size
    h, w = image.shape[:2]
    up = cv2.resize(image, (width, height), interpolation=cv2.INTER_CUBIC)
    if (width, height) == (w, h):
        return up
    down = cv2.resize(up, (w, h), interpolation=cv2.INTER_AREA)
    # the residual in int16 for 8-bit frames (exact, and the cheapest type OpenCV resizes)
    residual = cv2.subtract(image, down, dtype=cv2.CV_16S if image.dtype == np.uint8 else cv2.CV_32F)
    residual = cv2.resize(residual, (width, height), interpolation=cv2.INTER_CUBIC)
    depth = cv2.CV_8U if image.dtype == np.uint8 else cv2.CV_16U
    return cv2.add(up, residual, dtype=depth)
