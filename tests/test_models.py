import math
import shutil

import pytest
import torch
import yaml

from tests.conftest import build_tiny_model_dir
from vsr import models
from vsr.config import EngineConfig
from vsr.cli import main as cli_main
from vsr.errors import ModelError
from vsr.models import ModelCard, ModelDenoiser, load_model, resolve_dtype


def test_load_a_diffusers_folder_with_its_card(tmp_path):
    from diffusers import DDPMScheduler, UNet2DModel

    d = build_tiny_model_dir(tmp_path / "m", crop=48)
    card = yaml.safe_load((d / "model_card.yaml").read_text())
    card["prf"] = {"scales": [2, 3], "t": [0.123, 0.321]}
    (d / "model_card.yaml").write_text(yaml.safe_dump(card))
    lm = load_model(d)
    # the weights are the saved ones, in float32, frozen
    ref = UNet2DModel.from_pretrained(d / "unet")
    assert all(torch.equal(a, b) for a, b in zip(lm.net.state_dict().values(), ref.state_dict().values()))
    assert all(not p.requires_grad and p.dtype == torch.float32 for p in lm.net.parameters())
    # the schedule is the scheduler folder's, in float64
    ac = DDPMScheduler.from_pretrained(d / "scheduler").alphas_cumprod
    assert lm.alphas_cumprod.dtype == torch.float64 and torch.equal(lm.alphas_cumprod, ac.double())
    # the card's values reach the engine: tile = crop, PRF interpolated at the card's points
    from vsr.engine import Upscaler

    up = Upscaler(lm, EngineConfig(steps=1))
    assert up.tile == 48 and up.timesteps_for(2.0) == (123,) and up.timesteps_for(3.0) == (321,)
    assert lm.down_factor == 2 and lm.source == str(d.resolve())


def test_folder_without_card_and_root_layout(tmp_path):
    d = build_tiny_model_dir(tmp_path / "ps2", pixel_unshuffle=2, prediction_type="v_prediction", card=False)
    lm = load_model(d)
    assert lm.card.pixel_unshuffle == 2 and lm.card.crop == 256 and lm.card.prf_scales == (2.0, 4.0, 8.0)
    assert lm.prediction_type == "v_prediction" and lm.down_factor == 4
    # hub DDPM layout: unet files and scheduler_config.json at the root
    root = tmp_path / "rootlayout"
    shutil.copytree(d / "unet", root)
    shutil.copy(d / "scheduler" / "scheduler_config.json", root / "scheduler_config.json")
    assert load_model(root).card.pixel_unshuffle == 2
    den = lm.make_denoiser(torch.device("cpu"), torch.float32)
    x0, eps = den(torch.rand(2, 3, 16, 24) * 2 - 1, 300)  # unshuffle -> UNet -> shuffle back
    assert x0.shape == eps.shape == (2, 3, 16, 24) and float(x0.abs().max()) <= 1.0


def test_missing_models_are_clear_errors(tmp_path, monkeypatch):
    monkeypatch.setattr(models.registry, "shipped_weights_dir", lambda name: tmp_path / "nowhere" / name)
    with pytest.raises(ModelError, match="weights of the shipped model 'vsr-prior-s' are missing"):
        load_model(None)
    with pytest.raises(ModelError, match="not found"):
        load_model("no-such-model")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="local folder"):
        load_model("google/ddpm-cifar10-32")
    bad = tmp_path / "bad"
    (bad / "unet").mkdir(parents=True)
    (bad / "unet" / "config.json").write_text("{}")
    with pytest.raises(ModelError, match="scheduler"):
        load_model(bad)


def test_card_round_trip_and_validation(tmp_path):
    card = ModelCard(name="x", crop=64, pixel_unshuffle=4, extra={"notes": "kept"})
    card.save(tmp_path / "c.yaml", header="made by a test")
    assert (tmp_path / "c.yaml").read_text().startswith("# made by a test\n")
    again = ModelCard.from_yaml(tmp_path / "c.yaml")
    assert again == card and again.extra == {"notes": "kept"}
    with pytest.raises(ModelError, match="prf"):
        ModelCard(prf_scales=(2, 4), prf_t=(0.2,))
    with pytest.raises(ModelError, match="prediction_type"):
        ModelCard(prediction_type="x0")


@pytest.mark.parametrize("ptype", ["epsilon", "v_prediction", "sample"])
def test_denoiser_parametrisations_recover_x0_and_eps(ptype):
    ac = torch.linspace(0.999, 0.01, 1000, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(1, 3, 8, 8, generator=g) * 2 - 1
    eps = torch.randn(1, 3, 8, 8, generator=g)
    t = 400
    a = float(ac[t])
    x_t = math.sqrt(a) * x0 + math.sqrt(1 - a) * eps
    target = {"epsilon": eps, "v_prediction": math.sqrt(a) * eps - math.sqrt(1 - a) * x0, "sample": x0}[ptype]

    class Oracle(torch.nn.Module):
        def forward(self, x, tt):
            assert int(tt[0]) == t
            return target.to(x.dtype)

    p0, pe = ModelDenoiser(Oracle(), ac, ptype, clip_x0=False)(x_t, t)
    torch.testing.assert_close(p0, x0, rtol=0, atol=1e-5)
    torch.testing.assert_close(pe, eps, rtol=0, atol=1e-4)


def test_pixel_unshuffle_stem_is_transparent():
    class Identity(torch.nn.Module):
        def forward(self, x, t):
            assert x.shape[1] == 48  # the UNet sees 3 * 4 * 4 channels
            return x

    den = ModelDenoiser(Identity(), torch.full((10,), 0.5, dtype=torch.float64), "sample", pixel_unshuffle=4)
    x = torch.rand(1, 3, 16, 32) * 2 - 1
    torch.testing.assert_close(den(x, 3)[0], x)


def test_denoiser_runs_the_resolved_dtype_and_returns_float32(tiny_model_dir):
    lm = load_model(tiny_model_dir)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    outs = {}
    for name in ("float32", "bfloat16"):
        den = lm.make_denoiser(torch.device("cpu"), resolve_dtype(name, torch.device("cpu")))
        assert next(den.net.parameters()).dtype == getattr(torch, name)
        x0, eps = den(x, 300)
        assert x0.dtype == eps.dtype == torch.float32
        outs[name] = x0
    assert next(lm.net.parameters()).dtype == torch.float32  # the loaded weights are not cast in place
    diff = float((outs["float32"] - outs["bfloat16"]).abs().max())
    assert 0 < diff < 0.1  # bf16 really ran (not a silent fp32), and agrees to its precision


def test_an_unavailable_device_is_a_clear_error():
    from vsr.device import resolve_device
    from vsr.errors import ConfigError

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match="CUDA is not available: use --device cpu"):
        resolve_device("cuda")


def test_float32_on_cuda_turns_tf32_off_and_other_choices_leave_it():
    # the flags only: the arithmetic they change needs a GPU (VSR_TEST_DEVICE=cuda runs the rest)
    from vsr.device import exact_float32

    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
        for device, dtype in (("cuda", torch.float16), ("cuda", torch.bfloat16), ("cpu", torch.float32)):
            exact_float32(torch.device(device), dtype)
            assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
        exact_float32(torch.device("cuda:0"), torch.float32)
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.parametrize("ptype", ["epsilon", "v_prediction", "sample"])
def test_to_x0_eps_with_per_sample_timesteps_matches_one_timestep(ptype):
    from vsr.models import to_x0_eps

    ac = torch.linspace(0.999, 0.01, 1000, dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    x_t, out = torch.randn(3, 3, 4, 4, generator=g), torch.randn(3, 3, 4, 4, generator=g)
    ts = torch.tensor([10, 400, 900])
    x0, eps = to_x0_eps(out, x_t, ts, ac, ptype)
    for i, t in enumerate(ts.tolist()):
        x0_i, eps_i = to_x0_eps(out[i : i + 1], x_t[i : i + 1], t, ac, ptype)
        torch.testing.assert_close(x0[i : i + 1], x0_i, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(eps[i : i + 1], eps_i, rtol=1e-5, atol=1e-4)
    # and the pair reproduces x_t: sqrt(a) x0 + sqrt(1 - a) eps
    a = ac[ts].float().view(-1, 1, 1, 1)
    torch.testing.assert_close(a.sqrt() * x0 + (1 - a).sqrt() * eps, x_t, rtol=1e-4, atol=1e-4)


def test_models_cli_lists_and_shows_cards(tiny_model_dir, tmp_path, monkeypatch, capsys):
    user = tmp_path / "user_models"
    user.mkdir()
    shutil.copytree(tiny_model_dir, user / "mine")
    monkeypatch.setenv("VSR_MODELS_DIR", str(user))
    assert cli_main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "vsr-prior-s" in out and "mine" in out
    assert cli_main(["models", "info", "mine"]) == 0
    out = capsys.readouterr().out
    card = yaml.safe_load(out.split("\n", 1)[1])
    assert card["crop"] == 32 and card["prf"]["t"] == [0.2, 0.4, 0.55]
    assert cli_main(["models", "info", "nope-model"]) == 5


def test_predict_x0_agrees_with_the_full_prediction(tiny_model_dir):
    lm = load_model(tiny_model_dir)
    den = lm.make_denoiser(torch.device("cpu"), torch.bfloat16)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    x0, eps = den(x, 250)
    assert x0.dtype == eps.dtype == torch.float32
    torch.testing.assert_close(den.predict_x0(x, 250), x0)


def test_info_of_a_folder_without_card_reads_the_unet_config(tmp_path, capsys):
    d = build_tiny_model_dir(tmp_path / "nocard", pixel_unshuffle=2, card=False)
    assert cli_main(["models", "info", str(d)]) == 0
    card = yaml.safe_load(capsys.readouterr().out.split("\n", 1)[1])
    assert card["pixel_unshuffle"] == 2 and card["crop"] == 256


def test_the_shipped_weights_folder_given_as_a_path_gets_the_shipped_card():
    """`--model vsr/weights/vsr-prior-s` is the shipped model, card included (its PRF and
    its noise predictor's calibrated start), not a folder without a card."""
    from vsr.models.registry import resolve_model, shipped_card_path, shipped_weights_dir

    folder = shipped_weights_dir("vsr-prior-s")
    if not (folder / "unet").is_dir():
        pytest.skip("the shipped prior's weights are not in vsr/weights/vsr-prior-s")
    by_name, by_path = resolve_model("vsr-prior-s"), resolve_model(str(folder))
    assert by_path == by_name and by_path[2] == shipped_card_path("vsr-prior-s")
