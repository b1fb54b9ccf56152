"""Issue 11, items 1-4 and 15: timestamps, alpha, damaged input and what new users tripped on.

Every input is made by the test (tests/media_streams.py); the engine is the tiny model of
tests/conftest.py, so each case costs seconds.
"""
from __future__ import annotations

import json
from fractions import Fraction

import av
import cv2
import numpy as np
import pytest

from tests.media import audio_packets, decode_video, make_clip
from tests.media_streams import (
    AUDIO_DELAY,
    SAMPLE_RATE,
    alpha_clip,
    alpha_plane,
    faststart_mp4_cut,
    late_ts,
    mkv_corrupt,
    mkv_cut,
    raw_stream,
)
from vsr import io
from vsr.errors import EXIT_INPUT, EXIT_USAGE, InputError, UsageError
from vsr.transcode import JOURNAL, temp_dir_for, upscale_video

TINY = ["--steps", "1", "--tile", "32", "--overlap", "8", "--device", "cpu", "--preset", "ultrafast"]


def _first_times(path) -> dict[str, list[float]]:
    """Per stream type, the sorted presentation times (s) of its packets."""
    times: dict[str, list[float]] = {}
    with av.open(str(path)) as c:
        for p in c.demux():
            if p.size and p.pts is not None:
                times.setdefault(p.stream.type, []).append(float(p.pts * p.time_base))
    return {k: sorted(v) for k, v in times.items()}


def _cli(tiny_model_dir, *args) -> list[str]:
    return ["upscale", *map(str, args), "--model", str(tiny_model_dir), *TINY]


# ---------------------------------------------------------------- 1. a video that starts late
@pytest.mark.parametrize("start_s", [3600, 1])
def test_late_start_is_shifted_to_zero_keeping_offsets_and_spacing(tmp_path, up, start_s):
    src = late_ts(tmp_path / "late.ts", start_s)
    before = _first_times(src)
    assert before["video"][0] == pytest.approx(start_s)
    out = tmp_path / "out.mkv"
    upscale_video(src, out, upscaler=up)
    after = _first_times(out)
    assert len(after["video"]) == 12
    assert after["video"][0] == pytest.approx(0, abs=1e-3)
    offset = before["audio"][0] - before["video"][0]  # the TS muxer's audio start, about AUDIO_DELAY later
    assert offset > 0 and abs(offset - AUDIO_DELAY / SAMPLE_RATE) < 0.03
    assert after["audio"][0] == pytest.approx(offset, abs=1e-3)  # milliseconds in Matroska
    assert np.allclose(np.diff(after["video"]), 1 / 24, atol=1e-3)


# ---------------------------------------------------------------- 2. frames without timestamps
@pytest.mark.parametrize("kind, fps", [("h264", 30), ("mjpeg", 25)])
def test_raw_stream_frames_are_numbered_from_its_rate(tmp_path, up, kind, fps):
    """.h264 declares 30 fps in its SPS; raw MJPEG declares nothing: FFmpeg's 25 fps."""
    src = raw_stream(tmp_path / f"raw.{kind}", codec="libx264" if kind == "h264" else "mjpeg", fmt=kind,
                     pix_fmt="yuv420p" if kind == "h264" else "yuvj420p")
    frames = list(io.decode(src))
    assert [float(f.pts * f.time_base) for f in frames] == pytest.approx([k / fps for k in range(12)])
    out = tmp_path / "out.mkv"
    upscale_video(src, out, upscaler=up)
    times = _first_times(out)["video"]
    assert len(times) == 12 and times[-1] == pytest.approx(11 / fps, abs=1e-3)
    assert io.probe(out).duration == pytest.approx(12 / fps, abs=0.01)


# ---------------------------------------------------------------- 3. alpha
@pytest.mark.parametrize("codec, pix_fmt, out_name, out_codec, out_fmt", [
    ("qtrle", "argb", "out.mkv", "ffv1", "yuva444p"),
    ("prores_ks", "yuva444p10le", "out.mov", "prores_ks", "yuva444p10le"),
    ("png", "rgba", "out.mov", "png", "rgba"),
])
def test_alpha_is_upscaled_and_written_when_the_output_holds_it(tmp_path, up, codec, pix_fmt, out_name, out_codec,
                                                                 out_fmt):
    src = alpha_clip(tmp_path / "in.mov", codec, pix_fmt)
    assert io.probe(src).alpha
    out = tmp_path / out_name
    upscale_video(src, out, upscaler=up, scale=2, encode={"codec": out_codec})
    info = io.probe(out)
    assert info.alpha and info.pix_fmt.startswith(out_fmt[:5]) and (info.width, info.height) == (64, 48)
    frames = list(io.decode(out))
    assert len(frames) == 4
    peak = np.iinfo(frames[0].alpha.dtype).max
    a = frames[0].alpha.astype(np.float64) / peak
    want = cv2.resize(alpha_plane(32, 24), (64, 48), interpolation=cv2.INTER_NEAREST) / 255.0
    inner = np.ones_like(want, bool)
    inner[:, 28:36] = inner[20:28, :] = False  # away from the edges the bicubic blurs
    assert np.abs(a - want)[inner].max() < 0.02


def test_alpha_dropped_with_one_warning_when_the_output_cannot_hold_it(tmp_path, up, caplog):
    src = alpha_clip(tmp_path / "in.mov", "png", "rgba")
    upscale_video(src, tmp_path / "out.mp4", upscaler=up)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "transparency is dropped" in warnings[0]
    assert not io.probe(tmp_path / "out.mp4").alpha


def test_alpha_pixel_format_for_opaque_input_is_refused(tmp_path, tiny_model_dir, capsys):
    from vsr.cli import main

    src = make_clip(tmp_path / "in.mkv", audio=(), frames=2)
    rc = main(_cli(tiny_model_dir, src, tmp_path / "out.mkv", "--codec", "ffv1", "--pix-fmt", "yuva420p"))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == EXIT_USAGE and len(err) == 1 and "opaque" in err[0]
    # VP9 keeps alpha in side data vsr's segments do not carry: asking for it is refused too
    src = alpha_clip(tmp_path / "a.mov")
    with pytest.raises(UsageError, match="outside its packets"):
        upscale_video(src, tmp_path / "out.webm", upscaler=None, encode={"codec": "libvpx-vp9", "pix_fmt": "yuva420p"})
    assert not (tmp_path / "out.mkv").exists() and not temp_dir_for(tmp_path / "out.mkv").exists()


def test_stream_upscales_the_alpha_plane_of_frames():
    from vsr.engine import resize_alpha

    a = alpha_plane(32, 24)
    b = resize_alpha(a, 48, 64)
    assert b.shape == (48, 64) and b.dtype == np.uint8 and b[10, 5] == 255 and b[40, 60] == 0
    assert resize_alpha(None, 4, 4) is None


# ---------------------------------------------------------------- 4. truncated or damaged input
@pytest.mark.parametrize("make", [faststart_mp4_cut, mkv_cut, mkv_corrupt])
def test_truncated_or_damaged_input_finishes_what_decodes_and_says_so(tmp_path, tiny_model_dir, capsys, make):
    from vsr.cli import main

    src = make(tmp_path / f"in{'.mp4' if make is faststart_mp4_cut else '.mkv'}")
    out = tmp_path / "out.mkv"
    assert main(_cli(tiny_model_dir, src, out, "--progress", "json")) == 0
    done = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    written = len(decode_video(out)[0])
    assert 0 < written < 8 and done["frames"] == written and done["declared_frames"] == 8
    assert done["warning"].startswith(f"wrote {written} of 8 declared frames: ")
    # --strict: exit 3, one line, no OUT, no work folder
    out2 = tmp_path / "strict.mkv"
    assert main(_cli(tiny_model_dir, src, out2, "--strict", "--quiet")) == EXIT_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vsr: ") and "declared frames" in err[0]
    assert not out2.exists() and not temp_dir_for(out2).exists()


def test_a_packet_that_fails_to_decode_is_skipped_and_reported(tmp_path):
    """The decoder's error path, forced: a packet whose decode raises is skipped, reported
    to on_error, and the frames after it still come out (ffmpeg's default)."""
    from vsr.io import decoder

    class Bad:
        size = 1

        def decode(self):
            raise av.InvalidDataError(1094995529, "Invalid data found when processing input")

    src = make_clip(tmp_path / "in.mkv", audio=(), frames=4, bframes=False)
    with av.open(str(src)) as c:
        packets = [p for p in c.demux(video=0)]
        good = list(decoder._decoded_frames(iter(packets)))
    with av.open(str(src)) as c:
        packets = [p for p in c.demux(video=0)]
        seen: list[str] = []
        frames = list(decoder._decoded_frames(iter([*packets[:1], Bad(), *packets[1:]]), seen.append))
    assert len(frames) == len(good) == 4 and len(seen) == 1 and seen[0].startswith("a damaged packet")
    with pytest.raises(av.InvalidDataError):
        list(decoder._decoded_frames(iter([Bad()])))


def test_shortfall_message():
    from vsr.pipelines.transcode import shortfall

    assert shortfall(12, 12, True, []) is None
    assert shortfall(11, 12, False, []) is None  # an estimate (duration x rate) may be a frame off
    assert shortfall(11, 12, True, []) == "wrote 11 of 12 declared frames: the input ends early (truncated or damaged)"
    msg = shortfall(10, 12, False, ["a damaged packet could not be decoded (x)"] * 2)
    assert msg == "wrote 10 of 12 declared frames: 2 damaged packets could not be decoded"


# ---------------------------------------------------------------- 15. what new users tripped on
def test_stream_takes_av_video_frames_and_keeps_pts(up):
    frames = []
    for i in range(3):
        f = av.VideoFrame.from_ndarray(np.full((16, 24, 3), 40 * i, np.uint8), format="rgb24")
        f.pts, f.time_base = 1000 + 7 * i, Fraction(1, 90000)
        frames.append(f)
    outs = list(up.with_config(scale=2.0).stream(iter(frames)))
    assert all(isinstance(o, av.VideoFrame) for o in outs)
    assert [(o.width, o.height, o.pts, o.time_base) for o in outs] == [(48, 32, 1000 + 7 * i, Fraction(1, 90000))
                                                                       for i in range(3)]


def test_version_flag(capsys):
    from importlib.metadata import version

    from vsr.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"vsr {version('vsr')}"


def test_resume_reads_segment_frames_from_the_journal(tmp_path, up):
    src = make_clip(tmp_path / "in.mkv", audio=(), frames=9)
    out = tmp_path / "out.mkv"

    def stop_after_4(d):
        if d["frames_done"] >= 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        upscale_video(src, out, upscaler=up, segment_frames=3, progress=stop_after_4)
    header = json.loads((temp_dir_for(out) / JOURNAL).read_text().splitlines()[0])["header"]
    assert header["segment_frames"] == 3
    result = upscale_video(src, out, upscaler=up, resume=True)  # no segment_frames: the journal's 3
    assert result.resumed_frames == 3 and result.frames == 9


def test_default_segments_keep_work_on_short_clips():
    from vsr.pipelines.transcode import default_segment_frames

    sample = io.probe("vsr/assets/sample.mp4")  # 4 s at 24 fps
    assert default_segment_frames(sample, sample.frames) == 24  # four 1 s segments
    assert default_segment_frames(sample, 24 * 600) == 96  # a long video: 4 s
    assert default_segment_frames(sample, 24 * 8) == 48
    assert default_segment_frames(sample, 6) == 24  # at least 1 s


def test_webm_output_reencodes_aac_to_opus(tmp_path, up, caplog):
    src = make_clip(tmp_path / "in.mkv", audio=("aac", "libopus"), frames=12)
    out = tmp_path / "out.webm"
    result = upscale_video(src, out, upscaler=up)  # no codec named: VP9, as FFmpeg's webm muxer picks
    assert result.dropped_streams == ()
    with av.open(str(out)) as c:
        assert [(s.type, s.codec_context.name) for s in c.streams] == [("video", "vp9"), ("audio", "opus"),
                                                                         ("audio", "opus")]
        assert [s.language for s in c.streams.audio] == ["eng", "fra"]
    assert audio_packets(out)[1] == audio_packets(src)[1]  # the Opus track is copied, byte for byte
    with av.open(str(out)) as c:
        n = sum(f.samples for f in c.decode(audio=0))
    assert abs(n - 0.5 * SAMPLE_RATE) < 2000  # the AAC track's half second, re-encoded
    assert sum("re-encoded to libopus" in r.getMessage() for r in caplog.records) == 1


def test_preview_says_which_side_is_which(tmp_path, up):
    src = make_clip(tmp_path / "in.mp4", audio=(), frames=4, width=96, height=64)
    (path,) = upscale_video(src, tmp_path / "out.mp4", upscaler=up, preview=1).previews
    img = cv2.imread(str(path))
    h, w = img.shape[:2]
    for left in (0, w // 2):  # white label text with a black outline in each half's top-left corner
        corner = img[: h // 4, left : left + w // 4]
        assert (corner.min(axis=2) > 200).sum() > 5 and (corner.max(axis=2) < 50).sum() > 5


def test_start_and_duration_are_frame_exact_and_start_at_zero(tmp_path, up):
    src = late_ts(tmp_path / "late.ts", 10, frames=24)
    out = tmp_path / "part.mkv"
    seen = []
    result = upscale_video(src, out, upscaler=up, start=0.25, duration=0.25, progress=seen.append)
    assert result.frames == result.declared_frames == 6 and seen[-1]["total"] == 6
    times = decode_video(out)[1]
    assert times == pytest.approx([k / 24 for k in range(6)], abs=1e-3)
    # the same frames as a whole-video run's frames 6..11 (frame indices, so the noise, are the source's)
    whole = tmp_path / "whole.mkv"
    upscale_video(src, whole, upscaler=up, encode={"codec": "ffv1"})
    upscale_video(src, out, upscaler=up, start=0.25, duration=0.25, encode={"codec": "ffv1"}, overwrite=True)
    assert all(np.array_equal(a, b) for a, b in zip(decode_video(whole)[0][6:12], decode_video(out)[0], strict=True))
    audio = _first_times(out)["audio"]
    assert 0 <= audio[0] < 0.03 and audio[-1] < 0.25
    with pytest.raises(UsageError, match="past the end"):
        upscale_video(src, tmp_path / "x.mkv", upscaler=up, start=5)
    with pytest.raises(UsageError, match="--duration"):
        upscale_video(src, tmp_path / "x.mkv", upscaler=up, duration=0)


def test_strict_is_quiet_on_a_whole_file(tmp_path, up):
    src = make_clip(tmp_path / "in.mp4", audio=(), frames=6)
    result = upscale_video(src, tmp_path / "out.mp4", upscaler=up, strict=True)
    assert result.frames == result.declared_frames == 6 and result.warning is None
    with pytest.raises(InputError):
        upscale_video(faststart_mp4_cut(tmp_path / "cut.mp4"), tmp_path / "o.mp4", upscaler=up, strict=True)
