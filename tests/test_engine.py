import pickle
from fractions import Fraction

import av
import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from vsr import EngineConfig, Upscaler
from vsr.errors import ConfigError, InputError
from vsr.frame import Frame
from vsr.models import LoadedModel, ModelCard

FAST = dict(tile=32, overlap=8, batch=8, dtype="float32", device="cpu")


def _image(h, w, seed=0, dtype=np.uint8):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([np.sin(xx / 5.0), np.cos(yy / 7.0), np.sin((xx + yy) / 9.0)], -1) * 0.4 + 0.5
    img = np.clip(base + rng.normal(0, 0.05, base.shape), 0, 1)
    peak = 255 if dtype == np.uint8 else 65535
    return (img * peak).round().astype(dtype)


@pytest.fixture(scope="module")
def up(tiny_model_dir):
    return Upscaler.from_pretrained(str(tiny_model_dir), scale=2.0, **FAST)


class Pixelwise(torch.nn.Module):
    """A model that is a per-pixel function (1x1 convolution): tiling must not change it."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 3, 1)

    def forward(self, x, t):
        return torch.tanh(self.conv(x))


def test_tiled_equals_untiled_for_a_pixelwise_model():
    ac = DDPMScheduler(num_train_timesteps=1000).alphas_cumprod.double()
    lm = LoadedModel(Pixelwise(), ModelCard(name="pw", crop=32), ac, "epsilon")
    x = torch.from_numpy(_image(37, 45)).permute(2, 0, 1)[None].float() / 255
    cfg = EngineConfig(scale=2.0, steps=3, **{**FAST, "overlap": 12, "batch": 5})
    tiled = Upscaler(lm, cfg)
    assert tiled.tiles_per_frame(74, 90) > 4
    whole = Upscaler(lm, cfg.replace(tile=96, overlap=0))
    assert whole.tiles_per_frame(74, 90) == 1
    torch.testing.assert_close(tiled.upscale_tensor(x), whole.upscale_tensor(x), rtol=0, atol=2e-6)


CASES = [  # (input h, w, config override, expected output h, w)
    (24, 40, {"scale": 2.0}, (48, 80)),
    (24, 40, {"scale": 2.7}, (65, 108)),
    (27, 48, {"size": (128, 72)}, (72, 128)),  # 540p -> 1440p, at 1/20 the size
]


@pytest.mark.parametrize("h,w,over,out_hw", CASES)
def test_every_input_type_round_trips_with_the_right_size(up, h, w, over, out_hw):
    u = up.with_config(**over)
    assert u.output_size(h, w) == out_hw
    oh, ow = out_hw
    img = _image(h, w)
    a = u(img)
    assert a.shape == (oh, ow, 3) and a.dtype == np.uint8
    deep = u(_image(h, w, dtype=np.uint16))
    assert deep.shape == (oh, ow, 3) and deep.dtype == np.uint16
    fr = u(Frame(img, pts=42, time_base=Fraction(1, 25), index=3))
    assert isinstance(fr, Frame) and fr.image.shape == (oh, ow, 3) and (fr.pts, fr.time_base, fr.index) == (42, Fraction(1, 25), 3)
    chw = u(torch.from_numpy(img).permute(2, 0, 1).contiguous())
    assert chw.shape == (3, oh, ow) and chw.dtype == torch.uint8
    np.testing.assert_array_equal(chw.permute(1, 2, 0).numpy(), a)  # same frame, same noise, same output
    nchw = u(torch.from_numpy(np.stack([img, img])).permute(0, 3, 1, 2).float() / 255)
    assert nchw.shape == (2, 3, oh, ow) and nchw.dtype == torch.float32 and 0 <= float(nchw.min()) <= float(nchw.max()) <= 1
    vf = av.VideoFrame.from_ndarray(img, format="rgb24")
    vf.pts, vf.time_base = 7, Fraction(1, 30)
    vo = u(vf)
    assert isinstance(vo, av.VideoFrame) and (vo.height, vo.width) == (oh, ow)
    assert (vo.pts, vo.time_base) == (7, Fraction(1, 30))


def test_shared_noise_is_deterministic_and_identical_frames_give_identical_outputs(tiny_model_dir, up):
    img = _image(24, 40)
    first = up(img)
    again = Upscaler.from_pretrained(str(tiny_model_dir), scale=2.0, **FAST)(img)
    np.testing.assert_array_equal(first, again)
    outs = list(up.stream([Frame(img, index=i) for i in range(4)]))
    for o in outs:
        np.testing.assert_array_equal(o.image, first)
    # the output does not depend on how tiles are batched
    one = up.with_config(batch=1)(img)
    assert np.abs(one.astype(int) - first.astype(int)).max() <= 1
    # fresh noise: a new field per frame index
    fresh = list(up.with_config(noise="fresh").stream([Frame(img, index=i) for i in range(2)]))
    assert not np.array_equal(fresh[0].image, fresh[1].image)
    assert not np.array_equal(up.with_config(seed=1)(img), first)


def test_stream_keeps_order_timing_and_is_lazy(up):
    pulled = []

    def frames():
        for i in range(7):
            pulled.append(i)
            h, w = (24, 40) if i < 4 else (20, 36)  # a size change mid-stream
            yield Frame(_image(h, w, seed=i), pts=100 + 2 * i, time_base=Fraction(1, 50), index=i)

    seen = []
    it = up.stream(frames(), callback=seen.append)
    first = next(it)
    assert first.index == 0 and len(pulled) <= 3  # bounded look-ahead, not the whole stream
    rest = list(it)
    outs = [first, *rest]
    assert [o.index for o in outs] == list(range(7)) and [o.pts for o in outs] == [100 + 2 * i for i in range(7)]
    assert outs[0].image.shape == (48, 80, 3) and outs[6].image.shape == (40, 72, 3)
    assert seen and seen[-1]["frames_done"] == 7
    arrays = list(up.stream(iter([_image(24, 40, dtype=np.uint16)] * 2)))
    assert len(arrays) == 2 and arrays[0].dtype == np.uint16


def test_pickle_reloads_lazily_and_gives_the_same_output(up):
    img = _image(24, 40)
    blob = pickle.dumps(up)
    assert len(blob) < 20_000  # config + location, not the weights
    clone = pickle.loads(blob)
    assert clone._model is None
    np.testing.assert_array_equal(clone(img), up(img))
    ac = DDPMScheduler(num_train_timesteps=1000).alphas_cumprod.double()
    mem = Upscaler(LoadedModel(Pixelwise(), ModelCard(crop=32), ac, "epsilon"), EngineConfig(scale=2.0, **FAST))
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(mem))(img), mem(img))


def test_noise_levels_timesteps_and_validation(up, tiny_model_dir):
    assert up.timesteps_for(2.0) == (200, 100)
    assert up.timesteps_for(4.0) == (400, 200)
    assert up.with_config(noise_level=0.3, steps=1).timesteps_for(2.0) == (300,)
    assert up.with_config(timesteps=(200, 100, 50)).timesteps_for(8.0) == (200, 100, 50)
    with pytest.raises(ConfigError, match="timesteps"):
        up.with_config(timesteps=(1000, 10)).timesteps_for(2.0)
    with pytest.raises(ConfigError, match="tile"):
        Upscaler.from_pretrained(str(tiny_model_dir), tile=30)
    assert up.with_config(size=(50, 30)).model is up.model  # same weights, new size
    with pytest.raises(InputError):
        up("not a frame")
    with pytest.raises(InputError):
        up(np.zeros((8, 8), np.uint8))


def test_auto_device_and_dtype_run(tiny_model_dir):
    u = Upscaler.from_pretrained(tiny_model_dir, config=EngineConfig(scale=2.0, tile=32, overlap=8))
    out = u(_image(16, 16))
    assert out.shape == (32, 32, 3)
    assert u.denoiser().dtype in (torch.bfloat16, torch.float32)


def test_frames_sharing_a_model_call_match_frames_run_alone(up):
    frames = [Frame(_image(16, 16, seed=i), index=i) for i in range(5)]
    assert up.tiles_per_frame(32, 32) == 1  # so a group of up to 8 frames shares one call
    alone = [up(f).image for f in frames]
    together = [o.image for o in up.stream(frames)]
    for a, b in zip(alone, together):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    assert not np.array_equal(together[0], together[1])


@pytest.mark.slow
def test_shipped_prior_upscales_a_photo_keeping_its_content():
    from vsr.models import shipped_weights_dir

    if not (shipped_weights_dir("vsr-prior-s") / "unet").is_dir():
        pytest.skip("the shipped prior's weights are not in vsr/weights/vsr-prior-s")
    skdata = pytest.importorskip("skimage.data")
    hr = skdata.astronaut()[96:224, 176:304]  # 128x128 of the face
    lr = torch.from_numpy(hr).permute(2, 0, 1)[None].float() / 255
    from vsr.engine import resize

    lr_img = (resize(lr, 64, 64)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    up = Upscaler.from_pretrained(scale=2.0, tile=128, overlap=32)
    assert up.model.card.name == "vsr-prior-s" and up.timesteps_for(2.0)[0] < 200
    out = up(lr_img)
    assert out.shape == (128, 128, 3)
    mse = np.mean((out.astype(float) - hr.astype(float)) ** 2)
    assert 10 * np.log10(255**2 / mse) > 25  # same picture (bicubic: 30.7 dB; t/T = 0.5 gives 19.8)


def test_consistency_makes_the_output_downscale_back_to_the_input(up):
    from vsr.engine import resize

    img = _image(24, 32, seed=5)
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255

    def residual(consistency: int) -> float:
        out = up.with_config(consistency=consistency, noise_level=0.3).upscale_tensor(x)
        return (resize(out, 24, 32) - x).abs().mean().item()

    plain, once, twice = residual(0), residual(1), residual(2)
    assert once < 0.5 * plain and twice < once
    with pytest.raises(ConfigError, match="consistency"):
        up.with_config(consistency=-1)
