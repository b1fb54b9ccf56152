"""The seams new capabilities plug into (docs/ARCHITECTURE.md "Where to add"): a noise
source sees the picture, the start timestep and the previous frame's state; a method is
picked by the model card; a noise source's own calibration overrides the card's PRF."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from tests.conftest import build_tiny_model_dir, with_noise_predictor
from tests.media import moving_picture
from vsr.config import EngineConfig
from vsr.engine import Upscaler
from vsr.errors import ConfigError, ModelError
from vsr.frame import Frame
from vsr.methods import METHODS
from vsr.models import load_model
from vsr.noise import NoiseContext, SharedNoise


class RecordingSource:
    """A real (if trivial) noise source: the shared field, plus a record of what it saw."""

    def __init__(self, level: float | None = None):
        self.seen: list[NoiseContext] = []
        self.level = level
        self.base = SharedNoise(0)

    def __call__(self, ctx: NoiseContext) -> torch.Tensor:
        self.seen.append(ctx)
        return self.base(ctx)

    def noise_level(self, scale: float) -> float | None:
        return self.level


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_model(build_tiny_model_dir(tmp_path_factory.mktemp("seams") / "tiny"))


def test_a_noise_source_sees_the_pictures_the_timestep_and_the_previous_frame(model):
    src = RecordingSource()
    up = Upscaler(model, EngineConfig(scale=2, steps=1, noise_level=0.25, dtype="float32", batch=1), noise=src)
    frames = [Frame(moving_picture(i, 40, 24), pts=i, time_base=None, index=i) for i in range(4)]
    outs = list(up.stream(frames))
    assert [o.index for o in outs] == [0, 1, 2, 3]
    assert [c.frame_indices for c in src.seen] == [(0,), (1,), (2,), (3,)]
    assert {c.timestep for c in src.seen} == {250}
    first = src.seen[0]
    assert first.low.shape == (1, 3, 24, 40) and first.upsampled.shape == (1, 3, 48, 80)
    expected_low = torch.from_numpy(moving_picture(0, 40, 24)).permute(2, 0, 1).float() / 255 * 2 - 1
    torch.testing.assert_close(first.low[0].cpu(), expected_low)  # on the engine's device (auto)
    # the previous frame's state reaches the next batch (what a flow-warped source needs)
    assert first.previous is None
    assert [c.previous.frame_index for c in src.seen[1:]] == [0, 1, 2]
    torch.testing.assert_close(src.seen[2].previous.upsampled, src.seen[1].upsampled[0])
    # the same source, the same pictures: the output is the plain shared-noise engine's
    plain = Upscaler(model, EngineConfig(scale=2, steps=1, noise_level=0.25, dtype="float32", batch=1))
    assert all(np.array_equal(a.image, b.image) for a, b in zip(outs, plain.stream(frames)))


def test_a_gap_in_frame_indices_resets_the_previous_state(model):
    src = RecordingSource()
    up = Upscaler(model, EngineConfig(scale=2, steps=1, dtype="float32", batch=1), noise=src)
    frames = [Frame(moving_picture(i, 40, 24), pts=i, time_base=None, index=i) for i in (0, 1, 5)]
    list(up.stream(frames))
    assert [c.previous.frame_index if c.previous else None for c in src.seen] == [None, 0, None]


def test_a_source_calibration_overrides_the_card_prf(model):
    up = Upscaler(model, EngineConfig(scale=2, steps=1), noise=RecordingSource(level=0.031))
    assert up.timesteps_for(2.0) == (31,)
    up = Upscaler(model, EngineConfig(scale=2, steps=1), noise=RecordingSource(level=None))
    assert up.timesteps_for(2.0) == (200,)  # the card: prf t 0.2 at 2x
    up = Upscaler(model, EngineConfig(scale=2, steps=1, noise_level=0.1), noise=RecordingSource(level=0.031))
    assert up.timesteps_for(2.0) == (100,)  # an explicit level wins


def test_the_card_picks_the_method(tmp_path):
    d = build_tiny_model_dir(tmp_path / "m")
    card = yaml.safe_load((d / "model_card.yaml").read_text())
    calls = []

    def traced(*args, **kw):
        calls.append(kw["consistency"])
        return METHODS["diffsr"](*args, **kw)

    METHODS["traced-test"] = traced
    try:
        card["method"] = "traced-test"
        (d / "model_card.yaml").write_text(yaml.safe_dump(card))
        up = Upscaler.from_pretrained(str(d), scale=2, steps=1, consistency=2, dtype="float32")
        out = up(moving_picture(0, 40, 24))
        assert calls == [2] and out.shape == (48, 80, 3)
        card["method"] = "no-such-paper"
        (d / "model_card.yaml").write_text(yaml.safe_dump(card))
        with pytest.raises(ConfigError, match="no-such-paper.*diffsr"):
            Upscaler.from_pretrained(str(d), scale=2)(moving_picture(0, 40, 24))
    finally:
        del METHODS["traced-test"]


def test_a_model_with_a_noise_predictor_uses_it_unless_turned_off(tmp_path):
    from vsr.noise.predicted import PredictedNoise

    d = with_noise_predictor(tmp_path / "np")
    img = moving_picture(0, 40, 24)
    on = Upscaler.from_pretrained(str(d), scale=2, steps=1, dtype="float32")
    off = on.with_config(noise_predictor="off")
    assert isinstance(on.noise, PredictedNoise) and isinstance(off.noise, SharedNoise)
    # the predictor's calibrated start replaces the card's PRF (t 0.2 at 2x)
    assert on.timesteps_for(2.0) == (50,) and off.timesteps_for(2.0) == (200,)
    a, b = on(img), off(img)
    assert not np.array_equal(a, b)
    assert np.array_equal(a, on(img))  # deterministic
    plain = Upscaler.from_pretrained(build_tiny_model_dir(tmp_path / "plain"), scale=2, steps=1, dtype="float32")
    assert np.array_equal(b, plain(img))  # off is exactly plain Diff-SR


def test_steps_auto_runs_the_count_the_predictor_was_calibrated_for(tmp_path):
    d = with_noise_predictor(tmp_path / "np", steps=1)
    auto = Upscaler.from_pretrained(str(d), scale=2, dtype="float32")  # steps: auto, the default
    assert auto.config.steps == "auto" and auto.steps == 1 and auto.timesteps_for(2.0) == (50,)
    assert auto.with_config(steps=3).timesteps_for(2.0) == (50, 33, 17)  # an explicit count wins
    off = auto.with_config(noise_predictor="off")
    assert off.steps == 2 and off.timesteps_for(2.0) == (200, 100)  # plain Diff-SR: 2 steps, the card's PRF
    uncalibrated = Upscaler.from_pretrained(str(with_noise_predictor(tmp_path / "np2")), scale=2, dtype="float32")
    assert uncalibrated.steps == 2  # a card entry without steps: the default count
    assert Upscaler(auto.model, EngineConfig(scale=2), noise=RecordingSource()).steps == 2  # no calibrated_steps()
    bad = with_noise_predictor(tmp_path / "np3", steps=99)
    with pytest.raises(ModelError, match="steps"):
        Upscaler.from_pretrained(str(bad), scale=2, dtype="float32").noise
    from vsr.cli import build_parser
    from vsr.pipelines.upscale_cli import engine_config_from_args

    args = build_parser("upscale").parse_args(["upscale", "in.mp4", "out.mp4", "--steps", "auto"])
    assert engine_config_from_args(args).steps == "auto"
    args = build_parser("upscale").parse_args(["upscale", "in.mp4", "out.mp4", "--steps", "3"])
    assert engine_config_from_args(args).steps == 3


def test_noise_predictor_flag_reaches_the_engine_config():
    from vsr.cli import build_parser
    from vsr.pipelines.upscale_cli import engine_config_from_args

    args = build_parser("upscale").parse_args(["upscale", "in.mp4", "out.mp4", "--noise-predictor", "off"])
    assert engine_config_from_args(args).noise_predictor == "off"
    args = build_parser("upscale").parse_args(["upscale", "in.mp4", "out.mp4"])
    assert engine_config_from_args(args).noise_predictor == "auto"
    with pytest.raises(ConfigError, match="noise_predictor"):
        EngineConfig(noise_predictor="maybe")


def test_grouping_never_changes_a_pixel_even_in_bfloat16(model):
    """A resumed or chunked job groups frames differently: every model call has the same
    batch size, so the frames must come out bit-identical (bf16 rounds differently for
    another batch size, by up to 6e-3)."""
    up = Upscaler(model, EngineConfig(scale=2, steps=1, dtype="bfloat16", batch=4, tile=32, overlap=8))
    frames = [Frame(moving_picture(i, 40, 24), pts=i, time_base=None, index=i) for i in range(4)]
    assert up.frames_per_group(48, 80) == 2  # 6 tiles a frame: two frames fill 3 calls of 4
    whole = [f.image for f in up.stream(frames)]
    resumed = [f.image for f in up.stream(frames[1:])]  # groups (1, 2), (3) instead of (0, 1), (2, 3)
    alone = up(frames[2]).image  # one frame: 6 tiles in 2 calls, the second padded
    assert all(np.array_equal(a, b) for a, b in zip(whole[1:], resumed))
    assert np.array_equal(whole[2], alone)
