"""`vsr eval`: the frame-level core on real photographs, and the command on real video files."""
from __future__ import annotations

import csv
import json
import math

import cv2
import numpy as np
import pytest
from skimage.metrics import structural_similarity

from vsr.cli import main
from vsr.errors import EXIT_INPUT, EXIT_MODEL, InputError, UsageError
from vsr.evaluate import evaluate_frames, format_table, result_to_dict


@pytest.fixture(scope="module")
def clip(photo) -> list[np.ndarray]:
    """Four 256x320 crops of a photograph panning by known steps: the reference clip."""
    return [photo[100 + dy : 356 + dy, 100 + dx : 420 + dx] for dy, dx in ((0, 0), (1, 2), (2, 4), (3, 6))]


def _blur(frames, sigma):
    return [cv2.GaussianBlur(f, (0, 0), sigma) for f in frames]


def _luma(im: np.ndarray) -> np.ndarray:
    """BT.601 studio-range luma on a 0..255 scale, written out here, not taken from vsr."""
    return 16 + im.astype(np.float64) @ np.array([65.481, 128.553, 24.966]) / 255


def test_full_reference_rows_hold_the_known_values(clip, niqe_model):
    # every channel +10 (no clipping): luma moves by 10 * 219/255 everywhere, gradients do not
    ref = [np.clip(f, 20, 230) for f in clip]
    out = [f + np.uint8(10) for f in ref]
    res = evaluate_frames(iter(out), iter(ref), crop_border=4, niqe_model=niqe_model)
    assert res.mode == "full-reference" and res.n_frames == 4
    assert [r["frame"] for r in res.rows] == [0, 1, 2, 3]
    psnr = 20 * math.log10(255 / (10 * 219 / 255))
    for row in res.rows:
        assert row["psnr"] == pytest.approx(psnr, abs=1e-9)
        # same gradients: GMS = 1 except where Prewitt's zero padding meets the offset (the edge)
        assert 0 < row["gmsd"] < 0.01
        assert 0.99 < row["ms_ssim"] < 1  # contrast-structure 1 at every scale, only luminance moves
    assert res.summary["psnr"] == pytest.approx(psnr, abs=1e-9)
    # SSIM of a blurred clip: scikit-image's, on the luma with the border cropped
    blurred = _blur(clip, 1.2)
    res = evaluate_frames(blurred, clip, crop_border=4, niqe_model=niqe_model)
    for row, o, r in zip(res.rows, blurred, clip):
        want = structural_similarity(_luma(o)[4:-4, 4:-4], _luma(r)[4:-4, 4:-4], gaussian_weights=True, sigma=1.5,
                                     use_sample_covariance=False, data_range=255)
        assert row["ssim"] == pytest.approx(want, abs=1e-10)
    # NIQE needs no reference: the same numbers as a no-reference run
    alone = evaluate_frames(blurred, crop_border=4, niqe_model=niqe_model, temporal=False)
    assert [r["niqe"] for r in res.rows] == [r["niqe"] for r in alone.rows]
    # the blurred clip moves exactly like the reference: no warping error past frame 0
    assert math.isnan(res.rows[0]["warp_error"])
    assert 0 < res.summary["warp_error"] < 1e-3


def test_identical_clip_scores_perfectly(clip):
    res = evaluate_frames(clip, clip)
    assert res.summary["psnr"] == math.inf
    assert res.summary["ssim"] == pytest.approx(1.0) and res.summary["gmsd"] == 0.0
    doc = result_to_dict(res)
    assert doc["summary"]["psnr"] == "inf"
    assert doc["per_frame"][0]["warp_error"] is None
    json.dumps(doc, allow_nan=False)  # valid JSON, no NaN/Infinity tokens
    assert "psnr" in format_table(res) and "inf" in format_table(res)


def test_flickering_output_is_caught_against_the_reference(clip):
    flick = [np.clip(f.astype(int) + d, 0, 255).astype(np.uint8) for f, d in zip(clip, (0, 7, 0, 7))]
    steady = evaluate_frames(clip, clip, temporal=True)
    bad = evaluate_frames(flick, clip, temporal=True)
    assert bad.summary["flicker"] > 4 > steady.summary["flicker"] + 3
    assert bad.summary["warp_error"] > 10 * steady.summary["warp_error"]


def test_size_mismatch_is_an_input_error(clip):
    with pytest.raises(InputError, match="frame 0: output is 318x256 but the reference is 320x256"):
        evaluate_frames([f[:, :318] for f in clip], clip)


@pytest.mark.parametrize("n_out,n_ref", [(3, 4), (4, 2)])
def test_frame_count_mismatch_is_an_input_error(clip, n_out, n_ref):
    with pytest.raises(InputError, match="frame counts differ") as exc:
        evaluate_frames(clip[:n_out], clip[:n_ref], temporal=False)
    assert exc.value.exit_code == EXIT_INPUT


def test_no_reference_uses_niqe_and_the_guide(clip, niqe_model):
    low = [cv2.resize(f, (160, 128), interpolation=cv2.INTER_AREA) for f in clip]
    res = evaluate_frames(clip, guides=low, niqe_model=niqe_model)
    assert res.mode == "no-reference"
    assert set(res.summary) == {"niqe", "warp_error", "flicker"}
    assert res.summary["warp_error"] < 2e-3
    alone = evaluate_frames(_blur(clip, 3.0), niqe_model=niqe_model, temporal=False)
    assert set(alone.summary) == {"niqe"}
    assert alone.summary["niqe"] > res.summary["niqe"]
    with pytest.raises(UsageError):
        evaluate_frames(clip, clip, guides=low)


def test_empty_output_is_an_input_error():
    with pytest.raises(InputError, match="no frames"):
        evaluate_frames([], [])


def test_cli_reports_missing_files_and_models(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "nope.mp4"), "--no-niqe"]) == EXIT_INPUT
    assert "no such file" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "nope.mp4"), "--niqe-model", str(tmp_path / "x.npz")]) == EXIT_MODEL


# -- the command on real video files (made with PyAV, decoded through vsr.video) ------------


def test_cli_full_reference_on_video_files(tmp_path, capsys):
    from tests.media import make_clip

    ref = make_clip(tmp_path / "ref.mp4", width=64, height=48, frames=6, audio=())
    out_json, out_csv = tmp_path / "r" / "eval.json", tmp_path / "r" / "frames.csv"
    code = main(["eval", str(ref), "--reference", str(ref), "--no-niqe", "--crop-border", "2",
                 "--json", str(out_json), "--per-frame", str(out_csv)])
    assert code == 0
    table = capsys.readouterr().out
    assert "full-reference, 6 frames" in table and "psnr" in table
    doc = json.loads(out_json.read_text())
    assert doc["frames"] == 6 and doc["summary"]["psnr"] == "inf"  # the same file decodes identically
    assert doc["summary"]["ssim"] == pytest.approx(1.0) and doc["crop_border"] == 2
    assert set(doc["summary"]) == {"psnr", "ssim", "ms_ssim", "gmsd", "warp_error", "flicker"}
    assert len(doc["per_frame"]) == 6 and doc["per_frame"][0]["warp_error"] is None
    rows = list(csv.DictReader(out_csv.open()))
    assert list(rows[0]) == ["frame", "psnr", "ssim", "ms_ssim", "gmsd", "warp_error", "flicker"]
    assert [int(r["frame"]) for r in rows] == list(range(6))
    assert rows[0]["warp_error"] == "" and float(rows[3]["warp_error"]) > 0  # the pattern moves
    # the summary is the mean of the per-frame rows, both files at full precision
    assert doc["summary"]["warp_error"] == pytest.approx(np.mean([float(r["warp_error"]) for r in rows[1:]]), rel=1e-12)


def test_cli_scores_a_degraded_video_against_its_reference(tmp_path):
    from tests.media import make_clip

    ref = make_clip(tmp_path / "ref.mp4", width=64, height=48, frames=6, audio=())
    worse = make_clip(tmp_path / "worse.mp4", width=64, height=48, frames=6, audio=(), codec="mpeg4")
    assert main(["eval", str(worse), "-r", str(ref), "--no-niqe", "--json", str(tmp_path / "j.json")]) == 0
    doc = json.loads((tmp_path / "j.json").read_text())
    assert 20 < doc["summary"]["psnr"] < 60 and doc["summary"]["ssim"] < 1.0


def test_cli_mismatches_are_input_errors(tmp_path, capsys):
    from tests.media import make_clip

    ref = make_clip(tmp_path / "ref.mp4", width=64, height=48, frames=6, audio=())
    small = make_clip(tmp_path / "small.mp4", width=48, height=32, frames=6, audio=())
    short = make_clip(tmp_path / "short.mp4", width=64, height=48, frames=4, audio=())
    assert main(["eval", str(small), "--reference", str(ref), "--no-niqe"]) == EXIT_INPUT
    assert "output is 48x32 but the reference is 64x48" in capsys.readouterr().err
    assert main(["eval", str(short), "--reference", str(ref), "--no-niqe"]) == EXIT_INPUT
    assert "frame counts differ" in capsys.readouterr().err


def test_cli_no_reference_with_the_shipped_niqe_model(tmp_path, capsys):
    from tests.media import make_clip

    clip = make_clip(tmp_path / "c.mp4", width=192, height=96, frames=4, audio=())
    assert main(["eval", str(clip), "--json", str(tmp_path / "n.json")]) == 0
    assert "no-reference, 4 frames" in capsys.readouterr().out
    doc = json.loads((tmp_path / "n.json").read_text())
    assert set(doc["summary"]) == {"niqe", "warp_error", "flicker"}
    assert doc["summary"]["niqe"] > 0 and doc["reference"] is None
    # NIQE needs two 96 px patches: a smaller video says what to do
    tiny = make_clip(tmp_path / "t.mp4", width=64, height=48, frames=2, audio=())
    assert main(["eval", str(tiny)]) == EXIT_INPUT
    assert "--no-niqe" in capsys.readouterr().err
