import json
import shutil

import cv2
import numpy as np
import pytest
import torch
import yaml

from vsr.calibrate import ScaleResult, balance_weight, fidelity_loss, find_prf, monotone, signature_loss
from vsr.cli import main as cli_main
from vsr.engine import resize


def _small(photos, size=128):
    """The astronaut, chelsea and coffee photographs shrunk to size x size."""
    return [cv2.resize(photos[n], (size, size), interpolation=cv2.INTER_AREA) for n in ("astronaut", "chelsea", "coffee")]


def test_losses_see_content_drift_and_missing_detail(photos):
    hr = torch.from_numpy(np.stack(_small(photos))).permute(0, 3, 1, 2).float() / 255
    s = 4.0
    blurry = resize(resize(hr, 32, 32), 128, 128)
    shifted = torch.roll(hr, shifts=(6, 6), dims=(-2, -1))
    assert signature_loss(hr, hr, s) == 0 and fidelity_loss(hr, hr, s) == 0
    # bicubic upscaling keeps the content (low L_S) but lacks detail (high L_F) ...
    assert signature_loss(blurry, hr, s) < signature_loss(shifted, hr, s) / 5
    assert fidelity_loss(blurry, hr, s) > 0.5
    # ... a shifted copy has all the detail but the wrong content
    assert fidelity_loss(shifted, hr, s) < fidelity_loss(blurry, hr, s) / 2


def test_prf_is_the_feasible_set_and_t_star_its_argmin():
    grid = (0.1, 0.2, 0.3, 0.4, 0.5)
    r = ScaleResult(2.0, grid, sig=(0.01, 0.02, 0.03, 0.06, 0.1), fid=(1.0, 0.5, 0.2, 0.1, 0.05))
    out = find_prf(r, w=0.1, c_s=0.05, c_f=0.06)
    assert out.field == (0.2, 0.3) and out.t_star == 0.3  # totals: 0.07, 0.05, 0.07 (0.4 is out of field)
    none = find_prf(r, w=0.1, c_s=0.001, c_f=0.001)
    assert none.field is None and none.t_star == 0.3  # no field: best over the whole grid
    assert balance_weight([r]) == pytest.approx(np.mean(r.sig) / np.mean(r.fid))
    assert monotone([0.2, 0.35, 0.3, 0.5]) == pytest.approx([0.2, 0.325, 0.325, 0.5])
    assert monotone([0.01, 0.075, 0.01, 0.01, 0.01]) == pytest.approx([0.01] + [0.02625] * 4)  # one outlier
    assert monotone([0.1, 0.2, 0.4]) == [0.1, 0.2, 0.4]


def test_calibrate_cli_writes_the_card_and_plots(tiny_model_dir, tmp_path, capsys, photos):
    model = tmp_path / "mine"
    shutil.copytree(tiny_model_dir, model)
    images = tmp_path / "images"
    images.mkdir()
    for k, img in enumerate(_small(photos)):
        cv2.imwrite(str(images / f"{k}.png"), img[:, :, ::-1])
    (images / "notes.txt").write_text("not an image")
    png = tmp_path / "curves.png"
    argv = ["calibrate", "--model", str(model), "--scales", "2", "4", "--images", str(images),
            "--grid", "0.1", "0.3", "0.5", "--crop", "32", "--dtype", "float32", "--out", str(png)]
    assert cli_main(argv) == 0
    out = capsys.readouterr().out
    assert "t*" in out and "written to" in out
    card = yaml.safe_load((model / "model_card.yaml").read_text())
    assert card["prf"]["scales"] == [2.0, 4.0] and len(card["prf"]["t"]) == 2
    assert card["prf"]["t"][0] <= card["prf"]["t"][1] and all(t in (0.1, 0.3, 0.5) for t in card["prf"]["t"])
    assert card["crop"] == 32 and card["calibration"]["images"] == 3
    assert png.stat().st_size > 1000
    assert cli_main(["calibrate", "--model", str(model), "--images", str(tmp_path / "none")]) == 3


def test_calibrate_noise_predictor_writes_its_start_per_scale_and_the_prf_ignores_it(tmp_path, capsys, photos):
    """`vsr calibrate --noise-predictor` measures the predictor's start t/T per scale
    (the export's rule: the lowest GMSD within 0.1 dB of the best Y-PSNR) into the card's
    noise_predictor: entry, which the engine then runs; the PRF is plain Diff-SR's field
    whether or not the model has a predictor."""
    from tests.conftest import build_tiny_model_dir, with_noise_predictor
    from vsr.engine import Upscaler

    images = tmp_path / "images"
    images.mkdir()
    for k, img in enumerate(_small(photos, 64)):
        cv2.imwrite(str(images / f"{k}.png"), img[:, :, ::-1])
    model = with_noise_predictor(tmp_path / "np", t=(0.05, 0.1), pixel_unshuffle=2)
    entry = yaml.safe_load((model / "model_card.yaml").read_text())["noise_predictor"]
    entry["architecture"] = {"channels": 8}  # provenance the calibration must keep
    entry["calibration_note"] = "about the levels being replaced"  # ... and a note it must not
    card = yaml.safe_load((model / "model_card.yaml").read_text())
    card["noise_predictor"] = entry
    (model / "model_card.yaml").write_text(yaml.safe_dump(card))
    scores = tmp_path / "scores.json"
    argv = ["calibrate", "--model", str(model), "--noise-predictor", "--scales", "4", "2", "4", "--images", str(images),
            "--grid", "0.005", "0.05", "0.3", "--crop", "32", "--dtype", "float32", "--steps", "1",
            "--consistency", "2", "--out", str(scores)]
    assert cli_main(argv) == 0
    assert "written to" in capsys.readouterr().out
    entry = yaml.safe_load((model / "model_card.yaml").read_text())["noise_predictor"]
    assert entry["scales"] == [2.0, 4.0] and entry["steps"] == 1 and entry["consistency"] == 2
    assert entry["architecture"] == {"channels": 8} and entry["mix"] == 0.0 and "calibration_note" not in entry
    assert entry["calibration"]["images"] == 3 and entry["calibration"]["scores"] == str(scores)
    measured = json.loads(scores.read_text())
    for s, t in zip(entry["scales"], entry["t"]):
        row = {float(k[2:]): v for k, v in measured[f"{s:g}x"].items() if k.startswith("t=")}
        assert set(row) == {0.005, 0.05, 0.3}
        near = {lv: v for lv, v in row.items() if v["psnr"] >= max(r["psnr"] for r in row.values()) - 0.1}
        assert t == min(near, key=lambda lv: near[lv]["gmsd"])
    up = Upscaler.from_pretrained(str(model), scale=2, dtype="float32")
    assert up.steps == 1 and up.consistency == 2 and up.timesteps_for(2.0) == (round(entry["t"][0] * 1000),)
    # a crop the model cannot tile is one line before anything is measured; the card stays
    card_bytes = (model / "model_card.yaml").read_bytes()
    assert cli_main([*argv[:argv.index("--crop")], "--crop", "30"]) == 2
    assert "multiple" in capsys.readouterr().err and (model / "model_card.yaml").read_bytes() == card_bytes
    # the scores stay in the card when no --out is given
    assert cli_main(["calibrate", "--model", str(model), "--noise-predictor", "--scales", "2", "--images", str(images),
                     "--grid", "0.05", "--crop", "32", "--dtype", "float32", "--max-images", "1"]) == 0
    assert isinstance(yaml.safe_load((model / "model_card.yaml").read_text())["noise_predictor"]["calibration"]["scores"],
                      dict)
    capsys.readouterr()

    # the PRF: the same numbers with and without a noise_predictor/ in the folder
    plain = build_tiny_model_dir(tmp_path / "plain", pixel_unshuffle=2)
    prf = ["--scales", "2", "--images", str(images), "--grid", "0.1", "0.3", "--crop", "32", "--dtype", "float32",
           "--max-images", "2"]
    for folder in (model, plain):
        assert cli_main(["calibrate", "--model", str(folder), *prf, "--out", str(tmp_path / f"{folder.name}.png")]) == 0
    with_np, without = (yaml.safe_load((f / "model_card.yaml").read_text()) for f in (model, plain))
    assert with_np["calibration"]["w"] == without["calibration"]["w"] and with_np["prf"] == without["prf"]
    assert with_np["calibration"]["steps"] == 2 and with_np["calibration"]["consistency"] == 1

    # a model without a predictor: one line, exit 2, its card untouched
    before = (plain / "model_card.yaml").read_bytes()
    capsys.readouterr()
    assert cli_main(["calibrate", "--model", str(plain), "--noise-predictor", *prf]) == 2
    err = capsys.readouterr().err.strip()
    assert "has no noise_predictor/" in err and len(err.splitlines()) == 1
    assert (plain / "model_card.yaml").read_bytes() == before
