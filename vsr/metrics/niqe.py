"""NIQE (Mittal et al. 2013): no-reference naturalness from a multivariate Gaussian model of
natural-scene statistics; `fit_niqe` builds that model from pristine images (vsr fits it on
its training corpus, `pipelines/fit_niqe.py`), `load_niqe_model` reads the shipped one."""
from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from vsr.metrics.fidelity import luma

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
    path = Path(path) if path is not None else Path(__file__).resolve().parent.parent / "assets" / "niqe_model.npz"
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
