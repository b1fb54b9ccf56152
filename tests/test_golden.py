"""Golden values: a fixed tiny model and fixed inputs whose noise fields, engine output and
transcoded frames are pinned, so a change of torch's RNG, of the maths or of the pipeline
cannot silently change results (and break `--resume` across versions).

The noise fields are pinned exactly (the seeded CPU generator is exact on every machine).
Model outputs are pinned as the uint8 frames in tests/golden/golden.npz; a CPU with other
SIMD kernels may round a rare pixel the other way, so at most 1 level on at most 0.5 % of
the values is tolerated: any real change of the maths moves far more. Regenerate, after a
deliberate change only, with `python -m tests.test_golden --write` and say why in the commit.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import TEST_DEVICE, build_tiny_model_dir
from tests.media import decode_video, make_clip, moving_picture

GOLDEN = Path(__file__).parent / "golden" / "golden.npz"
# gaussian_field(0, 2, 3): torch's seeded CPU generator (mt19937) is exact on every machine
SHARED_0 = [
    -1.1258398294448853,
    -1.152360200881958,
    0.5666506290435791,
    0.7935083508491516,
    0.5988394618034363,
    -1.5550950765609741,
    -0.3413603901863098,
    1.85300612449646,
    0.46809640526771545,
    -0.1577124446630478,
    -0.1733967512845993,
    0.18347793817520142,
    1.3893661499023438,
    1.586334228515625,
    0.946298360824585,
    -0.843676745891571,
    0.9318265914916992,
    1.2590092420578003,
]


def engine_frames(model_dir: Path, consistency: int, noise: str = "shared") -> np.ndarray:
    """(3, 64, 96, 3) uint8: three 48x32 test pictures (frames 0, 1, 2 of one batch)
    upscaled 2x, 2 steps at t/T 0.2, float32 on the CPU."""
    from vsr.engine import Upscaler

    up = Upscaler.from_pretrained(str(model_dir), scale=2, steps=2, dtype="float32", device=TEST_DEVICE,
                                  consistency=consistency, noise=noise, noise_level=0.2)
    x = torch.from_numpy(np.stack([moving_picture(i, 48, 32) for i in range(3)])).permute(0, 3, 1, 2)
    return up(x).permute(0, 2, 3, 1).numpy()


def transcode_frames(model_dir: Path, work: Path) -> tuple[np.ndarray, list[float]]:
    """A lossless (FFV1) 12-frame clip with audio, upscaled 2x to FFV1 in segments of 5:
    the decoded frames (12, 64, 96, 3) uint8 and their times in seconds."""
    from vsr import upscale_video

    src = make_clip(work / "in.mkv", codec="ffv1", frames=12, audio=("aac",), subtitles=True)
    dst = work / "out.mkv"
    upscale_video(src, dst, model=str(model_dir), config={"dtype": "float32", "device": "cpu", "steps": 2, "seed": 3},
                  scale=2, encode={"codec": "ffv1"}, segment_frames=5)
    frames, times = decode_video(dst)
    return np.stack(frames), times


def compute(work: Path) -> dict[str, np.ndarray]:
    model = build_tiny_model_dir(work / "tiny-eps")
    frames, times = transcode_frames(model, work)
    return {
        "engine_c0": engine_frames(model, 0),
        "engine_c1": engine_frames(model, 1),
        "engine_fresh": engine_frames(model, 1, "fresh"),
        "transcode": frames,
        "transcode_times": np.array(times),
    }


def assert_pinned(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    diff = np.abs(actual.astype(np.int16) - expected.astype(np.int16))
    assert diff.max() <= 1 and (diff > 0).mean() <= 0.005, (
        f"output moved from the golden values: max {diff.max()} levels, {100 * (diff > 0).mean():.2f} % of values"
    )


def test_noise_fields_are_pinned_exactly():
    from vsr.noise import FreshNoise, gaussian_field

    assert gaussian_field(0, 2, 3).flatten().tolist() == SHARED_0
    fresh = FreshNoise(7).field(3, 2, 2)
    assert torch.equal(fresh, FreshNoise(7).field(3, 2, 2)) and not torch.equal(fresh, FreshNoise(7).field(4, 2, 2))
    assert fresh.flatten()[:4].tolist() == pytest.approx(
        [0.5187588930130005, 2.42089581489563, -1.1791136264801025, -1.3524894714355469], abs=0)


@pytest.fixture(scope="module")
def computed(tmp_path_factory) -> dict[str, np.ndarray]:
    return compute(tmp_path_factory.mktemp("golden"))


@pytest.mark.parametrize("key", ["engine_c0", "engine_c1", "engine_fresh", "transcode"])
def test_outputs_match_the_golden_frames(computed, key):
    assert_pinned(computed[key], np.load(GOLDEN)[key])


def test_transcoded_timestamps_are_pinned(computed):
    np.testing.assert_array_equal(computed["transcode_times"], np.load(GOLDEN)["transcode_times"])
    assert computed["transcode"].shape[0] == 12


if __name__ == "__main__":
    import tempfile

    if "--write" not in sys.argv:
        sys.exit("usage: python -m tests.test_golden --write   (regenerates tests/golden/golden.npz)")
    with tempfile.TemporaryDirectory() as d:
        values = compute(Path(d))
    GOLDEN.parent.mkdir(exist_ok=True)
    np.savez_compressed(GOLDEN, **values)
    print(f"wrote {GOLDEN} ({GOLDEN.stat().st_size} bytes)")
