"""The engine's behaviour: what comes out, not only its shape.

Two kinds of model: oracles (per-pixel functions of x_t and t) whose output can be
computed from the method's parts exactly, and the tiny random-init diffusers UNet of
conftest.py, for what holds with a real network (determinism, noise, batching, types).
"""
import pickle
from fractions import Fraction

import av
import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from vsr import EngineConfig, Upscaler
from vsr.core.resample import resize
from vsr.core.sampling import back_project
from vsr.errors import ConfigError, InputError
from vsr.frame import Frame
from vsr.models import LoadedModel, ModelCard

from tests.conftest import TEST_DEVICE

AC = DDPMScheduler(num_train_timesteps=1000).alphas_cumprod.double()


def _image(h, w, seed=0, dtype=np.uint8):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([np.sin(xx / 5.0), np.cos(yy / 7.0), np.sin((xx + yy) / 9.0)], -1) * 0.4 + 0.5
    img = np.clip(base + rng.normal(0, 0.05, base.shape), 0, 1)
    peak = 255 if dtype == np.uint8 else 65535
    return (img * peak).round().astype(dtype)


def _tensor(img: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 -> (1, 3, H, W) float [0, 1], as the engine converts it."""
    return torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255


class Pixelwise(torch.nn.Module):
    """A model that is a per-pixel function (1x1 convolution): tiling must not change it."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 3, 1)

    def forward(self, x, t):
        return torch.tanh(self.conv(x))


class Oracle(torch.nn.Module):
    """A "sample" model that knows the injected noise is zero: x0 = x_t / sqrt(abar_t)."""

    def forward(self, x, t):
        return x / AC.to(t.device)[t].sqrt().float().view(-1, 1, 1, 1)


class NoNoise:
    """A noise source that injects nothing (eps = 0), so an oracle can undo add_noise exactly."""

    def __call__(self, ctx):
        return torch.zeros(1, 3, *ctx.size)

    def noise_level(self, scale):
        return None


@pytest.fixture(scope="module")
def engine(up) -> Upscaler:
    """The shared tiny engine (1 DDIM step, scale 2) in float32, so that equalities are exact."""
    return up.with_config(dtype="float32")


def _in_memory(net, prediction_type, noise=None, **config) -> Upscaler:
    model = LoadedModel(net, ModelCard(name="mem", crop=32), AC, prediction_type)
    config = {"scale": 2.0, "tile": 32, "overlap": 8, "device": TEST_DEVICE, "dtype": "float32", **config}
    return Upscaler(model, EngineConfig(**config), noise=noise)


@pytest.mark.parametrize("consistency", [0, 2])
def test_an_oracle_through_the_tiles_gives_back_the_back_projected_bicubic(consistency):
    # eps = 0 and x0 = x_t / sqrt(abar): the one DDIM step returns the projected x0, so
    # the output is bicubic (consistency 0) or its back-projection onto the input, however tiled
    oracle = _in_memory(Oracle(), "sample", NoNoise(), steps=1, consistency=consistency)
    x = _tensor(_image(23, 37))
    assert oracle.tiles_per_frame(46, 74) == 6
    bicubic = resize(x, 46, 74)
    want = ((back_project(bicubic * 2 - 1, x * 2 - 1, consistency) + 1) / 2).clamp(0, 1)
    torch.testing.assert_close(oracle.upscale_tensor(x).cpu(), want, rtol=0, atol=2e-6)
    if consistency:  # and the projection did something: the output downscales back to the input
        assert (resize(want, 23, 37) - x).abs().mean() < 0.5 * (resize(bicubic, 23, 37) - x).abs().mean()


def test_tiled_equals_untiled_for_a_pixelwise_model():
    x = _tensor(_image(37, 45))
    tiled = _in_memory(Pixelwise(), "epsilon", steps=3, overlap=12, batch=5)
    assert tiled.tiles_per_frame(74, 90) > 4
    whole = tiled.with_config(tile=96, overlap=0)
    assert whole.tiles_per_frame(74, 90) == 1
    torch.testing.assert_close(tiled.upscale_tensor(x), whole.upscale_tensor(x), rtol=0, atol=2e-6)


def test_a_real_model_changes_the_bicubic_by_a_bounded_amount(engine):
    x = _tensor(_image(24, 40))
    out = engine.upscale_tensor(x).cpu()  # upscale_tensor answers on the engine's device
    bicubic = resize(x, 48, 80)
    change = (out - bicubic).abs().mean().item()
    # a random-init UNet writes detail of its own (nonzero) ...
    assert change > 0.02
    # ... only above the input's band: the output still downscales back to the input
    assert (resize(out, 24, 40) - x).abs().mean().item() < 0.05 < change


CASES = [  # (input h, w, config override, expected output h, w)
    (24, 40, {"scale": 2.0}, (48, 80)),
    (24, 40, {"scale": 2.7}, (65, 108)),
    (27, 48, {"size": (128, 72)}, (72, 128)),  # 540p -> 1440p, at 1/20 the size
]


@pytest.mark.parametrize("h,w,over,out_hw", CASES)
def test_output_size_follows_scale_or_size(engine, h, w, over, out_hw):
    u = engine.with_config(**over)
    assert u.output_size(h, w) == out_hw
    img = _image(h, w)
    out = u(img)
    assert out.shape == (*out_hw, 3) and out.dtype == np.uint8
    # the picture is the input's: downscaled back, it is far closer to the input than to another frame
    back = (resize(_tensor(out), h, w)[0].permute(1, 2, 0).numpy() * 255).round()
    assert np.abs(back - img).mean() < 0.25 * np.abs(back - img[::-1]).mean()


def test_every_input_type_gives_the_same_picture(engine):
    img = _image(24, 40)
    a = engine(img)
    fr = engine(Frame(img, pts=42, time_base=Fraction(1, 25), index=0))
    assert isinstance(fr, Frame) and (fr.pts, fr.time_base, fr.index) == (42, Fraction(1, 25), 0)
    np.testing.assert_array_equal(fr.image, a)
    chw = engine(torch.from_numpy(img).permute(2, 0, 1).contiguous())
    assert chw.dtype == torch.uint8
    np.testing.assert_array_equal(chw.permute(1, 2, 0).numpy(), a)
    nchw = engine(torch.from_numpy(np.stack([img, img])).permute(0, 3, 1, 2).float() / 255)
    assert nchw.dtype == torch.float32 and nchw.shape == (2, 3, 48, 80)
    torch.testing.assert_close(nchw[0], nchw[1], rtol=0, atol=0)  # shared noise: same frame, same output
    assert np.abs((nchw[0].permute(1, 2, 0).numpy() * 255).round() - a).max() <= 1
    vf = av.VideoFrame.from_ndarray(img, format="rgb24")
    vf.pts, vf.time_base = 7, Fraction(1, 30)
    vo = engine(vf)
    assert isinstance(vo, av.VideoFrame) and (vo.pts, vo.time_base) == (7, Fraction(1, 30))
    np.testing.assert_array_equal(vo.to_ndarray(format="rgb24"), a)


def test_sixteen_bit_input_keeps_its_precision(engine):
    img = _image(24, 40)
    a = engine(img)
    deep = engine(img.astype(np.uint16) * 257)  # the same picture on the 16-bit scale
    assert deep.dtype == np.uint16
    # the same float result, rounded to 65535 levels instead of 255
    assert np.abs(deep.astype(int) - 257 * a.astype(int)).max() <= 257 // 2 + 1
    inside = (deep > 0) & (deep < 65535)  # (a random model saturates many pixels)
    assert np.mean(deep[inside] % 257 != 0) > 0.95  # not 8-bit values scaled up: the 16 bits are used
    vf = av.VideoFrame.from_ndarray(img.astype(np.uint16) * 257, format="rgb48le")
    vf.pts, vf.time_base = 0, Fraction(1, 25)
    np.testing.assert_array_equal(engine(vf).to_ndarray(format="rgb48le"), deep)


def test_seed_and_noise_mode_decide_the_output(tiny_model_dir, engine):
    img = _image(24, 40)
    first = engine(img)
    again = Upscaler.from_pretrained(tiny_model_dir, config=engine.config)(img)
    np.testing.assert_array_equal(first, again)  # same seed, a fresh load: identical
    assert np.abs(engine.with_config(seed=1)(img).astype(int) - first).mean() > 1  # another seed: another output
    # shared noise: identical frames give identical outputs, whatever their index
    for o in engine.stream([Frame(img, index=i) for i in range(3)]):
        np.testing.assert_array_equal(o.image, first)
    # fresh noise: a new field per frame index
    fresh = list(engine.with_config(noise="fresh").stream([Frame(img, index=i) for i in range(2)]))
    assert np.abs(fresh[0].image.astype(int) - fresh[1].image).mean() > 1


def test_tile_batch_size_does_not_change_the_output(engine):
    # STYLE.md 7. Not bit-exact on CPU: the UNet's float32 convolutions round differently
    # for 1 and 3 tiles a call (about 1 ulp, 6e-7), so at most one 8-bit level moves.
    x = torch.stack([_tensor(_image(24, 40, seed=s))[0] for s in range(3)])
    one, three = (engine.with_config(batch=b).upscale_tensor(x) for b in (1, 3))
    torch.testing.assert_close(one, three, rtol=0, atol=2e-6)
    # and frames batched together give what they give alone (same index, same noise)
    alone = torch.cat([engine.upscale_tensor(x[i:i + 1], [i]) for i in range(3)])
    torch.testing.assert_close(alone, three, rtol=0, atol=2e-6)
    assert (three[0] - three[1]).abs().mean() > 0.01  # different frames, different outputs


def test_stream_keeps_order_timing_and_is_lazy(engine):
    pulled = []

    def frames():
        for i in range(7):
            pulled.append(i)
            h, w = (24, 40) if i < 4 else (20, 36)  # a size change mid-stream
            yield Frame(_image(h, w, seed=i), pts=100 + 2 * i, time_base=Fraction(1, 50), index=i)

    seen = []
    it = engine.stream(frames(), callback=seen.append)
    first = next(it)
    group = engine.frames_per_group(48, 80)
    assert first.index == 0 and len(pulled) <= group + 1 < 7  # bounded look-ahead, not the whole stream
    rest = list(it)
    outs = [first, *rest]
    assert [o.index for o in outs] == list(range(7)) and [o.pts for o in outs] == [100 + 2 * i for i in range(7)]
    assert outs[0].image.shape == (48, 80, 3) and outs[6].image.shape == (40, 72, 3)
    assert seen and seen[-1]["frames_done"] == 7
    np.testing.assert_array_equal(outs[6].image, engine(Frame(_image(20, 36, seed=6), index=6)).image)
    arrays = list(engine.stream(iter([_image(24, 40, dtype=np.uint16)] * 2)))
    assert len(arrays) == 2 and arrays[0].dtype == np.uint16


def test_pickle_reloads_lazily_and_gives_the_same_output(engine):
    img = _image(24, 40)
    blob = pickle.dumps(engine)
    assert len(blob) < 20_000  # config + location, not the weights
    clone = pickle.loads(blob)
    assert clone._model is None
    np.testing.assert_array_equal(clone(img), engine(img))
    mem = _in_memory(Pixelwise(), "epsilon")
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(mem))(img), mem(img))


def test_steps_that_do_not_fit_below_the_start_are_said_once(engine, caplog):
    # t/T 0.001 is t = 1: a second step has no timestep left, so --steps 2 runs one, and says so
    low = engine.with_config(noise_level=0.001, steps=2)
    with caplog.at_level("WARNING", logger="vsr.engine"):
        assert low.timesteps_for(2.0) == (1,) and low.timesteps_for(2.0) == (1,)
        assert engine.with_config(noise_level=0.002, steps=2).timesteps_for(2.0) == (2, 1)  # fits: nothing said
    said = [r.getMessage() for r in caplog.records if "leaves room" in r.getMessage()]
    assert said == ["steps 2: the start t = 1 at 2x leaves room for 1 DDIM step, so 1 runs"]


def test_noise_levels_timesteps_and_validation(engine, tiny_model_dir):
    # the card's PRF curve: t/T = 0.2 at 2x, 0.4 at 4x
    assert engine.timesteps_for(2.0) == (200,)
    assert engine.with_config(steps=2).timesteps_for(4.0) == (400, 200)
    assert engine.with_config(noise_level=0.3, steps=3).timesteps_for(2.0) == (300, 200, 100)
    assert engine.with_config(timesteps=(200, 100, 50)).timesteps_for(8.0) == (200, 100, 50)
    with pytest.raises(ConfigError, match="timesteps"):
        engine.with_config(timesteps=(1000, 10)).timesteps_for(2.0)
    with pytest.raises(ConfigError, match="tile"):
        Upscaler.from_pretrained(str(tiny_model_dir), tile=30, overlap=16)  # above half the tile
    assert engine.with_config(size=(50, 30)).model is engine.model  # same weights, new size
    with pytest.raises(InputError):
        engine("not a frame")
    with pytest.raises(InputError):
        engine(np.zeros((8, 8), np.uint8))


def test_auto_device_and_dtype_match_the_explicit_choice(up, engine):
    assert up.config.dtype == "auto"
    img = _image(16, 16)
    out = up(img)  # dtype "auto"
    if up.denoiser().dtype == torch.float32:  # a CPU without native bf16
        np.testing.assert_array_equal(out, engine(img))
    else:  # bf16 weights (fp16 on a GPU): the same picture to within their precision
        assert up.denoiser().dtype == (torch.float16 if up.denoiser().device.type == "cuda" else torch.bfloat16)
        assert np.abs(out.astype(int) - engine(img)).mean() < 4


@pytest.mark.slow
def test_shipped_prior_upscales_a_photo_keeping_its_content(photo):
    from vsr.models import shipped_weights_dir

    if not (shipped_weights_dir("vsr-prior-s") / "unet").is_dir():
        pytest.skip("the shipped prior's weights are not in vsr/weights/vsr-prior-s")
    hr = photo[96:224, 176:304].copy()  # 128x128 of the face
    lr_img = (resize(_tensor(hr), 64, 64)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    up = Upscaler.from_pretrained(scale=2.0, tile=128, overlap=32)
    assert up.model.card.name == "vsr-prior-s" and up.timesteps_for(2.0)[0] < 200
    out = up(lr_img)
    assert out.shape == (128, 128, 3)
    mse = np.mean((out.astype(float) - hr.astype(float)) ** 2)
    assert 10 * np.log10(255**2 / mse) > 25  # same picture (bicubic: 30.7 dB; t/T = 0.5 gives 19.8)


def test_consistency_makes_the_output_downscale_back_to_the_input(engine):
    x = _tensor(_image(24, 32, seed=5))

    def residual(consistency: int) -> float:
        out = engine.with_config(consistency=consistency, noise_level=0.3).upscale_tensor(x).cpu()
        return (resize(out, 24, 32) - x).abs().mean().item()

    plain, once, twice = residual(0), residual(1), residual(2)
    assert once < 0.5 * plain and twice < once
    with pytest.raises(ConfigError, match="consistency"):
        engine.with_config(consistency=-1)
    with pytest.raises(ConfigError, match="'auto' or an integer"):
        engine.with_config(consistency="twice")
    # a model without a noise predictor: auto is Diff-SR's one pass
    assert engine.with_config(consistency="auto").consistency == 1
