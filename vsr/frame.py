"""The unit that flows through vsr: one picture plus the timing it came with.

Decoding produces `Frame`s, the engine maps them to upscaled `Frame`s with the same
`pts`/`time_base`, and encoding consumes them. Pixels stay integer (uint8, or uint16 for
10/12-bit sources, full-range RGB) until the engine's edge converts them to float once.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from fractions import Fraction

import numpy as np


@dataclass(frozen=True)
class Frame:
    """image: HxWx3 RGB, uint8 (0..255) or uint16 (0..65535, 10/12-bit sources scaled up).

    pts/time_base: the source frame's presentation timestamp, kept verbatim so variable
    frame rate and A/V sync survive; index: position in decode order (0-based).
    alpha: the transparency plane of a source that has one (HxW, the image's dtype,
    0 = transparent, peak = opaque; not premultiplied), else None.
    """

    image: np.ndarray
    pts: int | None = None
    time_base: Fraction | None = None
    index: int = 0
    alpha: np.ndarray | None = None

    def __post_init__(self) -> None:
        img = self.image
        if img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"Frame.image must be HxWx3, got shape {img.shape}")
        if img.dtype not in (np.uint8, np.uint16):
            raise ValueError(f"Frame.image must be uint8 or uint16, got {img.dtype}")
        a = self.alpha
        if a is not None and (a.shape != img.shape[:2] or a.dtype != img.dtype):
            raise ValueError(f"Frame.alpha must be {img.shape[:2]} {img.dtype}, got {a.shape} {a.dtype}")

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    def with_image(self, image: np.ndarray, alpha: np.ndarray | None = None) -> "Frame":
        """Same timing, new pixels (what every stage after decode returns). alpha: the new
        transparency plane; None keeps the frame's own when the size is unchanged (a stage
        that resizes a frame with alpha passes the resized plane, else it is dropped)."""
        if alpha is None and self.alpha is not None and self.alpha.shape == image.shape[:2]:
            alpha = self.alpha
        return replace(self, image=image, alpha=alpha)
