"""Decoding a corpus candidate to sRGB (colour management, high bit depth), the image
statistics of the photograph rule and its verdict, and the near-duplicate thumbnail."""
from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .corpus_config import FilterRule


@dataclass(frozen=True)
class Decoded:
    """A decoded candidate: RGB uint8 (H, W, 3) in sRGB, alpha uint8 (H, W) or None.

    `colour` says what was done about colour management: "" (untagged or sRGB),
    "converted from <profile>" (8-bit file with another ICC profile, converted to sRGB
    with LittleCMS, relative colorimetric), or "not sRGB: <profile>" when it could not
    be converted faithfully (high bit depth, e.g. an HLG/PQ HDR file): such files are
    rejected.
    """

    rgb: np.ndarray
    alpha: np.ndarray | None
    colour: str = ""


def _pnm_maxval(data: np.ndarray) -> int | None:
    """The maxval of a binary PNM (P5/P6) header, None for other formats.

    OpenCV returns PNM samples unscaled (0..maxval), so 2-bit or 10-bit files need it.
    """
    head = bytes(data[:64])
    if head[:2] not in (b"P5", b"P6"):
        return None
    body = re.sub(rb"#[^\n]*\n", b" ", head[2:])  # comments
    fields = body.split()
    return int(fields[2]) if len(fields) >= 3 and fields[2].isdigit() else None


def _icc_profile(path: Path) -> tuple[str, object] | None:
    """(description, ImageCms profile) of an embedded ICC profile, None if there is none."""
    from PIL import Image, ImageCms  # Pillow comes with scikit-image (the 'train' extra)

    try:
        with Image.open(path) as im:
            icc = im.info.get("icc_profile")
        if not icc:
            return None
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        return ImageCms.getProfileDescription(profile).strip(), profile
    except (OSError, ValueError, ImageCms.PyCMSError):
        return None


def _to_srgb(rgb: np.ndarray, profile: object) -> np.ndarray | None:
    """(H, W, 3) uint8 RGB in `profile` -> sRGB; None when LittleCMS cannot build it
    (e.g. the profile is not an RGB one)."""
    from PIL import Image, ImageCms

    try:
        transform = ImageCms.buildTransform(profile, ImageCms.createProfile("sRGB"), "RGB", "RGB",
                                            renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC)
        return np.asarray(ImageCms.applyTransform(Image.fromarray(rgb), transform))
    except ImageCms.PyCMSError:
        return None


def read_image(path: Path) -> Decoded | None:
    """Decode a file to sRGB 8-bit RGB (+ alpha); None if OpenCV cannot decode it.

    High-depth samples are scaled to 8 bits by their real range (16-bit: 65535, PNM:
    its maxval); EXIF orientation is not applied (IMREAD_UNCHANGED): the written PNG
    then shows the stored pixel grid.
    """
    data = np.fromfile(str(path), dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if img is None:
        return None
    bits = 16 if img.dtype == np.uint16 else 8
    maxval = _pnm_maxval(data) or (65535 if bits == 16 else 255)
    if img.dtype not in (np.uint8, np.uint16):
        return None  # float data (e.g. OpenEXR/PFM) is not a display-referred photo
    if maxval != 255:
        img = np.clip(np.round(img.astype(np.float32) * (255.0 / maxval)), 0, 255).astype(np.uint8)
    alpha = None
    if img.ndim == 2:
        rgb = np.repeat(img[:, :, None], 3, axis=2)
    elif img.shape[2] == 4:
        alpha = img[:, :, 3]
        rgb = cv2.cvtColor(img[:, :, :3], cv2.COLOR_BGR2RGB)
    elif img.shape[2] == 3:
        rgb = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    else:
        return None
    rgb = np.ascontiguousarray(rgb)
    colour = ""
    icc = _icc_profile(path) if img.ndim == 3 else None  # grey files are rejected anyway
    if icc is not None and "srgb" not in icc[0].lower():
        converted = _to_srgb(rgb, icc[1]) if bits == 8 else None
        if converted is not None:
            rgb, colour = np.ascontiguousarray(converted), f"converted from {icc[0]}"
        else:
            colour = f"not sRGB: {icc[0]}"
    return Decoded(rgb, alpha, colour)


def resize_short_side(rgb: np.ndarray, max_short: int) -> np.ndarray:
    """Area-downscale HxWx3 uint8 so min(H, W) <= max_short; returned unchanged if already."""
    h, w = rgb.shape[:2]
    short = min(h, w)
    if short <= max_short:
        return rgb
    scale = max_short / short
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


def image_stats(rgb: np.ndarray, alpha: np.ndarray | None, rule: FilterRule) -> dict[str, float]:
    """Statistics the photograph rule reads, on an HxWx3 uint8 RGB image.

    - colourfulness: Hasler & Suesstrunk's M = std(rg,yb) + 0.3 mean(|rg|,|yb|), 0..~200;
    - unique_ratio: distinct RGB triplets among at most 65,536 pixels on a regular grid
      over the sample count, 0..1 (photos ~0.2-0.9, logos < 0.01);
    - flat_fraction: share of 8x8 blocks with luma std < rule.flat_block_std, 0..1;
    - edge_fraction: share of pixels with Sobel |grad luma| > rule.edge_threshold, 0..1;
    - transparent_fraction: share of alpha < 250 (0 without alpha).
    """
    h, w = rgb.shape[:2]
    f = rgb.astype(np.float32)
    r, g, b = f[..., 0], f[..., 1], f[..., 2]
    rg, yb = r - g, 0.5 * (r + g) - b
    colourfulness = float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(np.abs(rg).mean(), np.abs(yb).mean()))

    step = max(1, int(np.sqrt(h * w / 65536)))
    sample = rgb[::step, ::step].reshape(-1, 3)
    packed = (sample[:, 0].astype(np.uint32) << 16) | (sample[:, 1].astype(np.uint32) << 8) | sample[:, 2]
    unique_ratio = float(np.unique(packed).size / packed.size)

    luma = 0.299 * r + 0.587 * g + 0.114 * b
    bh, bw = h // 8, w // 8
    blocks = luma[: bh * 8, : bw * 8].reshape(bh, 8, bw, 8)
    flat_fraction = float((blocks.std(axis=(1, 3)) < rule.flat_block_std).mean()) if bh and bw else 1.0

    gx = cv2.Sobel(luma, cv2.CV_32F, 1, 0, ksize=3) / 4.0
    gy = cv2.Sobel(luma, cv2.CV_32F, 0, 1, ksize=3) / 4.0
    edge_fraction = float((np.hypot(gx, gy) > rule.edge_threshold).mean())

    transparent = float((alpha < 250).mean()) if alpha is not None else 0.0
    return {
        "colourfulness": round(colourfulness, 3),
        "unique_ratio": round(unique_ratio, 4),
        "flat_fraction": round(flat_fraction, 4),
        "edge_fraction": round(edge_fraction, 4),
        "transparent_fraction": round(transparent, 4),
    }


def photo_verdict(short_side: int, stats: dict[str, float], rule: FilterRule) -> str | None:
    """None when the statistics look like a natural photograph, else the reason."""
    if short_side < rule.min_short_side:
        return f"too small: short side {short_side} < {rule.min_short_side}"
    if stats["transparent_fraction"] > rule.max_transparent_fraction:
        return f"transparency: {stats['transparent_fraction']:.3f} of pixels"
    if stats["colourfulness"] < rule.min_colourfulness:
        return f"grayscale: colourfulness {stats['colourfulness']:.1f} < {rule.min_colourfulness}"
    if stats["unique_ratio"] < rule.min_unique_ratio:
        return f"few colours: unique ratio {stats['unique_ratio']:.3f} < {rule.min_unique_ratio}"
    if stats["flat_fraction"] > rule.max_flat_fraction:
        return f"flat areas: {stats['flat_fraction']:.2f} of blocks > {rule.max_flat_fraction}"
    if stats["edge_fraction"] < rule.min_edge_fraction:
        return f"smooth: edge fraction {stats['edge_fraction']:.3f} < {rule.min_edge_fraction}"
    return None


def _thumbnail(rgb: np.ndarray) -> np.ndarray:
    """32x32 zero-mean unit-norm luma thumbnail, the near-duplicate signature."""
    luma = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
    t = cv2.resize(luma, (32, 32), interpolation=cv2.INTER_AREA).ravel()
    t -= t.mean()
    n = float(np.linalg.norm(t))
    return t / n if n > 0 else t
