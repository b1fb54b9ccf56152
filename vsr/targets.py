"""Output-size maths for `vsr upscale`: presets, explicit sizes and scales, as pure functions.

Every size here is (width, height) in pixels. The input is described by its *stored*
size (after rotation is applied) and its sample aspect ratio (SAR, the width of one
stored pixel relative to its height): the picture a viewer sees is `width * SAR` wide.
vsr always writes square pixels, so an anamorphic 720x480 SAR 32:27 input is treated as
the 853x480 picture it displays. Output dimensions are even, because 4:2:0 chroma
subsampling (what every delivery codec uses) needs even sizes.

`plan_output` turns the user's request into a `Plan`: which part of the input frame to
use (`crop`, only for `--fit crop`), the size the engine upscales that part to
(`scaled`), and the black borders around it (`pad`, only for `--fit pad`).
"""
from __future__ import annotations

import math

import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

from vsr.errors import UsageError

# Presets by output height; "2k" and "4k" are the consumer names of 1440p and 2160p.
PRESETS: dict[str, int] = {
    "480p": 480,
    "540p": 540,
    "720p": 720,
    "1080p": 1080,
    "1440p": 1440,
    "2k": 1440,
    "2160p": 2160,
    "4k": 2160,
}
MAX_SIDE = 16384  # the largest side H.264/HEVC encoders accept

Fit = Literal["pad", "crop", "stretch"]


@dataclass(frozen=True)
class Plan:
    """How one input frame becomes one output frame.

    crop: (x, y, w, h) region of the (rotated) input frame to upscale; the whole frame
    unless `--fit crop`. scaled: (w, h) the engine upscales the crop to. pad: (left, top,
    right, bottom) black borders added after upscaling (even numbers). out: final (w, h).
    """

    crop: tuple[int, int, int, int]
    scaled: tuple[int, int]
    pad: tuple[int, int, int, int]
    out: tuple[int, int]

    @property
    def scale(self) -> float:
        """Upscaling factor along the height (what the engine's noise level depends on)."""
        return self.scaled[1] / self.crop[3]


def even(x: float) -> int:
    """Nearest even integer >= 2 (halves round up: even(5) = 6)."""
    return max(2, 2 * int(x / 2 + 0.5))


def parse_size(text: str) -> tuple[int, int]:
    """'1920x1080' -> (1920, 1080); anything else, or a zero side, is a UsageError."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX:]\s*(\d+)\s*", text)
    if not m:
        raise UsageError(f"--size must look like 1920x1080, got {text!r}")
    if max(len(m.group(1)), len(m.group(2))) > 6:
        raise UsageError(f"--size {text.strip()[:20]}... is too large: encoders accept at most {MAX_SIDE} pixels a side")
    w, h = int(m.group(1)), int(m.group(2))
    if w < 2 or h < 2:
        raise UsageError(f"--size {w}x{h} is impossible: both sides must be at least 2 pixels")
    return w, h


def parse_target(text: str) -> int:
    """'1080p' / '4K' / '2k' -> output height; unknown names are a UsageError."""
    key = text.strip().lower()
    if key in PRESETS:
        return PRESETS[key]
    m = re.fullmatch(r"(\d+)p", key)
    if m and len(m.group(1)) > 6:
        raise UsageError(f"--target {key[:20]}... is too large: encoders accept at most {MAX_SIDE} pixels a side")
    if m and int(m.group(1)) >= 2:
        return int(m.group(1))
    raise UsageError(f"unknown --target {text!r}: use one of {', '.join(PRESETS)} or NNNp")


def display_size(width: int, height: int, sar: Fraction | None) -> tuple[float, float]:
    """The picture's size in square pixels: stored width stretched by the SAR."""
    s = Fraction(sar) if sar and sar > 0 else Fraction(1)
    return float(width * s), float(height)


def plan_output(
    width: int,
    height: int,
    *,
    sar: Fraction | None = None,
    target: str | None = None,
    size: tuple[int, int] | None = None,
    scale: float | None = None,
    fit: Fit = "pad",
    allow_downscale: bool = False,
) -> Plan:
    """The output plan for a (rotated) `width` x `height` input with pixel aspect `sar`.

    Exactly one of target / size / scale; none means 2x. `target` keeps the display
    aspect ratio at the preset height; `size` fits the display picture into WxH by
    `fit` (pad: letterbox, crop: fill and cut the overflow, stretch: ignore the aspect);
    `scale` multiplies the display size. vsr upscales, so a result smaller than the
    input is a UsageError unless `allow_downscale`.
    """
    if sum(x is not None for x in (target, size, scale)) > 1:
        raise UsageError("use only one of --target, --size and --scale")
    if width < 1 or height < 1:
        raise UsageError(f"the input has an impossible size {width}x{height}")
    dw, dh = display_size(width, height, sar)
    aspect = dw / dh
    full = (0, 0, width, height)
    if size is None:
        if target is not None:
            out_h = even(parse_target(target))
            out = (even(out_h * aspect), out_h)
        else:
            s = 2.0 if scale is None else float(scale)
            if not 0 < s < math.inf:
                raise UsageError(f"--scale must be a positive number, got {scale}")
            if max(dw, dh) * s > MAX_SIDE:
                given = "the default, " if scale is None else ""
                raise UsageError(f"--scale {s:g} ({given}{round(dw)}x{round(dh)} in) is too large: "
                                 f"encoders accept at most {MAX_SIDE} pixels a side")
            out = (even(dw * s), even(dh * s))
        plan = Plan(crop=full, scaled=out, pad=(0, 0, 0, 0), out=out)
    else:
        w, h = size
        if w < 2 or h < 2:
            raise UsageError(f"--size {w}x{h} is impossible: both sides must be at least 2 pixels")
        if fit == "stretch":
            plan = Plan(crop=full, scaled=(w, h), pad=(0, 0, 0, 0), out=(w, h))
        elif fit == "pad":
            if w / h > aspect:  # target is wider: full height, borders left and right
                inner = (min(w, even(h * aspect)), h)
            else:
                inner = (w, min(h, even(w / aspect)))
            left = 2 * ((w - inner[0]) // 4)
            top = 2 * ((h - inner[1]) // 4)
            plan = Plan(crop=full, scaled=inner, pad=(left, top, w - inner[0] - left, h - inner[1] - top), out=(w, h))
        elif fit == "crop":
            # keep the target's aspect: cut stored pixels, measured in display units
            sar_f = dw / width
            if w / h > aspect:  # target is wider: keep the width, cut top and bottom
                cw, ch = width, min(height, max(1, round(dw * h / w)))
            else:
                cw, ch = min(width, max(1, round(dh * w / h / sar_f))), height
            plan = Plan(crop=((width - cw) // 2, (height - ch) // 2, cw, ch), scaled=(w, h), pad=(0, 0, 0, 0), out=(w, h))
        else:
            raise UsageError(f"--fit must be pad, crop or stretch, got {fit!r}")
    ow, oh = plan.out
    if max(ow, oh) > MAX_SIDE:
        raise UsageError(f"output {ow}x{oh} is too large: encoders accept at most {MAX_SIDE} pixels a side")
    if ow % 2 or oh % 2:
        raise UsageError(f"output {ow}x{oh} must have even sides for 4:2:0 video")
    sw, sh = plan.scaled
    cw, ch = plan.crop[2:]
    if not allow_downscale and (sw * width < cw * dw * (1 - 1e-9) or sh < ch):
        raise UsageError(
            f"output {ow}x{oh} would shrink the {width}x{height} input; vsr upscales: pick a larger --target, --size or --scale"
        )
    return plan
