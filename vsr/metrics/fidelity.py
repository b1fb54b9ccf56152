"""Full-reference scores on BT.601 luma (the super-resolution convention, see
`vsr.metrics`): PSNR, SSIM (Wang et al. 2004), MS-SSIM (Wang et al. 2003), GMSD
(Xue et al. 2014), and the conversions every metric shares."""
from __future__ import annotations

import math

import cv2
import numpy as np

# --------------------------------------------------------------------------------------
# Conversions


def to_float_rgb(image: np.ndarray) -> np.ndarray:
    """HxWx3 uint8/uint16/float -> float64 in [0, 1] (floats are taken as already [0, 1])."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 RGB image, got shape {image.shape}")
    if image.dtype == np.uint8:
        return image.astype(np.float64) / 255.0
    if image.dtype == np.uint16:
        return image.astype(np.float64) / 65535.0
    if np.issubdtype(image.dtype, np.floating):
        return image.astype(np.float64, copy=False)
    raise ValueError(f"unsupported image dtype {image.dtype}")


def luma(image: np.ndarray) -> np.ndarray:
    """BT.601 studio-range luma of an RGB image: HxW float64 in [16, 235] (0..255 scale).

    This is MATLAB's ``rgb2ycbcr`` Y channel, the one SR papers report PSNR/SSIM on.
    A 2-D array is taken as luma already and returned as float64.
    """
    if image.ndim == 2:
        return image.astype(np.float64, copy=False)
    rgb = to_float_rgb(image)
    return 16.0 + rgb @ np.array([65.481, 128.553, 24.966])


def _crop(y: np.ndarray, border: int) -> np.ndarray:
    if border < 0:
        raise ValueError(f"crop border must be >= 0, got {border}")
    if border == 0:
        return y
    if 2 * border >= min(y.shape[:2]):
        raise ValueError(f"crop border {border} leaves nothing of a {y.shape[1]}x{y.shape[0]} image")
    return y[border:-border, border:-border]


def _pair_luma(a: np.ndarray, b: np.ndarray, crop_border: int) -> tuple[np.ndarray, np.ndarray]:
    if a.shape != b.shape:
        raise ValueError(f"image sizes differ: {a.shape} vs {b.shape}")
    return _crop(luma(a), crop_border), _crop(luma(b), crop_border)


# --------------------------------------------------------------------------------------
# Full-reference


def psnr(test: np.ndarray, reference: np.ndarray, crop_border: int = 0) -> float:
    """Y-channel PSNR in dB (peak 255); ``inf`` for identical images."""
    y1, y2 = _pair_luma(test, reference, crop_border)
    mse = float(np.mean((y1 - y2) ** 2))
    return math.inf if mse == 0.0 else 10.0 * math.log10(255.0**2 / mse)


_SSIM_C1 = (0.01 * 255.0) ** 2
_SSIM_C2 = (0.03 * 255.0) ** 2


def _ssim_maps(y1: np.ndarray, y2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SSIM and contrast-structure maps over the valid region (11x11 Gaussian, sigma 1.5).

    Inputs HxW on a 0..255 scale, both sides at least 11 px; outputs (H-10)x(W-10).
    """
    if min(y1.shape) < 11:
        raise ValueError(f"SSIM needs images of at least 11x11, got {y1.shape[1]}x{y1.shape[0]}")

    def blur(x: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(x, (11, 11), 1.5, borderType=cv2.BORDER_REFLECT)[5:-5, 5:-5]

    mu1, mu2 = blur(y1), blur(y2)
    mu11, mu22, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    s11 = blur(y1 * y1) - mu11
    s22 = blur(y2 * y2) - mu22
    s12 = blur(y1 * y2) - mu12
    cs = (2.0 * s12 + _SSIM_C2) / (s11 + s22 + _SSIM_C2)
    lum = (2.0 * mu12 + _SSIM_C1) / (mu11 + mu22 + _SSIM_C1)
    return lum * cs, cs


def ssim(test: np.ndarray, reference: np.ndarray, crop_border: int = 0) -> float:
    """Y-channel SSIM (Wang et al. 2004): mean of the SSIM map over the valid region.

    Gaussian 11x11 window with sigma 1.5, K1 = 0.01, K2 = 0.03, L = 255: the same numbers as
    ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=255)`` and as the MATLAB reference code.
    """
    y1, y2 = _pair_luma(test, reference, crop_border)
    return float(_ssim_maps(y1, y2)[0].mean())


MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def _halve(y: np.ndarray) -> np.ndarray:
    """2x2 average downsampling (odd last row/column dropped)."""
    h, w = (y.shape[0] // 2) * 2, (y.shape[1] // 2) * 2
    y = y[:h, :w]
    return 0.25 * (y[0::2, 0::2] + y[1::2, 0::2] + y[0::2, 1::2] + y[1::2, 1::2])


def ms_ssim(test: np.ndarray, reference: np.ndarray, crop_border: int = 0) -> float:
    """Y-channel multi-scale SSIM (Wang, Simoncelli, Bovik 2003), in [0, 1] for natural pairs.

    Five scales separated by 2x2 average downsampling, weights ``MS_SSIM_WEIGHTS``;
    contrast-structure at the finer scales, full SSIM at the coarsest, negative terms
    clamped to 0 so the weighted product is defined. Images smaller than 176 px on a side
    use only the scales whose window still fits, with the weights renormalised.
    """
    y1, y2 = _pair_luma(test, reference, crop_border)
    n_scales = 1
    while n_scales < len(MS_SSIM_WEIGHTS) and min(y1.shape) // 2**n_scales >= 11:
        n_scales += 1
    weights = np.array(MS_SSIM_WEIGHTS[:n_scales])
    weights /= weights.sum()
    values = []
    for level in range(n_scales):
        s_map, cs_map = _ssim_maps(y1, y2)
        last = level == n_scales - 1
        values.append(max(float((s_map if last else cs_map).mean()), 0.0))
        if not last:
            y1, y2 = _halve(y1), _halve(y2)
    return float(np.prod(np.array(values) ** weights))


GMSD_C = 170.0  # Xue et al.'s T for a 0..255 scale (0.0026 for [0, 1])


def gmsd(test: np.ndarray, reference: np.ndarray, crop_border: int = 0) -> float:
    """Gradient Magnitude Similarity Deviation (Xue et al. 2014); 0 = identical, higher = worse.

    As in the authors' code: luma on a 0..255 scale, 2x2 average then 2x subsampling,
    Prewitt gradients (kernels /3, zero padding outside the image), GMS map
    ``(2 g1 g2 + c) / (g1^2 + g2^2 + c)`` with c = 170, score = its standard deviation
    (N - 1 normalisation, as MATLAB's ``std2``).
    """
    y1, y2 = _pair_luma(test, reference, crop_border)
    y1, y2 = _halve(y1), _halve(y2)
    kx = np.array([[1.0, 0.0, -1.0]] * 3) / 3.0

    def grad_mag(y: np.ndarray) -> np.ndarray:
        gx = cv2.filter2D(y, cv2.CV_64F, kx, borderType=cv2.BORDER_CONSTANT)
        gy = cv2.filter2D(y, cv2.CV_64F, kx.T, borderType=cv2.BORDER_CONSTANT)
        return np.sqrt(gx * gx + gy * gy)

    g1, g2 = grad_mag(y1), grad_mag(y2)
    gms = (2.0 * g1 * g2 + GMSD_C) / (g1 * g1 + g2 * g2 + GMSD_C)
    return float(np.std(gms, ddof=1)) if gms.size > 1 else 0.0
