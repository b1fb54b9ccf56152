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

The scores live in `fidelity.py`, `niqe.py` and `temporal.py`; this package re-exports them.
"""
from __future__ import annotations

from vsr.core.flow import warp
from vsr.metrics.fidelity import (
    GMSD_C,
    MS_SSIM_WEIGHTS,
    gmsd,
    luma,
    ms_ssim,
    psnr,
    ssim,
    to_float_rgb,
)
from vsr.metrics.niqe import (
    NiqeModel,
    fit_niqe,
    load_niqe_model,
    niqe,
    niqe_features,
)
from vsr.metrics.temporal import (
    FLICKER_BLOCK,
    consistent_flow,
    flicker,
    flicker_pair,
    low_pass_luma,
    static_mask_from_flow,
    static_mask_from_guide,
    warping_error,
    warping_error_pair,
)

__all__ = [
    "FLICKER_BLOCK",
    "GMSD_C",
    "MS_SSIM_WEIGHTS",
    "NiqeModel",
    "consistent_flow",
    "fit_niqe",
    "flicker",
    "flicker_pair",
    "gmsd",
    "load_niqe_model",
    "low_pass_luma",
    "luma",
    "ms_ssim",
    "niqe",
    "niqe_features",
    "psnr",
    "ssim",
    "static_mask_from_flow",
    "static_mask_from_guide",
    "to_float_rgb",
    "warp",
    "warping_error",
    "warping_error_pair",
]
