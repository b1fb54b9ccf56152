"""InvSR's noise predictor: the model, the noise source, the degradations and the trainer.

Tiny models built here; only the last test (marked slow) uses the shipped prior.
"""
from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from vsr.pipelines import train_noise_predictor as tnp
from vsr.core.schedule import add_noise
from vsr.errors import ConfigError, ModelError
from vsr.models.noise_predictor import SUBFOLDER, NoisePredictor, count_macs
from vsr.noise import NoiseContext, SharedNoise
from vsr.noise.predicted import PredictedNoise, load_noise_predictor

from tests.conftest import TEST_DEVICE


def tiny_predictor(seed: int = 0, beta_schedule: str = "squaredcos_cap_v2", deep_blocks: int = 0) -> NoisePredictor:
    torch.manual_seed(seed)
    net = NoisePredictor(channels=8, num_blocks=1, pixel_unshuffle=2, emb_dim=8, beta_schedule=beta_schedule,
                         deep_blocks=deep_blocks, deep_channels=12)
    for p in net.tail.parameters():  # not the zero init: make d depend on the input
        torch.nn.init.normal_(p, std=0.1)
    return net


def tiny_prior(seed: int = 0):
    """A LoadedModel of a random 2-level UNet (v-prediction, squared-cosine schedule)."""
    from diffusers import DDPMScheduler, UNet2DModel

    from vsr.models import LoadedModel
    from vsr.models.card import ModelCard

    torch.manual_seed(seed)
    unet = UNet2DModel(
        sample_size=32, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
        norm_num_groups=8, down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2,
    ).eval().requires_grad_(False)
    ac = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2").alphas_cumprod.double()
    return LoadedModel(unet, ModelCard(name="tiny", crop=32), ac, "v_prediction", None, 2)


def textured_crops(n: int = 12, size: int = 40, seed: int = 0) -> np.ndarray:
    """(n, 3, size, size) uint8: smooth colour ramps plus stripes and noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = np.empty((n, 3, size, size), np.uint8)
    for i in range(n):
        f = rng.uniform(2, 8)
        for c in range(3):
            img = 0.5 + 0.3 * np.sin(2 * np.pi * (f * xx + rng.uniform() * yy) + c) + 0.05 * rng.standard_normal((size, size))
            out[i, c] = np.clip(img * 255, 0, 255).astype(np.uint8)
    return out


def tiny_cfg(run_dir, **kw) -> tnp.PredictorTrainConfig:
    base = dict(
        corpus=str(run_dir / "no-corpus"), run_dir=str(run_dir), prior_dtype="float32", channels=8, num_blocks=1,
        pixel_unshuffle=2, emb_dim=8, crop=32, pack_size=40, scale_min=2.0, scale_max=4.0, t_min=20, t_max=100,
        steps_choices=(1, 2), batch_size=2, steps=4, lr=3e-3, warmup_steps=1, checkpoint_every=2, val_every=0,
        num_threads=1, device="cpu", val_crop=32,
    )
    base.update(kw)
    return tnp.PredictorTrainConfig(**base)


# ----------------------------------------------------------------------------- the model


def test_start_is_upsampled_plus_detail_and_zero_init_gives_x_up():
    net = NoisePredictor(channels=8, num_blocks=1, pixel_unshuffle=2, emb_dim=8)  # tail zero-initialised
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    for t in (10, 200, 900):
        assert torch.allclose(add_noise(x, net(x, t), t, net.alphas_cumprod), x, atol=1e-5)
    net = tiny_predictor()
    d = net.detail(x, 50)
    assert torch.allclose(add_noise(x, net(x, 50), 50, net.alphas_cumprod), x + d, atol=1e-5)
    with pytest.raises(ValueError, match="multiples of 2"):
        net(torch.zeros(1, 3, 15, 16), 50)
    with pytest.raises(ValueError, match="timesteps"):
        net(x, 0)


def test_budget_of_the_default_the_shipped_and_every_configured_architecture():
    from vsr.models import shipped_weights_dir
    from vsr.pipelines.predictor_config import PredictorTrainConfig, build_predictor

    assert count_macs(NoisePredictor()) <= 1.5e9  # issue 10: at most 1.5 GMACs per 256x256 tile
    folder = shipped_weights_dir("vsr-prior-s") / SUBFOLDER
    shipped = NoisePredictor.from_config(NoisePredictor.load_config(folder))
    assert count_macs(shipped) <= 1.5e9
    configs = sorted((Path(__file__).parents[1] / "configs" / "predictor").glob("*.yaml"))
    assert configs
    for path in configs:
        assert count_macs(build_predictor(PredictorTrainConfig.from_yaml(path))) <= 1.5e9, path.name


def test_the_coarse_branch_pads_round_trips_and_stays_batch_independent(tmp_path):
    net = tiny_predictor(deep_blocks=1)
    for p in net.up.parameters():
        torch.nn.init.normal_(p, std=0.1)
    assert net.size_multiple == 4 and tiny_predictor().size_multiple == 2
    x = torch.rand(2, 3, 16, 24) * 2 - 1
    with pytest.raises(ValueError, match="multiples of 4"):
        net(x[..., :14, :], 50)
    net.save_pretrained(tmp_path / SUBFOLDER)
    back = NoisePredictor.from_pretrained(str(tmp_path), subfolder=SUBFOLDER, low_cpu_mem_usage=False)
    assert back.config.deep_blocks == 1 and torch.equal(back(x, 30), net(x, 30))
    # its output moves when only the coarse branch's weights change: the branch is in the path
    with torch.no_grad():
        back.deep[0].conv2.weight.add_(0.1)
    assert not torch.allclose(back(x, 30), net(x, 30))
    src = PredictedNoise(net, scales=[2, 4], levels=[0.02, 0.1])
    frames = torch.rand(3, 3, 30, 26, generator=torch.Generator().manual_seed(0)) * 2 - 1  # padded to 32x28
    together = src(_ctx(frames, [0, 1, 2]))
    assert together.shape == (3, 3, 30, 26)
    for i in range(3):
        assert torch.equal(src(_ctx(frames[i : i + 1], [i])), together[i : i + 1])
    with pytest.raises(ModelError, match="multiples of 4"):
        PredictedNoise(net, tile=1022)


def test_round_trip_through_a_model_folder(tmp_path):
    net = tiny_predictor()
    folder = tmp_path / "model"
    net.save_pretrained(folder / SUBFOLDER)
    back = NoisePredictor.from_pretrained(str(folder), subfolder=SUBFOLDER, low_cpu_mem_usage=False)
    assert back.config.channels == 8 and back.config.pixel_unshuffle == 2
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    assert torch.equal(net(x, 30), back(x, 30))
    # as a noise source, with the card's calibration
    (folder / "model_card.yaml").write_text(yaml.safe_dump({"noise_predictor": {"scales": [2, 4], "t": [0.02, 0.1]}}))
    src = load_noise_predictor(folder)
    assert isinstance(src, PredictedNoise)
    assert src.noise_level(2) == pytest.approx(0.02) and src.noise_level(8) == pytest.approx(0.1)
    assert src.noise_level(2 * math.sqrt(2)) == pytest.approx(0.06)  # halfway in log-scale
    assert load_noise_predictor(tmp_path / "empty") is None



def test_a_scale_conditioned_predictor_starts_as_the_blind_one_and_then_depends_on_the_scale(tmp_path):
    from vsr.models.noise_predictor import scale_features_of

    blind = tiny_predictor(deep_blocks=1)
    for block in [*blind.blocks, *blind.deep]:  # FiLM in the path, so the embedding matters
        torch.nn.init.normal_(block.film.weight, std=0.3)
    torch.manual_seed(1)
    told = NoisePredictor(**{**blind.config, "scale_features": 6})
    missing, unexpected = told.load_state_dict(blind.state_dict(), strict=False)
    assert sorted(missing) == ["scale_emb.bias", "scale_emb.weight"] and not unexpected
    # the new layer is registered last: the blind network's parameters keep their order
    assert [n for n, _ in told.named_parameters()][:-2] == [n for n, _ in blind.named_parameters()]
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3)) * 2 - 1
    for s in (1.5, 2.0, 4.0, 8.0):  # zero-initialised: exactly the blind network's output
        assert torch.equal(told(x, 7, s), blind(x, 7))
    with pytest.raises(ValueError, match="upscaling factor"):
        told(x, 7)
    for bad in (0.0, -2.0, float("nan"), [2.0, 2.0, 2.0]):
        with pytest.raises(ValueError, match="scale"):
            told(x, 7, bad)
    assert torch.equal(blind(x, 7, 3.0), blind(x, 7))  # a blind network ignores it
    with torch.no_grad():
        torch.nn.init.normal_(told.scale_emb.weight, std=0.5)
    two, four = told(x, 7, 2.0), told(x, 7, 4.0)
    assert not torch.allclose(two, four)
    # per-sample factors: each sample gets its own; the features are smooth and distinct in 1-16
    assert torch.equal(told(x, 7, torch.tensor([2.0, 4.0]))[0], two[0])
    assert torch.allclose(told(x, 7, torch.tensor([2.0, 4.0]))[1], four[1], atol=1e-6)
    f = scale_features_of(torch.tensor([1.0, 2.0, 2.001, 16.0]), 8)
    assert f.shape == (4, 8) and torch.allclose(f[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    assert (f[1] - f[2]).abs().max() < 1e-2 and (f[0] - f[3]).abs().max() > 0.5
    told.save_pretrained(tmp_path / SUBFOLDER)
    back = NoisePredictor.from_pretrained(str(tmp_path), subfolder=SUBFOLDER, low_cpu_mem_usage=False)
    assert back.config.scale_features == 6 and torch.equal(back(x, 7, 2.0), two)
    # as a noise source it reads the factor from the context, and refuses a context without one
    src = PredictedNoise(told)
    frames = x[:1]
    with_two = src(dataclasses.replace(_ctx(frames, [0], t=7), scale=2.0))
    assert torch.allclose(with_two, told(frames, 7, 2.0), rtol=1e-5, atol=1e-4)  # NHWC on the CPU: rounding only
    assert not torch.allclose(src(dataclasses.replace(_ctx(frames, [0], t=7), scale=4.0)), with_two, atol=1e-2)
    # a pass at the input's size (--size equal to it, or --fit pad alone) is 1x, and below it counts as 1x
    at_one = src(dataclasses.replace(_ctx(frames, [0], t=7), scale=1.0))
    assert torch.equal(src(dataclasses.replace(_ctx(frames, [0], t=7), scale=0.8)), at_one)
    with pytest.raises(ModelError, match="upscaling factor"):
        src(_ctx(frames, [0], t=7))
    with pytest.raises(ValueError, match="even"):
        NoisePredictor(scale_features=3)



def test_the_engine_passes_its_factor_and_a_same_size_pass_runs(tmp_path):
    """Through `Upscaler` on a tiny prior: the anchored predictor gets the engine's factor, and
    a pass at the input's size (scale 1: --size equal to the input, or --fit pad alone) runs."""
    from tests.conftest import build_tiny_model_dir
    from vsr.config import EngineConfig
    from vsr.engine import Upscaler
    from vsr.models import load_model

    model = load_model(str(build_tiny_model_dir(tmp_path / "prior", prediction_type="v_prediction")))
    net = NoisePredictor(**{**tiny_predictor(beta_schedule="linear").config, "scale_anchors": [2, 4]})
    with torch.no_grad():
        for p in net.anchor_offsets[1].values():
            p.normal_(std=0.2, generator=torch.Generator().manual_seed(6))
        torch.nn.init.normal_(net.tail.weight, std=0.1)
    frames = torch.rand(1, 3, 16, 24, generator=torch.Generator().manual_seed(7))
    seen = []
    noise = PredictedNoise(net, scales=[1, 8], levels=[0.02, 0.02])
    original = noise.detail
    noise.detail = lambda x, t, dtype=torch.float32, scale=None: seen.append(scale) or original(x, t, dtype, scale)
    for scale in (1, 2, 3):
        up = Upscaler(model, EngineConfig().replace(scale=scale, steps=1, device="cpu", dtype="float32"), noise=noise)
        out = up.upscale_tensor(frames)
        assert out.shape == (1, 3, 16 * scale, 24 * scale) and bool(torch.isfinite(out).all())
    assert seen == [1.0, 2.0, 3.0]


def test_anchor_weights_are_hats_in_log_scale():
    from vsr.models.noise_predictor import anchor_weights

    assert anchor_weights(2.0, (2, 4, 8)) == [1.0, 0.0, 0.0]
    assert anchor_weights(2 * math.sqrt(2), (2, 4, 8)) == pytest.approx([0.5, 0.5, 0.0])
    assert anchor_weights(6.0, (2, 4, 8)) == pytest.approx([0.0, 2 - math.log2(3), math.log2(3) - 1])
    assert anchor_weights(1.5, (2, 4, 8)) == [1.0, 0.0, 0.0] and anchor_weights(16.0, (2, 4, 8)) == [0.0, 0.0, 1.0]
    assert anchor_weights(8.0, (2, 4, 8)) == [0.0, 0.0, 1.0]
    for s in (1.2, 2.5, 3.7, 5.0, 7.9, 12.0):
        assert sum(anchor_weights(s, (2, 4, 8))) == pytest.approx(1.0)


def test_an_anchored_predictor_blends_its_weights_by_the_scale(tmp_path):
    plain = tiny_predictor(deep_blocks=1)
    anchored = NoisePredictor(**{**plain.config, "scale_anchors": [2, 4, 8]})
    missing, unexpected = anchored.load_state_dict(plain.state_dict(), strict=False)
    assert missing and all(k.startswith("anchor_offsets.") for k in missing) and not unexpected
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(4)) * 2 - 1
    for s in (1.0, 1.5, 2.0, 3.0, 8.0):  # zero offsets: exactly the plain network
        assert torch.equal(anchored(x, 9, s), plain(x, 9))
    with pytest.raises(ValueError, match="upscaling factor"):
        anchored(x, 9)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for offsets in anchored.anchor_offsets:
            for p in offsets.values():
                p.copy_(0.05 * torch.randn(p.shape, generator=g))

    def plain_with(weights: list[float]) -> NoisePredictor:
        """The plain network with the blend of the anchors' offsets added to its weights."""
        net = tiny_predictor(deep_blocks=1)
        with torch.no_grad():
            for name, p in net.named_parameters():
                for w, offsets in zip(weights, anchored.anchor_offsets):
                    if name.replace(".", "-") in offsets:
                        p.add_(w * offsets[name.replace(".", "-")])
        return net

    at = {s: anchored.detail(x, 9, s) for s in (2.0, 2 * math.sqrt(2), 8.0)}
    assert torch.allclose(at[2.0], plain_with([1, 0, 0]).detail(x, 9), atol=1e-6)
    assert torch.allclose(at[2 * math.sqrt(2)], plain_with([0.5, 0.5, 0]).detail(x, 9), atol=1e-6)
    assert torch.allclose(at[8.0], plain_with([0, 0, 1]).detail(x, 9), atol=1e-6)
    assert not torch.allclose(at[2.0], at[8.0], atol=1e-3)
    # for inference the blend is folded once into a plain network with the same output
    folded = anchored.at_scale(2 * math.sqrt(2))
    assert not folded.config.scale_anchors and not hasattr(folded, "anchor_offsets")
    assert torch.equal(folded.detail(x, 9), at[2 * math.sqrt(2)]) and plain.at_scale(3.0) is plain
    # a batch of mixed factors: each sample as if alone; gradients reach only the anchors in use
    mixed = anchored.detail(x, 9, torch.tensor([2.0, 8.0, 2.0]))
    assert torch.allclose(mixed[[0, 2]], at[2.0][[0, 2]], atol=1e-6) and torch.allclose(mixed[1], at[8.0][1], atol=1e-6)
    anchored.zero_grad()
    anchored(x, 9, 2.0).square().mean().backward()
    assert anchored.anchor_offsets[0]["head-weight"].grad.abs().sum() > 0
    assert anchored.anchor_offsets[1]["head-weight"].grad is None and anchored.head.weight.grad is not None
    # the budget is the plain network's; the folder round-trips; as a noise source it stays batch-independent
    assert count_macs(anchored) == count_macs(plain)
    anchored.save_pretrained(tmp_path / SUBFOLDER)
    back = NoisePredictor.from_pretrained(str(tmp_path), subfolder=SUBFOLDER, low_cpu_mem_usage=False)
    assert list(back.config.scale_anchors) == [2, 4, 8] and torch.equal(back.detail(x, 9, 3.0), anchored.detail(x, 9, 3.0))
    src = PredictedNoise(back, scales=[2, 4], levels=[0.02, 0.1])
    frames = torch.rand(3, 3, 30, 26, generator=g) * 2 - 1
    together = src(dataclasses.replace(_ctx(frames, [0, 1, 2]), scale=3.0))
    for i in range(3):
        assert torch.equal(src(dataclasses.replace(_ctx(frames[i : i + 1], [i]), scale=3.0)), together[i : i + 1])
    assert [k[2] for k in src._nets] == [3.0]  # one folded network for the scale, reused for every frame
    with pytest.raises(ModelError, match="upscaling factor"):
        src(_ctx(frames, [0, 1, 2]))
    for bad in ([2.0], [4.0, 2.0], [1.0, 2.0], [2.0, 2.0]):
        with pytest.raises(ValueError, match="scale_anchors"):
            NoisePredictor(scale_anchors=bad)


# ----------------------------------------------------------------------------- the source


def _ctx(frames: torch.Tensor, indices, t: int = 50, ac=None) -> NoiseContext:
    ac = ac if ac is not None else tiny_predictor().alphas_cumprod
    low = torch.nn.functional.interpolate(frames, scale_factor=0.5, mode="area")
    return NoiseContext(tuple(indices), low, frames, t, ac)


def test_predicted_noise_is_deterministic_and_independent_of_the_batch():
    src = PredictedNoise(tiny_predictor(), scales=[2, 4], levels=[0.02, 0.1])
    g = torch.Generator().manual_seed(0)
    frames = torch.rand(3, 3, 30, 26, generator=g) * 2 - 1  # not a multiple of the unshuffle: padded
    together = src(_ctx(frames, [0, 1, 2]))
    assert together.shape == (3, 3, 30, 26) and together.dtype == torch.float32
    for i in range(3):
        assert torch.equal(src(_ctx(frames[i : i + 1], [i])), together[i : i + 1])
    assert torch.equal(src(_ctx(frames[[2, 0]], [2, 0])), together[[2, 0]])
    assert torch.equal(src(_ctx(frames, [0, 1, 2])), together)
    # the same picture gets the same noise whatever its frame index; another picture, other noise
    assert torch.equal(src(_ctx(frames[:1], [7])), together[:1])
    assert not torch.equal(together[0], together[1])


def test_tiled_prediction_of_large_frames_matches_in_the_interior():
    src = PredictedNoise(tiny_predictor(), max_pixels=0, tile=32, overlap=8)
    whole = PredictedNoise(tiny_predictor())
    frames = torch.rand(1, 3, 64, 80, generator=torch.Generator().manual_seed(1)) * 2 - 1
    a, b = src(_ctx(frames, [0])), whole(_ctx(frames, [0]))
    assert a.shape == b.shape
    # 4 convs at half resolution see 9 px around: where one tile alone covers a pixel
    # (rows/columns < 16 lie in the first tile only) and its edges are that far, both agree
    assert torch.allclose(a[..., 10:14, 10:14], b[..., 10:14, 10:14], atol=1e-5)
    assert not torch.allclose(a, b, atol=1e-5)  # elsewhere the blend of tiles differs a little


def test_mix_adds_the_base_field_and_schedules_must_match():
    net = tiny_predictor()
    frames = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
    plain = PredictedNoise(net)(_ctx(frames, [0, 1]))
    base = SharedNoise(5)
    mixed = PredictedNoise(net, mix=0.5, base=base)(_ctx(frames, [0, 1]))
    assert torch.allclose(mixed - plain, 0.5 * base.field(16, 16)[None].expand(2, -1, -1, -1), atol=1e-5)
    with pytest.raises(ModelError, match="base"):
        PredictedNoise(net, mix=0.5)
    linear = tiny_predictor(beta_schedule="linear").alphas_cumprod
    with pytest.raises(ModelError, match="schedule"):
        PredictedNoise(net)(_ctx(frames, [0, 1], ac=linear))


def test_pickles_as_its_folder(tmp_path):
    import pickle

    net = tiny_predictor()
    net.save_pretrained(tmp_path / SUBFOLDER)
    src = load_noise_predictor(tmp_path)
    frames = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(3)) * 2 - 1
    blob = pickle.dumps(src)
    assert len(blob) < 2000  # the path, not the weights
    assert torch.equal(pickle.loads(blob)(_ctx(frames, [0])), src(_ctx(frames, [0])))


# ----------------------------------------------------------------------------- degradations


@pytest.mark.parametrize(
    "probs",
    [
        dict(blur_prob=1.0, area_prob=1.0, noise_prob=1.0, jpeg_prob=1.0, h264_prob=0.0),
        dict(blur_prob=0.0, area_prob=0.0, noise_prob=0.0, jpeg_prob=0.0, h264_prob=1.0),
        dict(blur_prob=0.0, area_prob=0.0, noise_prob=0.0, jpeg_prob=0.0, h264_prob=0.0),
    ],
    ids=["blur-area-noise-jpeg", "bicubic-h264", "bicubic-8bit"],
)
def test_degradations_are_pure_functions_of_the_generator(tmp_path, probs):
    cfg = tiny_cfg(tmp_path, **probs)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 48), torch.linspace(0, 1, 48), indexing="ij")
    hr = torch.stack([0.2 + 0.6 * xx, 0.5 + 0.3 * torch.sin(6 * yy), 0.3 + 0.4 * xx * yy])  # smooth
    runs = [tnp.degrade(hr, (16, 16), cfg, torch.Generator().manual_seed(s)) for s in (0, 0, 1)]
    assert runs[0].shape == (3, 16, 16) and 0 <= runs[0].min() and runs[0].max() <= 1
    assert torch.equal(runs[0], runs[1])
    assert torch.equal(runs[0] * 255, (runs[0] * 255).round())  # 8-bit levels, as decoded video
    # close to a plain bicubic downscale (mild degradations)
    ref = tnp.resample(hr[None], (16, 16))[0]
    assert (runs[0] - ref).abs().mean() < 0.03
    if probs["noise_prob"]:
        assert not torch.equal(runs[0], runs[2])  # another seed, other blur, noise and quality


def test_batches_are_pure_functions_of_the_generator(tmp_path):
    cfg = tiny_cfg(tmp_path, batch_size=3)
    crops = textured_crops()
    a = tnp.make_batch(crops, cfg, torch.Generator().manual_seed(4))
    b = tnp.make_batch(crops, cfg, torch.Generator().manual_seed(4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    hr, low = a
    assert hr.shape == (3, 3, 32, 32) and low.shape[-1] % 2 == 0 and 8 <= low.shape[-1] <= 16


def test_the_pack_has_its_own_seed(tmp_path, photos):
    """pack_seed fixes which crops are packed, whatever the training seed (a run can train on
    another run's crops with its own random stream)."""
    from PIL import Image

    train = tmp_path / "corpus" / "images" / "train"
    train.mkdir(parents=True)
    for name in ("astronaut", "chelsea"):
        Image.fromarray(photos[name]).save(train / f"{name}.png")

    def pack(run: str, **kw) -> np.ndarray:
        cfg = tiny_cfg(tmp_path / run, corpus=str(tmp_path / "corpus"), pack_count=6, **kw)
        return tnp.load_or_pack_crops(cfg)

    a, b = pack("a", seed=1, pack_seed=7), pack("b", seed=2, pack_seed=7)
    assert a.shape == (6, 3, 40, 40) and np.array_equal(a, b)
    assert not np.array_equal(pack("c", seed=1), pack("d", seed=2))  # no pack_seed: the run's seed


# ----------------------------------------------------------------------------- training


def test_a_tiny_predictor_lowers_its_loss(tmp_path):
    cfg = tiny_cfg(tmp_path / "run", steps=40, warmup_steps=1, lr=5e-3)
    trainer = tnp.PredictorTrainer(cfg, tiny_prior(), textured_crops(), None)
    hr, low = tnp.make_batch(trainer.crops, cfg, torch.Generator().manual_seed(9))

    def fixed_loss() -> float:
        with torch.no_grad():
            return float(trainer.loss(hr, low, 60, 2)[0])

    before = fixed_loss()
    for _ in range(30):
        trainer.net.train()
        loss, _ = trainer.loss(hr, low, 60, 2)
        trainer.opt.zero_grad()
        loss.backward()
        trainer.opt.step()
    after = fixed_loss()
    assert after < 0.9 * before
    with torch.no_grad():  # the warm-start objective (prior as identity) is defined on the same batch
        assert math.isfinite(float(trainer.loss(hr, low, 60, 2, direct=True)[0]))
    # gradients reached the predictor only: the prior is frozen
    assert all(p.grad is None for p in trainer.prior.net.parameters())


def _params(trainer) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in trainer.net.parameters()])


def test_training_resumes_bit_for_bit(tmp_path):
    crops, prior = textured_crops(), tiny_prior()
    kw = dict(progress=False, prior=prior, crops=crops)
    straight = tnp.train(tiny_cfg(tmp_path / "a", direct_steps=1), **kw)  # a warm-start step, then end to end
    tnp.train(tiny_cfg(tmp_path / "b", direct_steps=1), stop_at=2, **kw)
    # a weights-only file (what predictor-average writes) in the run's place: one line, not a KeyError
    from vsr.errors import InputError

    torch.save({k: v for k, v in torch.load(tmp_path / "b" / "last.pt", weights_only=True).items() if k != "opt"},
               tmp_path / "c.pt")
    (tmp_path / "c").mkdir()
    (tmp_path / "c.pt").rename(tmp_path / "c" / "last.pt")
    with pytest.raises(InputError, match="not a run's own checkpoint"):
        tnp.train(tiny_cfg(tmp_path / "c", direct_steps=1), resume=True, **kw)
    # a prior with other weights (e.g. `prior: null` after a new release) is not the run's: refused
    with pytest.raises(ConfigError, match="trained against a prior with other weights"):
        tnp.train(tiny_cfg(tmp_path / "b", direct_steps=1), resume=True, **{**kw, "prior": tiny_prior(seed=1)})
    resumed = tnp.train(tiny_cfg(tmp_path / "b", direct_steps=1), resume=True, **kw)
    assert resumed.step == straight.step == 4
    assert torch.equal(_params(straight), _params(resumed))
    assert torch.equal(straight.gen.get_state(), resumed.gen.get_state())
    assert torch.equal(
        torch.cat([p.flatten() for p in straight.ema_net().parameters()]),
        torch.cat([p.flatten() for p in resumed.ema_net().parameters()]),
    )


def test_batches_made_by_workers_resume_bit_for_bit_whatever_their_number(tmp_path):
    """data_workers > 0: batch k is a function of (seed, k), so one worker or two and a
    resumed run train on the same batches (what a GPU run needs: the CPU makes the data)."""
    crops, prior = textured_crops(), tiny_prior()
    kw = dict(progress=False, prior=prior, crops=crops)
    one = tnp.train(tiny_cfg(tmp_path / "a", data_workers=1), **kw)
    tnp.train(tiny_cfg(tmp_path / "b", data_workers=2), stop_at=2, **kw)
    resumed = tnp.train(tiny_cfg(tmp_path / "b", data_workers=2), resume=True, **kw)
    assert resumed.step == one.step == 4
    assert torch.equal(_params(one), _params(resumed))
    # the batches differ from step to step (the stream is not one seed over again)
    cfg = tiny_cfg(tmp_path / "c")
    b0, b1 = tnp.StepBatches(crops, cfg)[0], tnp.StepBatches(crops, cfg)[1]
    assert not torch.equal(b0[0], b1[0])
    assert torch.equal(b0[1], tnp.StepBatches(crops, cfg)[0][1])
    in_process = tnp.train(tiny_cfg(tmp_path / "d"), **kw)  # 0 workers: the run's one generator, as before
    assert not torch.equal(_params(in_process), _params(one))
    with pytest.raises(ConfigError, match="data_workers"):
        tiny_cfg(tmp_path / "e", data_workers=-1)


def test_shifted_batches_pair_each_window_with_the_next_frame_of_a_pan(tmp_path):
    """shift_weight > 0: the second half of a batch is the first half's windows moved by
    (dy, dx), degraded with the same draws; the loss adds how much the two outputs differ
    where they show the same pixels (0 for the truth)."""
    cfg = tiny_cfg(tmp_path, batch_size=3, shift_weight=1.0, shift_max=2, jpeg_prob=0.0, h264_prob=0.0,
                   noise_prob=0.0, blur_prob=0.0, area_prob=1.0, scale_min=2.0, scale_max=2.0)
    crops = textured_crops()
    hr, low, (dy, dx) = tnp.make_batch(crops, cfg, torch.Generator().manual_seed(4))
    assert hr.shape == (6, 3, 32, 32) and low.shape == (6, 3, 16, 16) and 0 < dy + dx and max(dy, dx) <= 2
    assert torch.equal(hr[3:, :, : 32 - dy, : 32 - dx], hr[:3, :, dy:, dx:])
    assert float(tnp.shift_difference(hr, dy, dx)) == 0.0
    assert float(tnp.shift_difference(torch.rand(6, 3, 32, 32), dy, dx)) > 0.1
    if dy % 2 == 0 and dx % 2 == 0:  # area downscaling by 2 of a window moved by an even step
        assert torch.allclose(low[3:, :, : 16 - dy // 2, : 16 - dx // 2], low[:3, :, dy // 2 :, dx // 2 :], atol=1 / 255)
    # it trains, in this process or from workers, and the term is reported
    kw = dict(progress=False, prior=tiny_prior(), crops=crops)
    here = tnp.train(tiny_cfg(tmp_path / "a", shift_weight=1.0, direct_steps=4), **kw)
    workers = tnp.train(tiny_cfg(tmp_path / "b", shift_weight=1.0, direct_steps=4, data_workers=1), **kw)
    assert here.step == workers.step == 4
    info = tnp.PredictorTrainer(tiny_cfg(tmp_path / "d", shift_weight=1.0), tiny_prior(), crops, None).train_step()
    assert info["shift"] > 0
    with pytest.raises(ConfigError, match="shift_max"):
        tiny_cfg(tmp_path / "c", shift_weight=1.0, shift_max=0)


def test_the_travel_pack_decodes_to_the_crops_within_jpeg_error(tmp_path, capsys):
    from vsr.cli import main

    crops = textured_crops(n=5)
    pack = tnp.jpeg_pack(crops, quality=98)
    np.savez(tmp_path / "pack.npz", **pack)
    with np.load(tmp_path / "pack.npz") as z:
        back = tnp.crops_from_pack(z)
    assert back.shape == crops.shape and back.dtype == np.uint8
    err = back.astype(float) - crops
    assert 40 < 10 * np.log10(255**2 / np.mean(err**2)) < 60  # q98 4:4:4: about 48 dB, not bit-exact
    # a run given the pack as crops_file trains on it
    cfg = tiny_cfg(tmp_path / "run", crops_file=str(tmp_path / "pack.npz"))
    assert np.array_equal(tnp.load_or_pack_crops(cfg), back)
    # the CLI packs a run's crops.npz
    run = tmp_path / "src"
    run.mkdir()
    np.savez_compressed(run / "crops.npz", crops=crops)
    (tmp_path / "src.yaml").write_text(yaml.safe_dump(tiny_cfg(run).to_dict()))
    assert main(["train", "predictor-pack", "--config", str(tmp_path / "src.yaml"), "--out", str(tmp_path / "o.npz")]) == 0
    assert "5 crops" in capsys.readouterr().out
    with np.load(tmp_path / "o.npz") as z:
        assert np.array_equal(tnp.crops_from_pack(z), back)


def test_bad_training_files_and_values_are_one_line_errors(tmp_path, capsys):
    from vsr.cli import main
    from vsr.errors import InputError, UsageError

    crops = textured_crops(n=4)
    # a crops_file that is missing, not a pack, damaged, or of crops too small for the run
    with pytest.raises(InputError, match="crops_file not found"):
        tnp.load_or_pack_crops(tiny_cfg(tmp_path / "a", crops_file=str(tmp_path / "typo.npz")))
    assert not (tmp_path / "typo.npz").exists()  # never packed fresh crops in its place
    (tmp_path / "text.npz").write_text("not a pack")
    pack = tnp.jpeg_pack(crops)
    np.savez(tmp_path / "cut.npz", **{**pack, "jpeg": pack["jpeg"][: len(pack["jpeg"]) // 2]})
    np.savez(tmp_path / "small.npz", crops=crops[:, :, :24, :24])
    np.savez(tmp_path / "empty.npz", crops=crops[:0])
    np.savez(tmp_path / "float.npz", crops=crops.astype(np.float64))
    np.savez(tmp_path / "other.npz", pictures=crops)
    for name, match in (("text", "not an .npz"), ("cut", "damaged pack"), ("small", "S >= 32"), ("empty", "N >= 1"),
                        ("float", "float64"), ("other", "cannot read")):
        with pytest.raises(InputError, match=match):
            tnp.load_or_pack_crops(tiny_cfg(tmp_path / "a", crops_file=str(tmp_path / f"{name}.npz")))
    # config values of the wrong type name the key; a float written as 1e9 reads as a number
    base = tiny_cfg(tmp_path).to_dict()
    for key, value, match in (("data_workers", "two", "an integer"), ("data_workers", True, "an integer"),
                              ("shift_weight", "abc", "a number"), ("blur_sigma", [1], "a list of 2")):
        with pytest.raises(ConfigError, match=f"{key}: expected {match}"):
            tnp.PredictorTrainConfig.from_dict({**base, key: value})
    assert tnp.PredictorTrainConfig.from_dict({**base, "shift_weight": "1e9"}).shift_weight == 1e9
    # the shift fields are checked only when the term is on (crop == pack_size is fine without it)
    assert tiny_cfg(tmp_path, crop=40, pack_size=40, val_crop=40).shift_max == 2
    with pytest.raises(ConfigError, match="shift_block"):
        tiny_cfg(tmp_path, shift_weight=1.0, shift_block=100)
    # right type, impossible value: one line naming the key, before any run folder exists
    for key, value in (("lr", -1.0), ("lr", float("nan")), ("ema_decay", 2.0), ("checkpoint_every", 0),
                       ("num_threads", -1), ("pixel_unshuffle", 0), ("channels", 0), ("crop", 0),
                       ("jpeg_quality", (95, 50)), ("h264_crf", (60, 70)), ("blur_sigma", (0.0, 0.0)),
                       ("consistency", -1), ("jpeg_prob", 0.8), ("device", "tpu")):
        with pytest.raises(ConfigError, match=key):
            tnp.train(tiny_cfg(tmp_path / "refused", **{key: value}), progress=False, prior=tiny_prior(), crops=crops)
    with pytest.raises(ConfigError, match="t_max"):
        tnp.train(tiny_cfg(tmp_path / "refused", t_max=2000), progress=False, prior=tiny_prior(), crops=crops)
    with pytest.raises(InputError, match="checkpoint not found"):
        tnp.train(tiny_cfg(tmp_path / "refused", init_checkpoint=str(tmp_path / "nope.pt")), progress=False,
                  prior=tiny_prior(), crops=crops)
    assert not (tmp_path / "refused").exists()
    # predictor-pack: a folder as --out is refused before any work, and no partial file is left
    run = tmp_path / "src"
    run.mkdir()
    np.savez_compressed(run / "crops.npz", crops=crops)
    (tmp_path / "src.yaml").write_text(yaml.safe_dump(tiny_cfg(run).to_dict()))
    for out in (str(tmp_path), str(tmp_path / "nowhere" / "x.npz"), ""):
        assert main(["train", "predictor-pack", "--config", str(tmp_path / "src.yaml"), "--out", out]) == UsageError.exit_code
    assert main(["train", "predictor-pack", "--config", str(tmp_path / "src.yaml"), "--out", str(tmp_path / "p.npz"),
                 "--quality", "101"]) == UsageError.exit_code
    err = capsys.readouterr().err
    assert err.count("\n") == 4 and "Traceback" not in err and "101" in err
    assert not list(tmp_path.glob("*.tmp.npz"))
    # the pack never replaces the crops it is made from
    (tmp_path / "own.yaml").write_text(yaml.safe_dump(tiny_cfg(run, crops_file=str(run / "crops.npz")).to_dict()))
    before = (run / "crops.npz").read_bytes()
    assert main(["train", "predictor-pack", "--config", str(tmp_path / "own.yaml"), "--out",
                 str(run / "crops.npz")]) == UsageError.exit_code
    assert (run / "crops.npz").read_bytes() == before


def test_a_warm_start_begins_from_the_other_runs_ema_weights_with_a_fresh_optimiser(tmp_path):
    crops, prior = textured_crops(), tiny_prior()
    kw = dict(progress=False, prior=prior, crops=crops)
    first = tnp.train(tiny_cfg(tmp_path / "a"), **kw)
    ema = torch.cat([p.flatten() for p in first.ema_net().parameters()])
    assert not torch.equal(ema, _params(first))  # the EMA lags: what must carry over is the EMA
    started = tnp.train(tiny_cfg(tmp_path / "b", init_checkpoint=str(tmp_path / "a" / "last.pt")), stop_at=0, **kw)
    assert started.step == 0 and not started.opt.state
    assert torch.equal(_params(started), ema)
    assert torch.equal(torch.cat([p.flatten() for p in started.ema_net().parameters()]), ema)
    # --resume of the new run takes its own checkpoint, not the warm start's
    tnp.train(tiny_cfg(tmp_path / "b", init_checkpoint=str(tmp_path / "a" / "last.pt")), stop_at=2, resume=True, **kw)
    resumed = tnp.train(tiny_cfg(tmp_path / "b", init_checkpoint=str(tmp_path / "a" / "last.pt")), resume=True, **kw)
    assert resumed.step == 4 and not torch.equal(_params(resumed), ema)
    # a blind run warm-starts one told the scale: same weights, a zero scale layer, same output
    told = tnp.train(tiny_cfg(tmp_path / "c", init_checkpoint=str(tmp_path / "a" / "last.pt"), scale_features=4),
                     stop_at=0, **kw)
    assert torch.equal(_params(told)[: ema.numel()], ema) and not _params(told)[ema.numel():].any()
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    assert torch.equal(told.ema_net()(x, 30, 2.5), first.ema_net()(x, 30))
    anchored = tnp.train(tiny_cfg(tmp_path / "e", init_checkpoint=str(tmp_path / "a" / "last.pt"),
                                  scale_anchors=(2.0, 4.0)), stop_at=0, **kw)
    assert torch.equal(anchored.ema_net()(x, 30, 3.0), first.ema_net()(x, 30))
    # but not another architecture
    with pytest.raises(ConfigError, match="init_checkpoint"):
        tnp.train(tiny_cfg(tmp_path / "d", init_checkpoint=str(tmp_path / "a" / "last.pt"), channels=6),
                  stop_at=0, **kw)


def test_validation_and_export(tmp_path):
    from tests.conftest import build_tiny_model_dir

    prior_dir = build_tiny_model_dir(tmp_path / "prior", prediction_type="v_prediction")
    from vsr.models import load_model

    prior = load_model(str(prior_dir))
    cfg = tiny_cfg(tmp_path / "run", prior=str(prior_dir), steps=2, val_every=2, val_t=(0.05,), val_scales=(2.0,))
    val = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    trainer = tnp.train(cfg, progress=False, prior=prior, crops=textured_crops(), val=val)
    assert [h["step"] for h in trainer.history] == [0, 2]
    assert {"bicubic", "bicubic+bp", "t=0.05"} <= set(trainer.history[0]["2x"])
    out = tnp.export(tmp_path / "run" / "last.pt", tmp_path / "exported", mix=0.0)
    card = yaml.safe_load((out / "model_card.yaml").read_text())
    assert card["noise_predictor"]["architecture"]["pixel_unshuffle"] == 2
    src = load_noise_predictor(load_model(str(out)))
    assert isinstance(src, PredictedNoise) and src.noise_level(2) is None  # not calibrated: the PRF decides
    assert torch.equal(torch.cat([p.flatten() for p in src.predictor.parameters()]),
                       torch.cat([p.flatten() for p in trainer.ema_net().parameters()]))
    # calibrated for one step on held-out photographs: the card records the start t per
    # scale and the step count, which `steps: auto` then runs
    from PIL import Image

    val_dir = tmp_path / "corpus" / "images" / "val"
    val_dir.mkdir(parents=True)
    for i, crop in enumerate(textured_crops(n=2, size=48, seed=3)):
        Image.fromarray(crop.transpose(1, 2, 0)).save(val_dir / f"{i}.png")
    # a GPU run's checkpoint (its config says cuda) calibrates on the machine that exports it
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    state["config"]["device"] = "cuda"
    torch.save(state, tmp_path / "run" / "last.pt")
    out = tnp.export(tmp_path / "run" / "last.pt", tmp_path / "calibrated", do_calibrate=True,
                     corpus=str(tmp_path / "corpus"), scales=(2.0, 4.0), grid=(0.02, 0.1), steps=1, consistency=3)
    entry = yaml.safe_load((out / "model_card.yaml").read_text())["noise_predictor"]
    assert entry["steps"] == 1 and entry["calibration"]["steps"] == 1 and entry["scales"] == [2.0, 4.0]
    assert entry["consistency"] == 3 and entry["calibration"]["consistency"] == 3
    assert set(entry["t"]) <= {0.02, 0.1}
    from vsr.engine import Upscaler

    up = Upscaler.from_pretrained(str(out), scale=2, dtype="float32")
    assert up.steps == 1 and up.timesteps_for(2.0) == (round(entry["t"][0] * 1000),)
    # `consistency: auto` runs the passes the start was calibrated with; an explicit count
    # wins, and without the predictor it is plain Diff-SR's one pass
    assert up.consistency == 3 and up.with_config(consistency=1).consistency == 1
    assert up.with_config(noise_predictor="off").consistency == 1
    frames = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(1))
    auto = up.upscale_tensor(frames)
    assert torch.equal(auto, up.with_config(consistency=3).upscale_tensor(frames))
    assert not torch.equal(auto, up.with_config(consistency=1).upscale_tensor(frames))


def test_card_entries_and_export_flags_are_checked(tmp_path, capsys):
    from vsr.errors import UsageError

    net = NoisePredictor(channels=8, num_blocks=1, emb_dim=8)
    for bad in ("four", 4.0, True, 11, [4]):  # one line naming the key, whatever the YAML held
        with pytest.raises(ModelError, match="consistency must be an integer in 0..10"):
            PredictedNoise(net, scales=[2], levels=[0.01], consistency=bad)
    with pytest.raises(ModelError, match="steps must be an integer"):
        PredictedNoise(net, scales=[2], levels=[0.01], steps=1.0)
    # --steps/--consistency are what --calibrate measures with: alone they would be dropped
    from vsr.cli import main

    ckpt = tmp_path / "last.pt"
    ckpt.write_bytes(b"")
    export = ["train", "predictor-export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "o")]
    assert main([*export, "--consistency", "4"]) == UsageError.exit_code
    assert "--consistency needs --calibrate" in capsys.readouterr().err
    assert main([*export, "--steps", "1", "--consistency", "4"]) == UsageError.exit_code
    assert "--steps and --consistency need --calibrate" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_an_export_appears_complete_or_not_at_all(tmp_path, capsys):
    from tests.conftest import build_tiny_model_dir
    from vsr.cli import main
    import shutil

    from vsr.errors import ConfigError, OutputError, UsageError

    prior_dir = build_tiny_model_dir(tmp_path / "prior", prediction_type="v_prediction")
    tnp.train(tiny_cfg(tmp_path / "run", prior=str(prior_dir)), progress=False, crops=textured_crops())
    export = ["train", "predictor-export", "--checkpoint", str(tmp_path / "run" / "last.pt")]
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    (tmp_path / "busy" / "noise_predictor").mkdir()  # looks like an export, but holds the user's file too
    (tmp_path / "link").symlink_to(tmp_path / "busy")
    for out, more in (("", []), (str(tmp_path / "a-file"), []), (str(tmp_path / "busy"), []),
                      (str(tmp_path / "link"), []), (str(tmp_path / "a-file" / "m"), []),
                      (str(tmp_path / "o"), ["--scales", "nan"]), (str(tmp_path / "o"), ["--mix", "nan"]),
                      (str(tmp_path / "o"), ["--scales", "1"]), (str(tmp_path / "o"), ["--grid", "2"]),
                      (str(tmp_path / "o"), ["--mix", "-1"])):
        assert main([*export, "--out", out, *more]) == UsageError.exit_code, (out, more)
    from vsr.errors import InputError

    assert main([*export, "--out", str(tmp_path / "o"), "--calibrate", "--corpus", "/nope"]) == InputError.exit_code
    assert "no images/val folder" in capsys.readouterr().err and not (tmp_path / "o").exists()
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine" and not list(Path.cwd().glob("model_card.yaml"))
    # a failure half-way (calibrating on a device this machine lacks) leaves no folder behind
    val = tmp_path / "corpus" / "images" / "val"
    val.mkdir(parents=True)
    from PIL import Image

    Image.fromarray(textured_crops(n=1, size=48)[0].transpose(1, 2, 0)).save(val / "0.png")
    lacking = "mps" if not torch.cuda.is_available() else "nope"
    code = main([*export, "--out", str(tmp_path / "o"), "--calibrate", "--corpus", str(tmp_path / "corpus"),
                 "--scales", "2", "--grid", "0.02", "--device", lacking])
    assert code in (ConfigError.exit_code, UsageError.exit_code)
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.partial").exists()
    # a folder of the user's where the partial export would go is never removed
    (tmp_path / "o.partial").mkdir()
    (tmp_path / "o.partial" / "mine.txt").write_text("keep")
    assert main([*export, "--out", str(tmp_path / "o")]) == OutputError.exit_code
    assert (tmp_path / "o.partial" / "mine.txt").read_text() == "keep"
    shutil.rmtree(tmp_path / "o.partial")
    # a complete one, and again over it (an earlier export is replaced whole)
    assert main([*export, "--out", str(tmp_path / "o")]) == 0
    assert main([*export, "--out", str(tmp_path / "o")]) == 0
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["model_card.yaml", "noise_predictor", "scheduler", "unet"]
    capsys.readouterr()


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def test_averaged_checkpoints_hold_the_mean_weights_and_export(tmp_path, capsys):
    """predictor-average: a model soup of two runs of one architecture, exportable; other
    architectures, one checkpoint, or writing over an input are one-line errors."""
    from tests.conftest import build_tiny_model_dir
    from vsr.cli import main
    from vsr.errors import InputError, OutputError, UsageError

    prior_dir = build_tiny_model_dir(tmp_path / "prior", prediction_type="v_prediction")
    kw = dict(progress=False, crops=textured_crops())
    a = tnp.train(tiny_cfg(tmp_path / "a", prior=str(prior_dir)), **kw)
    b = tnp.train(tiny_cfg(tmp_path / "b", prior=str(prior_dir), seed=7), **kw)
    ca, cb, soup = tmp_path / "a" / "last.pt", tmp_path / "b" / "last.pt", tmp_path / "soup.pt"
    assert main(["train", "predictor-average", str(ca), str(cb), "--out", str(soup)]) == 0
    mean = [(x + y) / 2 for x, y in zip(a.ema_net().parameters(), b.ema_net().parameters())]
    assert not torch.equal(mean[0], next(a.ema_net().parameters()))  # the two runs differ
    net, state, _ = tnp._checkpoint_net(soup)
    for got, want in zip(net.parameters(), mean):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-7)
    assert state["averaged_from"] == [str(ca), str(cb)] and "opt" not in state
    assert main(["train", "predictor-export", "--checkpoint", str(soup), "--out", str(tmp_path / "m")]) == 0
    assert "not calibrated" in capsys.readouterr().err
    weights = tmp_path / "m" / SUBFOLDER / "diffusion_pytorch_model.safetensors"
    assert oct(weights.stat().st_mode & 0o777) == oct(0o644)  # readable as vsr's other files, not 0600
    card = yaml.safe_load((tmp_path / "m" / "model_card.yaml").read_text())
    assert card["noise_predictor"]["training"]["averaged_from"] == [str(ca), str(cb)]
    capsys.readouterr()
    wide = tnp.train(tiny_cfg(tmp_path / "w", prior=str(prior_dir), channels=12), **kw)
    assert wide.step == 4
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    for args, code, words in (
        ([str(ca), str(tmp_path / "w" / "last.pt")], InputError.exit_code, "another architecture"),
        ([str(ca)], UsageError.exit_code, "at least 2"),
        ([str(ca), str(tmp_path / "a" / ".." / "a" / "last.pt")], UsageError.exit_code, "given twice"),
        ([str(ca), str(tmp_path / "notes.txt")], InputError.exit_code, "not a noise predictor checkpoint"),
        ([str(ca), str(tmp_path / "a")], InputError.exit_code, "is a folder"),
        ([str(ca), str(cb), "--out", str(ca)], UsageError.exit_code, "one of the checkpoints"),
        ([str(ca), str(cb), "--out", str(soup)], OutputError.exit_code, "--overwrite"),
        ([str(ca), str(cb), "--out", str(tmp_path / "nope" / "x.pt")], OutputError.exit_code, "does not exist"),
    ):
        out = [] if "--out" in args else ["--out", str(tmp_path / "x.pt")]
        assert main(["train", "predictor-average", *args, *out]) == code, args
        err = capsys.readouterr().err
        assert words in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x.pt").exists()
    assert main(["train", "predictor-average", str(cb), str(ca), "--out", str(soup), "--overwrite"]) == 0
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left
    assert oct(soup.stat().st_mode & 0o777) == oct(0o644 & ~_umask())
    # a place the export cannot write (under a file: the OS refuses, as for a read-only or full disk)
    with pytest.raises(OutputError, match="cannot write"):
        tnp.export(soup, tmp_path / "notes.txt" / "m")
    assert (tmp_path / "notes.txt").read_text() == "not a checkpoint"


def test_one_anchor_can_take_another_runs_weights_and_export(tmp_path, capsys):
    """predictor-set-anchor: at that factor the path runs the donor's weights exactly, the other
    anchors are untouched, the card says where they came from; wrong anchors, donors of
    another shape and writing over an input are one-line errors."""
    from tests.conftest import build_tiny_model_dir
    from vsr.cli import main
    from vsr.errors import InputError, UsageError

    prior_dir = build_tiny_model_dir(tmp_path / "prior", prediction_type="v_prediction")
    kw = dict(progress=False, crops=textured_crops())
    tnp.train(tiny_cfg(tmp_path / "plain", prior=str(prior_dir), seed=3), **kw)
    tnp.train(tiny_cfg(tmp_path / "anch", prior=str(prior_dir), scale_anchors=(2.0, 4.0), scale_min=2.0,
                       scale_max=4.0, lr=3e-2), **kw)
    plain, anch, out = (tmp_path / "plain" / "last.pt", tmp_path / "anch" / "last.pt", tmp_path / "set.pt")
    assert main(["train", "predictor-set-anchor", str(anch), "--anchor", "4", "--from", str(plain),
                 "--out", str(out)]) == 0
    donor, _, _ = tnp._checkpoint_net(plain)
    before, _, _ = tnp._checkpoint_net(anch)
    after, state, _ = tnp._checkpoint_net(out)
    donor_w = dict(donor.named_parameters())
    for name, p in after._body.named_parameters():
        key = name.replace(".", "-")
        torch.testing.assert_close(p + after.anchor_offsets[1][key], donor_w[name], rtol=0, atol=1e-7)
        assert torch.equal(after.anchor_offsets[0][key], before.anchor_offsets[0][key])
    assert not torch.equal(before.anchor_offsets[1]["head-weight"], after.anchor_offsets[1]["head-weight"])
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    assert torch.equal(after.detail(x, 30, 2.0), before.detail(x, 30, 2.0))  # 2x: untouched
    assert state["anchor_from"] == {"4": str(plain)} and "opt" not in state
    assert main(["train", "predictor-export", "--checkpoint", str(out), "--out", str(tmp_path / "m")]) == 0
    card = yaml.safe_load((tmp_path / "m" / "model_card.yaml").read_text())["noise_predictor"]
    assert card["training"]["anchor_from"] == {"4": str(plain)} and card["architecture"]["scale_anchors"] == [2.0, 4.0]
    capsys.readouterr()
    tnp.train(tiny_cfg(tmp_path / "wide", prior=str(prior_dir), channels=12), **kw)
    for args, code, words in (
        ([str(anch), "--anchor", "8", "--from", str(plain), "--out", str(tmp_path / "x.pt")], InputError.exit_code,
         "no scale anchor 8"),
        ([str(plain), "--anchor", "4", "--from", str(plain), "--out", str(tmp_path / "x.pt")], InputError.exit_code,
         "no scale anchor 4"),
        ([str(anch), "--anchor", "4", "--from", str(tmp_path / "wide" / "last.pt"), "--out", str(tmp_path / "x.pt")],
         InputError.exit_code, "does not fit"),
        ([str(anch), "--anchor", "4", "--from", str(plain), "--out", str(anch)], UsageError.exit_code, "one of the inputs"),
        ([str(anch), "--anchor", "4", "--from", str(anch), "--out", str(tmp_path / "x.pt")], InputError.exit_code,
         "plain network"),
    ):
        assert main(["train", "predictor-set-anchor", *args]) == code, args
        err = capsys.readouterr().err.strip()
        assert words in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "x.pt").exists()


def test_trainable_trains_one_anchor_and_leaves_every_other_weight_exactly(tmp_path):
    """trainable: ("anchor_offsets.0.",) fine-tunes the 2x anchor from a warm start; the base
    weights, the 4x anchor and so the output at 4x stay bit-for-bit the warm start's, through
    a resume too; a prefix that names nothing is a one-line ConfigError."""
    crops, prior = textured_crops(), tiny_prior()
    kw = dict(progress=False, prior=prior, crops=crops)
    anch = dict(scale_anchors=(2.0, 4.0), scale_min=2.0, scale_max=2.8, lr=3e-2)
    first = tnp.train(tiny_cfg(tmp_path / "a", **anch), **kw)
    start = dict(first.ema_net().named_parameters())
    cfg = tiny_cfg(tmp_path / "b", init_checkpoint=str(tmp_path / "a" / "last.pt"), trainable=("anchor_offsets.0.",),
                   **anch)
    tnp.train(cfg, stop_at=2, **kw)
    tuned = tnp.train(cfg, resume=True, **kw)
    assert tuned.step == 4
    for net in (tuned.net, tuned.ema_net()):
        for name, p in net.named_parameters():
            if name.startswith("anchor_offsets.0."):
                continue
            assert torch.equal(p, start[name]), name
    moved = [n for n, p in tuned.ema_net().named_parameters() if not torch.equal(p, start[n])]
    assert moved and all(n.startswith("anchor_offsets.0.") for n in moved)
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    assert torch.equal(tuned.ema_net()(x, 30, 4.0), first.ema_net()(x, 30, 4.0))
    assert not torch.equal(tuned.ema_net()(x, 30, 2.0), first.ema_net()(x, 30, 2.0))
    with pytest.raises(ConfigError, match="trainable: 'anchor_offsets.7.' names no parameter"):
        tnp.train(tiny_cfg(tmp_path / "c", trainable=("anchor_offsets.7.",), **anch), stop_at=0, **kw)
    with pytest.raises(ConfigError, match="empty prefix"):
        tiny_cfg(tmp_path / "c", trainable=("",), **anch)
    # resuming with other trainable weights would unfreeze what the run kept: refused, the run untouched
    before = (tmp_path / "b" / "config.yaml").read_text()
    with pytest.raises(ConfigError, match="--resume: .* was trained with trainable=\\['anchor_offsets.0.'\\]"):
        tnp.train(dataclasses.replace(cfg, trainable=("anchor_offsets.1.",), steps=6), resume=True, **kw)
    # as would another loss or learning rate: every field but where/how it runs is the run's
    with pytest.raises(ConfigError, match="grad_weight=0.5, the config now says 0.1 \\(and 1 more: lr\\)"):
        tnp.train(dataclasses.replace(cfg, grad_weight=0.1, lr=1e-3), resume=True, **kw)
    assert (tmp_path / "b" / "config.yaml").read_text() == before
    assert tnp.PredictorTrainConfig.from_dict(cfg.to_dict()) == cfg


def test_trainable_anchors_that_never_count_are_refused_and_batches_where_they_do_not_are_skipped(tmp_path):
    """The 4x anchor alone counts at every factor above 2x, not at exactly 2x; the 8x anchor
    on factors 2-2.8 never counts: a one-line ConfigError before any folder is made.
    A batch drawn at exactly 2x (where the 4x anchor's weight is 0) has no gradient: the step
    is counted, skipped, and nothing moves."""
    crops, prior = textured_crops(), tiny_prior()
    kw = dict(progress=False, prior=prior, crops=crops)
    with pytest.raises(ConfigError, match="weight is 0 at every factor"):
        tnp.train(tiny_cfg(tmp_path / "never", scale_anchors=(2.0, 4.0, 8.0), scale_min=2.0, scale_max=2.8,
                           trainable=("anchor_offsets.2.",)), **kw)
    assert not (tmp_path / "never").exists()
    # factors 2-2.05 draw 16-pixel inputs for the 32-pixel crops: every batch exactly 2x
    cfg = tiny_cfg(tmp_path / "at2", scale_anchors=(2.0, 4.0, 8.0), scale_min=2.0, scale_max=2.05,
                   trainable=("anchor_offsets.1.",))
    trainer = tnp.train(cfg, stop_at=0, **kw)
    start = _params(trainer).clone()
    info = trainer.train_step()
    assert info["skipped"] and info["scale"] == 2.0 and trainer.step == 1
    assert torch.equal(_params(trainer), start)
    moving = tnp.train(dataclasses.replace(cfg, run_dir=str(tmp_path / "at3"), scale_min=3.0, scale_max=3.0), **kw)
    assert moving.step == 4 and not torch.equal(_params(moving), start)


def test_config_errors_name_the_field(tmp_path):
    from vsr.errors import ConfigError

    with pytest.raises(ConfigError, match="t_min"):
        tiny_cfg(tmp_path, t_min=0)
    with pytest.raises(ConfigError, match="unknown"):
        tnp.PredictorTrainConfig.from_dict({"nope": 1})
    cfg = tiny_cfg(tmp_path)
    assert tnp.PredictorTrainConfig.from_dict(cfg.to_dict()) == cfg


# ----------------------------------------------------------------------------- the engine


@pytest.mark.slow
def test_engine_with_a_predictor_on_the_shipped_prior_is_batch_independent():
    """The shipped prior with a (random-tail) predictor through `Upscaler`: the same pixels
    whatever the batch; with a shipped, calibrated predictor, a higher PSNR than without."""
    from vsr.config import EngineConfig
    from vsr.engine import Upscaler
    from vsr.models import load_model

    model = load_model(None)
    net = NoisePredictor(channels=8, num_blocks=1, emb_dim=8)
    torch.manual_seed(0)
    torch.nn.init.normal_(net.tail.weight, std=0.01)
    cfg = EngineConfig().replace(scale=2, steps=2, device=TEST_DEVICE, dtype="float32")
    up = Upscaler(model, cfg, noise=PredictedNoise(net, scales=[2, 4], levels=[0.02, 0.05]))
    g = torch.Generator().manual_seed(0)
    frames = torch.rand(2, 3, 40, 56, generator=g)
    both = up.upscale_tensor(frames, [0, 1])
    assert torch.equal(up.upscale_tensor(frames[1:], [1]), both[1:])
    assert up.timesteps_for(2.0) == (20, 10)
    # the shipped predictor is the default (with the step count it was calibrated for) and,
    # on a held-out photograph (2x, bicubic-downscaled 8-bit input), beats plain Diff-SR at
    # its default 2 steps in half the model calls
    shipped = load_noise_predictor(model)
    assert shipped is not None and shipped.calibrated_steps() == 1 and shipped.calibrated_consistency() == 4
    default = Upscaler.from_pretrained(None, scale=2, device=TEST_DEVICE)
    plain = default.with_config(noise_predictor="off")
    assert isinstance(default.noise, PredictedNoise) and isinstance(plain.noise, SharedNoise)
    assert len(default.timesteps_for(2.0)) == 1 and len(plain.timesteps_for(2.0)) == 2
    assert default.consistency == 4 and plain.consistency == 1
    skdata = pytest.importorskip("skimage.data")
    from vsr import metrics
    from vsr.core.resample import resize

    img = skdata.astronaut()[128:384, 128:384]
    hr = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
    low = (resize(hr, 128, 128) * 255).round() / 255

    def psnr(up: Upscaler) -> float:
        out = up.upscale_tensor(low).cpu()
        return metrics.psnr((out[0].permute(1, 2, 0) * 255).round().byte().numpy(), img)

    assert psnr(default) > psnr(plain) + 0.1
