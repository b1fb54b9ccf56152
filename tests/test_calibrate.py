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
