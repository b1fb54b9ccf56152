"""Exact output sizes for every way of asking for one (`vsr.targets`)."""
from __future__ import annotations

from fractions import Fraction

import pytest

from vsr.errors import EXIT_USAGE, UsageError
from vsr.targets import Plan, even, parse_size, parse_target, plan_output


def test_even_rounds_to_nearest_even_at_least_two():
    assert [even(x) for x in (0, 1, 2, 3, 4.9, 5, 853.33, 1919.9)] == [2, 2, 2, 4, 4, 6, 854, 1920]


@pytest.mark.parametrize(
    "name,height", [("720p", 720), ("1080p", 1080), ("1440p", 1440), ("2k", 1440), ("2160p", 2160), ("4K", 2160), ("600p", 600)]
)
def test_presets_by_height(name, height):
    assert parse_target(name) == height


def test_bad_target_and_size_are_usage_errors():
    for bad in ("hd", "0p", "1080"):
        with pytest.raises(UsageError):
            parse_target(bad)
    for bad in ("0x0", "1920", "axb", "1x4"):
        with pytest.raises(UsageError) as info:
            parse_size(bad)
        assert info.value.exit_code == EXIT_USAGE
    assert parse_size("1920x1080") == (1920, 1080)


def test_target_keeps_aspect_and_gives_even_sides():
    assert plan_output(640, 360, target="1080p").out == (1920, 1080)
    assert plan_output(480, 360, target="720p").out == (960, 720)
    # 2.39:1 scope: 1080 * 2.39 = 2581.2 -> 2582 (even)
    p = plan_output(956, 400, target="1080p")
    assert p.out == (2582, 1080) and p.crop == (0, 0, 956, 400) and p.pad == (0, 0, 0, 0)
    # odd input: 47x33 at 720p -> 1025.45 -> 1026
    assert plan_output(47, 33, target="720p").out == (1026, 720)


def test_anamorphic_input_gets_square_pixels():
    # DVD NTSC 16:9: 720x480 with SAR 32:27 displays as 853.3x480
    assert plan_output(720, 480, sar=Fraction(32, 27), target="1080p").out == (1920, 1080)
    assert plan_output(720, 480, sar=Fraction(32, 27), scale=2).out == (1706, 960)
    assert plan_output(720, 480, sar=Fraction(0, 1), scale=2).out == (1440, 960)  # 0 = unknown = square


def test_scale_and_default():
    assert plan_output(320, 180, scale=2.7).out == (864, 486)
    assert plan_output(320, 180).out == (640, 360)
    assert plan_output(320, 180, scale=2).scale == 2.0


def test_fit_pad_letterboxes_with_even_centred_borders():
    p = plan_output(400, 300, size=(1920, 1080), fit="pad")  # 4:3 into 16:9
    assert p == Plan(crop=(0, 0, 400, 300), scaled=(1440, 1080), pad=(240, 0, 240, 0), out=(1920, 1080))
    p = plan_output(640, 200, size=(1280, 720), fit="pad")  # wide into 16:9
    assert p.scaled == (1280, 400) and p.pad == (0, 160, 0, 160)
    p = plan_output(100, 60, size=(302, 300), fit="pad")
    left, top, right, bottom = p.pad
    assert left % 2 == 0 and top % 2 == 0 and left + p.scaled[0] + right == 302 and top + p.scaled[1] + bottom == 300


def test_fit_crop_cuts_the_input_to_the_target_aspect():
    p = plan_output(400, 300, size=(1920, 1080), fit="crop")  # keep width, cut height to 225
    assert p == Plan(crop=(0, 37, 400, 225), scaled=(1920, 1080), pad=(0, 0, 0, 0), out=(1920, 1080))
    p = plan_output(640, 200, size=(1280, 720), fit="crop")  # keep height, width 200*16/9 = 355.6
    assert p.crop == (142, 0, 356, 200)


def test_fit_stretch_ignores_aspect():
    assert plan_output(400, 300, size=(1920, 1080), fit="stretch").scaled == (1920, 1080)


def test_impossible_sizes_are_usage_errors():
    with pytest.raises(UsageError, match="shrink"):
        plan_output(1920, 1080, target="720p")
    with pytest.raises(UsageError, match="shrink"):
        plan_output(640, 360, size=(320, 180))
    with pytest.raises(UsageError, match="even"):
        plan_output(640, 360, size=(1281, 721), fit="stretch")
    with pytest.raises(UsageError, match="too large"):
        plan_output(640, 360, scale=40)
    with pytest.raises(UsageError, match="only one"):
        plan_output(640, 360, scale=2, target="1080p")
    with pytest.raises(UsageError):
        plan_output(640, 360, scale=0)
    assert plan_output(1920, 1080, target="720p", allow_downscale=True).out == (1280, 720)
