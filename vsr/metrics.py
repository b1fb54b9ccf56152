"""Image and video quality metrics that can be computed here, without pretrained networks.

Every function is pure numpy/OpenCV and takes frames as HxWx3 RGB arrays: uint8 (0..255),
uint16 (0..65535) or float in [0, 1]; the luma-based scores (PSNR, SSIM, MS-SSIM, GMSD,
NIQE) also take an HxW luma array from `luma`, so a caller converts once. Full-reference scores follow the super-resolution
convention: they are computed on BT.601 luma ``Y = 16 + (65.481 R + 128.553 G + 24.966 B)``
with R, G, B in [0, 1] (so Y is in [16, 235] on a 0..255 scale, not rounded), with an
optional border crop, because that is how published SR tables are made and so our numbers
can be set next to them.

- `psnr`, `ssim` (Wang et al. 2004, 11x11 Gaussian window, sigma 1.5, valid region),
  `ms_ssim` (Wang et al. 2003, five scales), `gmsd` (Xue et al. 2014).
- `niqe` (Mittal et al. 2013): no-reference naturalness from a multivariate Gaussian
  model of natural-scene statistics; `fit_niqe` builds that model from pristine images
  (vsr fits it on its training corpus, see ``pipelines/fit_niqe.py``), `load_niqe_model`
  reads the shipped one.
- Temporal: `consistent_flow` (OpenCV DIS, forward-backward occlusion mask),
  `warping_error_pair` (Lai et al. 2018), `flicker_pair` (change of low-frequency luma in
  static regions); `warping_error` and `flicker` run them over a clip.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

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


# --------------------------------------------------------------------------------------
# NIQE


@dataclass(frozen=True)
class NiqeModel:
    """Multivariate Gaussian of the 36 NSS features over pristine patches.

    mu: (36,), cov: (36, 36); patch_size: side of the square patch at full scale (96 in
    the paper); sharpness_threshold: patches kept when their mean local std is above this
    fraction of the image's sharpest patch (0.75 in the paper); n_patches: how many went in.
    """

    mu: np.ndarray
    cov: np.ndarray
    patch_size: int = 96
    sharpness_threshold: float = 0.75
    n_patches: int = 0

    def save(self, path: str | Path) -> None:
        np.savez(
            path,
            mu=self.mu,
            cov=self.cov,
            patch_size=np.int64(self.patch_size),
            sharpness_threshold=np.float64(self.sharpness_threshold),
            n_patches=np.int64(self.n_patches),
        )


def load_niqe_model(path: str | Path | None = None) -> NiqeModel:
    """Read a fitted model (.npz); default: the one shipped in ``vsr/assets/niqe_model.npz``."""
    path = Path(path) if path is not None else Path(__file__).parent / "assets" / "niqe_model.npz"
    with np.load(path) as data:
        return NiqeModel(
            mu=data["mu"],
            cov=data["cov"],
            patch_size=int(data["patch_size"]),
            sharpness_threshold=float(data["sharpness_threshold"]),
            n_patches=int(data["n_patches"]),
        )


@functools.cache
def _shape_table() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shape grid 0.2..10 (step 0.001), its AGGD ratio Gamma(2/a)^2 / (Gamma(1/a) Gamma(3/a))
    (increasing in a) and sqrt(Gamma(1/a) / Gamma(3/a)), for moment-matching lookups."""
    alphas = np.round(np.arange(0.2, 10.0 + 5e-4, 0.001), 3)
    lg1 = np.array([math.lgamma(1.0 / a) for a in alphas])
    lg2 = np.array([math.lgamma(2.0 / a) for a in alphas])
    lg3 = np.array([math.lgamma(3.0 / a) for a in alphas])
    ratio = np.exp(2.0 * lg2 - lg1 - lg3)
    scale = np.exp(0.5 * (lg1 - lg3))
    return alphas, ratio, np.stack([scale, np.exp(lg2 - lg1)])


def _aggd_fit(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Asymmetric generalised Gaussian fit by moment matching, one per row of x (N, P).

    Returns alpha, beta_left, beta_right and the AGGD mean (beta_r - beta_l) G(2/a)/G(1/a).
    """
    alphas, ratio, (scale, g21) = _shape_table()
    neg, pos = x < 0, x > 0
    x2 = x * x
    left = np.sqrt((x2 * neg).sum(1) / np.maximum(neg.sum(1), 1))
    right = np.sqrt((x2 * pos).sum(1) / np.maximum(pos.sum(1), 1))
    gamma_hat = left / np.maximum(right, 1e-12)
    mean_sq = x2.mean(1)
    r_hat = np.abs(x).mean(1) ** 2 / np.maximum(mean_sq, 1e-12)
    r_norm = r_hat * (gamma_hat**3 + 1) * (gamma_hat + 1) / (gamma_hat**2 + 1) ** 2
    # nearest grid point of the monotone ratio curve
    idx = np.clip(np.searchsorted(ratio, r_norm), 1, len(ratio) - 1)
    idx -= (r_norm - ratio[idx - 1]) < (ratio[idx] - r_norm)
    beta_l, beta_r = left * scale[idx], right * scale[idx]
    return alphas[idx], beta_l, beta_r, (beta_r - beta_l) * g21[idx]


def _mscn(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean-subtracted contrast-normalised coefficients and the local std map (7x7 Gaussian,
    sigma 7/6, replicate borders, C = 1 on a 0..255 scale)."""
    mu = cv2.GaussianBlur(y, (7, 7), 7.0 / 6.0, borderType=cv2.BORDER_REPLICATE)
    var = cv2.GaussianBlur(y * y, (7, 7), 7.0 / 6.0, borderType=cv2.BORDER_REPLICATE) - mu * mu
    sigma = np.sqrt(np.abs(var))
    return (y - mu) / (sigma + 1.0), sigma


def _patches(x: np.ndarray, size: int) -> np.ndarray:
    """(nh*size)x(nw*size) -> (nh*nw, size, size), row-major patch order."""
    nh, nw = x.shape[0] // size, x.shape[1] // size
    return x[: nh * size, : nw * size].reshape(nh, size, nw, size).swapaxes(1, 2).reshape(-1, size, size)


def _patch_features(mscn: np.ndarray) -> np.ndarray:
    """(N, s, s) MSCN patches -> (N, 18): AGGD (alpha, mean beta) of the coefficients, then
    (alpha, mean, beta_l, beta_r) of the products with their 4 neighbours (circular within
    the patch: horizontal, vertical, two diagonals)."""
    n = mscn.shape[0]
    flat = mscn.reshape(n, -1)
    alpha, bl, br, _ = _aggd_fit(flat)
    feats = [alpha, (bl + br) / 2.0]
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        pair = flat * np.roll(mscn, (dy, dx), axis=(1, 2)).reshape(n, -1)
        alpha, bl, br, mean = _aggd_fit(pair)
        feats += [alpha, mean, bl, br]
    return np.stack(feats, axis=1)


def _matlab_half(y: np.ndarray) -> np.ndarray:
    """Downscale by 2 like MATLAB's ``imresize(y, 0.5)``: antialiased bicubic (a = -0.5,
    kernel stretched 2x, 8 taps), symmetric borders. Even sizes in, halved sizes out."""
    d = np.array([3.5, 2.5, 1.5, 0.5, 0.5, 1.5, 2.5, 3.5]) / 2.0
    k = np.where(d <= 1, 1.5 * d**3 - 2.5 * d**2 + 1, -0.5 * d**3 + 2.5 * d**2 - 4 * d + 2)
    k /= k.sum()
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (3, 3)
        p = np.pad(y, pad, mode="symmetric")
        n = y.shape[axis] // 2
        y = sum(k[j] * np.take(p, np.arange(j, j + 2 * n, 2), axis=axis) for j in range(8))
    return y


def niqe_features(image: np.ndarray, patch_size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """NSS features of every patch: ((N, 36) features, (N,) sharpness = mean local std at
    full scale). The image is cropped to a multiple of ``patch_size`` (top-left kept)."""
    y = luma(image)
    h, w = (y.shape[0] // patch_size) * patch_size, (y.shape[1] // patch_size) * patch_size
    if h == 0 or w == 0:
        raise ValueError(f"NIQE needs images of at least {patch_size}x{patch_size}, got {y.shape[1]}x{y.shape[0]}")
    y = y[:h, :w]
    mscn, sigma = _mscn(y)
    sharpness = _patches(sigma, patch_size).mean(axis=(1, 2))
    f1 = _patch_features(_patches(mscn, patch_size))
    mscn2, _ = _mscn(_matlab_half(y))
    f2 = _patch_features(_patches(mscn2, patch_size // 2))
    return np.concatenate([f1, f2], axis=1), sharpness


def fit_niqe(
    images: Iterable[np.ndarray], patch_size: int = 96, sharpness_threshold: float = 0.75
) -> NiqeModel:
    """Fit the pristine model: features of each image's sharp patches (mean local std above
    ``sharpness_threshold`` x that image's maximum), pooled, then their mean and covariance."""
    kept = []
    for image in images:
        feats, sharp = niqe_features(image, patch_size)
        kept.append(feats[sharp > sharpness_threshold * sharp.max()])
    if not kept:
        raise ValueError("fit_niqe needs at least one image")
    feats = np.concatenate(kept)
    feats = feats[np.isfinite(feats).all(axis=1)]
    if len(feats) < 2:
        raise ValueError("fit_niqe needs at least two usable patches")
    return NiqeModel(
        mu=feats.mean(axis=0),
        cov=np.cov(feats, rowvar=False),
        patch_size=patch_size,
        sharpness_threshold=sharpness_threshold,
        n_patches=len(feats),
    )


def niqe(image: np.ndarray, model: NiqeModel, crop_border: int = 0) -> float:
    """NIQE score (Mittal, Soundararajan, Bovik 2013): lower = more natural.

    The image's patch features are fitted with their own Gaussian (mu_d, S_d) and
    compared with the pristine model: sqrt((mu_p - mu_d)^T pinv((S_p + S_d)/2) (mu_p - mu_d)).
    Needs at least two patches (e.g. 192x96 with the paper's 96 px patches).
    """
    image = image[crop_border : image.shape[0] - crop_border, crop_border : image.shape[1] - crop_border]
    feats, _ = niqe_features(image, model.patch_size)
    feats = feats[np.isfinite(feats).all(axis=1)]
    if len(feats) < 2:
        raise ValueError(
            f"NIQE needs at least two {model.patch_size}px patches, got a {image.shape[1]}x{image.shape[0]} image"
        )
    d = model.mu - feats.mean(axis=0)
    cov = (model.cov + np.cov(feats, rowvar=False)) / 2.0
    return float(np.sqrt(max(d @ np.linalg.pinv(cov) @ d, 0.0)))


# --------------------------------------------------------------------------------------
# Temporal


def _gray_u8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(luma(image)), 0, 255).astype(np.uint8)


def consistent_flow(
    prev_guide: np.ndarray, cur_guide: np.ndarray, preset: int = cv2.DISOPTICAL_FLOW_PRESET_MEDIUM
) -> tuple[np.ndarray, np.ndarray]:
    """Backward flow from the current frame to the previous one, with its reliability mask.

    Guides are HxWx3 RGB (or HxW luma) frames that carry the motion: the reference, or the
    low-resolution input resized to the output size. Returns ``flow`` HxWx2 float32 with
    ``cur(x) ~ prev(x + flow(x))`` (OpenCV DIS on luma) and ``valid`` HxW bool: the target
    lands inside the frame and the forward flow brings it back (forward-backward check of
    Sundaram et al. 2010: |f_b + f_f(x + f_b)|^2 <= 0.01 (|f_b|^2 + |f_f(x + f_b)|^2) + 0.5);
    the rest is treated as occluded.
    """
    g_prev, g_cur = _gray_u8(prev_guide), _gray_u8(cur_guide)
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


def warping_error_pair(prev: np.ndarray, cur: np.ndarray, flow: np.ndarray, valid: np.ndarray) -> float:
    """Lai et al. (2018) warping error of one output pair: mean over non-occluded pixels of
    the squared RGB difference (values in [0, 1], averaged over channels) between the
    current frame and the previous one warped along ``flow``. NaN if no pixel is valid."""
    if prev.shape != cur.shape or flow.shape[:2] != cur.shape[:2]:
        raise ValueError(f"frame/flow sizes differ: {prev.shape}, {cur.shape}, {flow.shape}")
    if not valid.any():
        return math.nan
    diff = (to_float_rgb(cur) - warp(to_float_rgb(prev), flow)) ** 2
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
