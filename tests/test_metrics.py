"""Metrics against independent or hand-computed values on real photographs (skimage.data)."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from skimage.metrics import structural_similarity

from vsr import metrics as m


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(img, (0, 0), sigma) if sigma > 0 else img


def test_luma_is_bt601_studio_range():
    img = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0]]], dtype=np.uint8)
    assert m.luma(img) == pytest.approx(np.array([[16.0, 235.0, 16.0 + 65.481]]))
    assert m.luma(img.astype(np.uint16) * 257) == pytest.approx(m.luma(img))


def test_psnr_of_constant_offset_is_exact(photo):
    a = np.clip(photo, 20, 230)
    b = a + np.uint8(10)
    dy = 219.0 * 10 / 255  # every channel +10 moves studio luma by 219/255 per level
    assert m.psnr(b, a) == pytest.approx(20 * math.log10(255 / dy), abs=1e-9)
    assert m.psnr(a, a) == math.inf


def test_crop_border_ignores_the_frame_edge(photo):
    b = photo.copy()
    b[:4] = 0
    assert m.psnr(b, photo, crop_border=4) == math.inf
    assert m.psnr(b, photo) < 40
    with pytest.raises(ValueError):
        m.psnr(photo[:, :10], photo[:, :10], crop_border=5)


def _y(im: np.ndarray) -> np.ndarray:
    """BT.601 studio-range luma, written out independently of vsr."""
    return 16 + im.astype(np.float64) @ np.array([65.481, 128.553, 24.966]) / 255


def _distorted(photo: np.ndarray, sigma: float, noise: float) -> np.ndarray:
    dist = _blur(photo, sigma).astype(np.float64)
    return np.clip(dist + np.random.default_rng(1).normal(0, noise, dist.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("sigma,noise", [(1.0, 0), (2.5, 0), (0, 12)])
def test_ssim_matches_skimage(photo, sigma, noise):
    dist = _distorted(photo, sigma, noise)
    # independent luma, then scikit-image's SSIM with Wang et al.'s settings
    want = structural_similarity(
        _y(dist), _y(photo), gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255
    )
    assert m.ssim(dist, photo) == pytest.approx(want, abs=1e-10)
    assert m.ssim(photo, photo) == pytest.approx(1.0)


def test_size_mismatch_is_an_error(photo):
    with pytest.raises(ValueError, match="sizes differ"):
        m.ssim(photo[:-2], photo)


# pytorch-msssim 1.0.0 (Gongfan Fang's, PyPI), the same distortions as test_ssim_matches_skimage:
#   pytorch_msssim.ms_ssim(t(_y(dist)), t(_y(photo)), data_range=255, win_size=11, win_sigma=1.5)
#   with t = lambda y: torch.from_numpy(y)[None, None] (float64). It is Wang et al. 2003 as vsr:
#   five scales, 11x11 Gaussian (sigma 1.5) over the valid region, 2x2 average pooling, cs at the
#   four fine scales and SSIM at the coarsest, negative terms clamped to 0. At 512x512 every
#   scale is even, so its padded pooling equals vsr's dropping of an odd row. The one difference:
#   its window is float32 (vsr's, OpenCV's, float64), which moves the score by up to 6e-6.
MS_SSIM_REFERENCE = {(1.0, 0): 0.9904883337249281, (2.5, 0): 0.9347899703026579, (0, 12): 0.9712156953791992}


@pytest.mark.parametrize("sigma,noise", list(MS_SSIM_REFERENCE))
def test_ms_ssim_matches_pytorch_msssim(photo, sigma, noise):
    assert m.ms_ssim(_distorted(photo, sigma, noise), photo) == pytest.approx(MS_SSIM_REFERENCE[sigma, noise], abs=2e-5)


def test_ms_ssim_identity_and_monotone_under_blur(photo):
    assert m.ms_ssim(photo, photo) == pytest.approx(1.0)
    scores = [m.ms_ssim(_blur(photo, s), photo) for s in (0.5, 1.0, 2.0, 4.0)]
    assert all(a > b for a, b in zip(scores, scores[1:])), scores
    assert 0 < scores[-1] < scores[0] < 1
    # small images fall back to fewer scales instead of failing
    assert 0 < m.ms_ssim(_blur(photo[:64, :64], 1.0), photo[:64, :64]) < 1


def test_gmsd_identical_is_zero_and_grows_with_blur(photo):
    assert m.gmsd(photo, photo) == 0.0
    scores = [m.gmsd(_blur(photo, s), photo) for s in (0.5, 1.5, 3.0)]
    assert 0 < scores[0] < scores[1] < scores[2]


def test_gmsd_hand_computed_flat_pair():
    # Two flat 8x8 grey images, luma a and b. After 2x2 averaging: flat 4x4. Prewitt with
    # zero padding: inner 2x2 pixels have no gradient (GMS 1); the 8 edge pixels see one
    # missing row/column: |g| = value; the 4 corners see both: |g| = 2*sqrt(2)/3 * value.
    va, vb = 200, 80
    a = np.full((8, 8, 3), va, np.uint8)
    b = np.full((8, 8, 3), vb, np.uint8)
    ya, yb = 16 + 219 * va / 255, 16 + 219 * vb / 255
    c = 170.0
    edge = (2 * ya * yb + c) / (ya**2 + yb**2 + c)
    corner = (16 / 9 * ya * yb + c) / (8 / 9 * (ya**2 + yb**2) + c)
    gms = np.array([1.0] * 4 + [edge] * 8 + [corner] * 4)
    assert m.gmsd(b, a) == pytest.approx(np.std(gms, ddof=1), rel=1e-12)


# NIQE against the MATLAB-faithful port in BasicSR 1.4.2 (basicsr/metrics/niqe.py, whose authors
# match MATLAB R2021a's niqe to 1e-7), run on the same rounded luma and with the same pristine
# model, vsr's shipped one (vsr/assets/niqe_model.npz, sha256 b773169a...):
#   basicsr.metrics.niqe.niqe(_y(img).round(), model.mu, model.cov, gaussian_window)
# (gaussian_window from its niqe_pris_params.npz, MATLAB's fspecial('gaussian', 7, 7/6); the
# module loaded on its own, as `import basicsr` needs an old torchvision). Same features and
# replicate borders as vsr; its MATLAB imresize runs in float32 (vsr: float64), which moves a
# score by up to 1.4e-4 (with that resize in float64 the two agree to 1e-13).
NIQE_REFERENCE = {"chelsea": 2.9076720675528307, "astronaut_noise15": 8.381561656657125,
                  "astronaut": 3.2055634529809165}


def test_niqe_matches_basicsr_on_the_same_model(photos):
    import hashlib
    from pathlib import Path

    shipped = Path(m.__file__).resolve().parent.parent / "assets" / "niqe_model.npz"
    digest = hashlib.sha256(shipped.read_bytes()).hexdigest()
    assert digest.startswith("b773169a"), "the shipped NIQE model changed: recompute NIQE_REFERENCE as said above"
    model = m.load_niqe_model()
    noisy = np.clip(photos["astronaut"] + np.random.default_rng(0).normal(0, 15, (512, 512, 3)), 0, 255).astype(np.uint8)
    images = {"chelsea": photos["chelsea"], "astronaut_noise15": noisy, "astronaut": photos["astronaut"]}
    got = {name: m.niqe(_y(img).round(), model) for name, img in images.items()}
    assert got["chelsea"] == pytest.approx(NIQE_REFERENCE["chelsea"], rel=2e-4)
    assert got["astronaut_noise15"] == pytest.approx(NIQE_REFERENCE["astronaut_noise15"], rel=2e-4)
    # The astronaut's black background is flat: there vsr's MSCN coefficients are exactly 0
    # (OpenCV keeps a constant region constant) and BasicSR's are +-1e-11, which its AGGD fit
    # counts as left or right samples; the per-side variances change and the score by 2.4%.
    assert got["astronaut"] == pytest.approx(NIQE_REFERENCE["astronaut"], rel=0.04)


def test_niqe_prefers_the_pristine_photo(photo, niqe_model):
    clean = m.niqe(photo, niqe_model)
    blurred = m.niqe(_blur(photo, 2.0), niqe_model)
    noisy = np.clip(photo + np.random.default_rng(0).normal(0, 15, photo.shape), 0, 255).astype(np.uint8)
    assert clean < blurred
    assert clean < m.niqe(noisy, niqe_model)
    # more blur, less natural
    assert blurred < m.niqe(_blur(photo, 4.0), niqe_model)


def test_niqe_model_roundtrip_and_small_image(tmp_path, photo, niqe_model):
    assert niqe_model.mu.shape == (36,) and niqe_model.cov.shape == (36, 36)
    niqe_model.save(tmp_path / "n.npz")
    back = m.load_niqe_model(tmp_path / "n.npz")
    assert m.niqe(photo, back) == m.niqe(photo, niqe_model)
    with pytest.raises(ValueError, match="two 96px patches"):
        m.niqe(photo[:100, :100], niqe_model)


def test_aggd_fit_recovers_a_gaussian():
    x = np.random.default_rng(0).normal(0, 2.0, (3, 200_000))
    from vsr.metrics.niqe import _aggd_fit

    alpha, bl, br, mean = _aggd_fit(x)
    assert alpha == pytest.approx(2.0, abs=0.05)
    # for alpha = 2 the AGGD scale is sigma * sqrt(2)
    assert bl == pytest.approx(2.0 * math.sqrt(2), rel=0.02) and br == pytest.approx(2.0 * math.sqrt(2), rel=0.02)
    assert abs(mean).max() < 0.05


def _crop_clip(photo: np.ndarray, shifts: list[tuple[int, int]]) -> list[np.ndarray]:
    return [photo[100 + dy : 356 + dy, 100 + dx : 420 + dx] for dy, dx in shifts]


def test_warping_error_is_zero_for_a_static_clip(photo):
    clip = _crop_clip(photo, [(0, 0)] * 3)
    assert m.warping_error(clip) == pytest.approx(0.0, abs=1e-12)
    assert m.flicker(clip) == 0.0


def test_flow_recovers_known_integer_shifts(photo):
    shifts = [(0, 0), (2, 3), (5, 1), (7, -2)]
    clip = _crop_clip(photo, shifts)
    for (y0, x0), (y1, x1), prev, cur in zip(shifts, shifts[1:], clip, clip[1:]):
        flow, valid = m.consistent_flow(prev, cur)
        assert valid.mean() > 0.9
        # cur(x) = prev(x + shift): the backward flow is the shift itself
        assert np.median(flow[..., 0][valid]) == pytest.approx(x1 - x0, abs=0.05)
        assert np.median(flow[..., 1][valid]) == pytest.approx(y1 - y0, abs=0.05)
    unwarped = np.mean([np.mean((c / 255.0 - p / 255.0) ** 2) for p, c in zip(clip, clip[1:])])
    err = m.warping_error(clip)
    assert err < 1e-4 and err < unwarped / 100


def test_warping_error_sees_flicker_that_the_reference_does_not_have(photo):
    ref = _crop_clip(photo, [(0, 0), (1, 2), (2, 4)])
    out = [np.clip(f.astype(int) + d, 0, 255).astype(np.uint8) for f, d in zip(ref, (0, 8, 0))]
    assert m.warping_error(out, ref) > 10 * m.warping_error(ref, ref)


def test_flicker_zero_for_constant_positive_for_oscillation(photo):
    still = _crop_clip(photo, [(0, 0)] * 4)
    assert m.flicker(still, still) == 0.0
    flat = [np.full((64, 64, 3), 90, np.uint8)] * 3
    assert m.flicker(flat) == 0.0
    osc = [np.clip(f.astype(int) + d, 0, 255).astype(np.uint8) for f, d in zip(still, (0, 6, 0, 6))]
    # +6 RGB levels = 6 * 219/255 luma levels on every static block
    assert m.flicker(osc, still) == pytest.approx(6 * 219 / 255, rel=0.02)
    assert m.flicker(osc) == pytest.approx(6 * 219 / 255, rel=0.05)  # static blocks from flow


def test_moving_content_is_not_counted_as_flicker(photo):
    moving = _crop_clip(photo, [(0, 0), (0, 6), (0, 12)])
    # the guide moves everywhere there is texture: those blocks are not static
    static = m.static_mask_from_guide(moving[0], moving[1])
    assert static.mean() < 0.9
    raw = np.mean([np.abs(m.low_pass_luma(c) - m.low_pass_luma(p)).mean() for p, c in zip(moving, moving[1:])])
    assert raw > 3
    assert m.flicker(moving, moving) < raw / 5
    got = m.flicker(moving)  # flow-based: textured blocks move, flat ones may remain
    assert math.isnan(got) or got < raw / 5


def test_fit_niqe_command_writes_model_and_provenance(tmp_path, photos):
    import json

    import vsr.pipelines.corpus as corpus
    from vsr.pipelines.fit_niqe import main as fit_main

    root = tmp_path / "corpus"
    (root / "images" / "train").mkdir(parents=True)
    (root / "images" / "val").mkdir(parents=True)
    images = []
    for name, split in (("coffee", "train"), ("chelsea", "train"), ("rocket", "val")):
        img = photos[name]
        rel = f"images/{split}/{name}.png"
        cv2.imwrite(str(root / rel), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        images.append({"id": name, "file": rel, "split": split})
    (root / "manifest.json").write_text(json.dumps({"images": images}))
    out = tmp_path / "assets" / "niqe.npz"
    assert fit_main(["--corpus", str(root), "--out", str(out)]) == 0
    model = m.load_niqe_model(out)
    # the val image stays out of the fit
    want = m.fit_niqe([photos["coffee"], photos["chelsea"]])
    assert model.n_patches == want.n_patches
    np.testing.assert_allclose(model.mu, want.mu, rtol=1e-6)  # PNG round trip is lossless
    prov = json.loads(out.with_suffix(".json").read_text())
    assert prov["corpus_manifest_hash"] == corpus.corpus_manifest_hash(root)
    assert prov["n_images"] == 2 and prov["patch_size"] == 96 and prov["sharpness_threshold"] == 0.75
    assert prov["n_patches"] == model.n_patches and "--corpus" in prov["command"]
    assert fit_main(["--corpus", str(tmp_path / "none"), "--out", str(out)]) == 3


def test_shipped_niqe_model_ranks_degradations(photo):
    # the model fitted on the corpus (vsr/assets/niqe_model.npz, provenance in its .json)
    model = m.load_niqe_model()
    assert model.patch_size == 96 and model.n_patches >= 100
    assert np.all(np.linalg.eigvalsh(model.cov) > -1e-9)  # a covariance
    clean = m.niqe(photo, model)
    low_res = cv2.resize(cv2.resize(photo, (128, 128), interpolation=cv2.INTER_AREA), (512, 512),
                         interpolation=cv2.INTER_CUBIC)
    assert clean < m.niqe(_blur(photo, 2.0), model)
    assert clean < m.niqe(low_res, model)
