"""vsr.video on real files made with PyAV: probe, decode, segment files, remux."""
from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest

from tests.media import MASTER_DISPLAY, MAX_CLL, audio_packets, make_clip, remux, stream_format, vfr_pts
from vsr import video
from vsr.errors import CodecError, InputError, OutputError, UsageError


def test_probe_describes_streams_colour_and_timing(tmp_path):
    path = make_clip(tmp_path / "a.mkv", audio=("aac", "libopus"), subtitles=True, vfr=True, frames=9)
    info = video.probe(path)
    assert (info.width, info.height, info.rotation, info.sar) == (48, 32, 0, Fraction(1))
    assert info.bit_depth == 8 and info.pix_fmt == "yuv420p"
    assert info.colour == video.Colour(primaries=1, transfer=1, matrix=1, range=1)
    assert [(s.type, s.codec, s.language) for s in info.streams] == [
        ("audio", "aac", "eng"),
        ("audio", "opus", "fra"),
        ("subtitle", "srt", "eng"),
    ]
    assert info.hdr is None


def test_probe_reads_rotation_sar_and_hdr10(tmp_path):
    info = video.probe(make_clip(tmp_path / "r.mp4", rotation=90, sar=Fraction(4, 3), audio=()))
    assert info.rotation == 90 and info.sar == Fraction(4, 3)
    assert info.upright_size == (32, 48) and info.upright_sar == Fraction(3, 4)
    hdr = video.probe(make_clip(tmp_path / "h.mkv", color="hdr10", audio=()))
    assert hdr.bit_depth == 10 and hdr.colour == video.Colour(primaries=9, transfer=16, matrix=9, range=1)
    assert hdr.hdr == video.HDR10(MASTER_DISPLAY, MAX_CLL)


def test_decode_keeps_vfr_pts_and_counts(tmp_path):
    path = make_clip(tmp_path / "v.mp4", vfr=True, frames=10, audio=())
    frames = list(video.decode(path))
    assert [f.index for f in frames] == list(range(10))
    times = [f.pts * f.time_base for f in frames]
    expected = [p * Fraction(1, 90000) for p in vfr_pts(10, Fraction(1, 90000))]
    assert all(abs(t - e) <= frames[0].time_base for t, e in zip(times, expected))
    assert len(set(np.diff([float(t) for t in times]).round(4))) == 3  # three different durations
    tail = list(video.decode(path, start=6))  # a resumed job: same frames, same timing
    assert [(f.index, f.pts) for f in tail] == [(f.index, f.pts) for f in frames[6:]]
    assert all(np.array_equal(a.image, b.image) for a, b in zip(tail, frames[6:]))


def test_decode_applies_rotation(tmp_path):
    plain = [f.image for f in video.decode(make_clip(tmp_path / "p.mp4", audio=(), frames=3))]
    for rot in (90, 180, 270):
        turned = list(video.decode(make_clip(tmp_path / f"r{rot}.mp4", audio=(), frames=3, rotation=rot)))
        for a, b in zip(plain, turned):
            np.testing.assert_array_equal(b.image, np.rot90(a, rot // 90))


def test_decode_ten_bit_gives_uint16(tmp_path):
    frames = list(video.decode(make_clip(tmp_path / "t.mkv", ten_bit=True, audio=(), frames=3)))
    img = frames[0].image
    assert img.dtype == np.uint16 and img.shape == (32, 48, 3)
    assert img.max() > 40000  # scaled to the full 16-bit range, not 0..1023


def test_segment_file_round_trip_and_abort(tmp_path):
    src = make_clip(tmp_path / "s.mp4", audio=(), frames=6)
    info = video.probe(src)
    fmt = stream_format(info)
    frames = list(video.decode(src))
    with video.SegmentWriter(tmp_path / "one.vsrseg", fmt) as w:
        for f in frames:
            w.write(f)
    packets = list(video.read_segment(tmp_path / "one.vsrseg"))
    assert len(packets) == 6 and packets[0][3]  # starts with a keyframe
    assert sorted(p[0] for p in packets) == [f.pts for f in frames]
    w = video.SegmentWriter(tmp_path / "two.vsrseg", fmt)
    w.write(frames[0])
    w.abort()
    assert not list(tmp_path.glob("two.vsrseg*"))
    w = video.SegmentWriter(tmp_path / "three.vsrseg", fmt)
    w.write(frames[0])
    digest = w.close()
    assert digest == video.file_sha256(tmp_path / "three.vsrseg")


def test_assemble_copies_other_streams_bit_identical(tmp_path):
    src = make_clip(tmp_path / "in.mkv", audio=("aac", "libopus"), subtitles=True, chapters=True, frames=8)
    info = video.probe(src)
    dropped = remux(src, tmp_path / "out.mkv", stream_format(info, global_header=video.needs_global_header("out.mkv")), info)
    assert dropped == []
    assert audio_packets(tmp_path / "out.mkv") == audio_packets(src)
    with av.open(str(src)) as a, av.open(str(tmp_path / "out.mkv")) as b:
        assert b.metadata["title"] == "vsr test clip"
        assert [c["metadata"] for c in b.chapters()] == [c["metadata"] for c in a.chapters()]
        assert [s.language for s in b.streams] == [s.language for s in a.streams]


def test_assemble_leaves_out_what_the_container_cannot_hold(tmp_path):
    src = make_clip(tmp_path / "in.mkv", audio=("aac",), subtitles=True, frames=4)
    info = video.probe(src)
    dropped = remux(src, tmp_path / "out.mp4", stream_format(info), info)
    assert dropped == ["stream 2 (subtitle subrip)"]  # SubRip (FFmpeg's codec id "subrip") has no place in MP4
    payloads = [[p[0] for p in s] for s in audio_packets(tmp_path / "out.mp4")]
    assert payloads == [[p[0] for p in audio_packets(src)[0]]]  # same bytes; MP4 retimes to 1/48000


@pytest.mark.parametrize("case", ["missing", "empty", "folder", "corrupt", "truncated", "no_video"])
def test_unusable_inputs_raise_input_error(tmp_path, case):
    path = tmp_path / "in.mp4"
    if case == "empty":
        path.write_bytes(b"")
    elif case == "folder":
        path.mkdir()
    elif case == "corrupt":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif case == "truncated":
        data = make_clip(tmp_path / "full.mp4", frames=12).read_bytes()
        path.write_bytes(data[: len(data) // 2])  # MP4 keeps its index (moov) at the end
    elif case == "no_video":
        path = tmp_path / "in.m4a"
        with av.open(str(path), "w") as out:
            from tests.media import _write_tone

            s = out.add_stream("aac", rate=48000)
            s.layout = "stereo"
            _write_tone(out, s, 0.2, 440.0)
    with pytest.raises(InputError):
        video.probe(path)


def test_encoder_checks_are_codec_errors():
    with pytest.raises(CodecError, match="unknown encoder"):
        video.check_codec("libnope")
    with pytest.raises(CodecError, match="not a video"):
        video.check_codec("aac")
    with pytest.raises(CodecError, match="cannot encode"):
        video.check_encoder(video.EncoderSettings(codec="libx264", pix_fmt="rgb24"))
    assert video.ten_bit_format("libx264") == "yuv420p10le"
    with pytest.raises(CodecError, match="refused"):
        video.check_encoder_opens(stream_format(width=64, height=48, preset="no-such-preset"))


def test_full_range_untagged_source_keeps_range_and_colours(tmp_path):
    """An untagged full-range SD clip: decoded with BT.601 (the guess for < 720 lines) and
    full range, re-encoded with the same, and the output is tagged so players agree."""
    src = tmp_path / "full.mp4"
    bars = np.zeros((32, 48, 3), np.uint8)
    bars[:, 16:32], bars[:, 32:] = (255, 255, 255), (30, 200, 90)
    with av.open(str(src), "w") as out:
        vs = out.add_stream("libx264", rate=24)
        vs.width, vs.height, vs.pix_fmt = 48, 32, "yuv420p"
        vs.codec_context.color_range = 2
        vs.codec_context.options = {"preset": "ultrafast", "crf": "8"}
        for i in range(3):
            f = av.VideoFrame.from_ndarray(bars, format="rgb24").reformat(
                format="yuv420p", dst_colorspace="ITU601", dst_color_range="JPEG")
            f.pts = i
            out.mux(vs.encode(f))
        out.mux(vs.encode(None))
    info = video.probe(src)
    assert info.colour == video.Colour(primaries=2, transfer=2, matrix=6, range=2)
    frames = list(video.decode(src, info))
    np.testing.assert_allclose(frames[0].image[8, [4, 24, 40]], [[0, 0, 0], [255, 255, 255], [30, 200, 90]], atol=3)
    remux(src, tmp_path / "out.mp4", stream_format(info, crf=8), info, frames)
    assert video.probe(tmp_path / "out.mp4").colour == info.colour
    again = next(video.decode(tmp_path / "out.mp4")).image
    np.testing.assert_allclose(again[8, [4, 24, 40]], [[0, 0, 0], [255, 255, 255], [30, 200, 90]], atol=4)


def test_check_output_fails_early_for_a_container_that_cannot_take_a_stream(tmp_path):
    src = make_clip(tmp_path / "in.mkv", audio=("libopus",), frames=2)
    info = video.probe(src)
    fmt = stream_format(info, width=96, height=64, preset="medium")
    assert video.check_output(src, info, fmt, tmp_path / "out.mkv") == []
    with pytest.raises(OutputError, match="try OUT.mkv"):
        video.check_output(src, info, fmt, tmp_path / "out.mov")  # Opus in QuickTime is experimental
    assert not (tmp_path / "out.mov").exists()


def _combing(img: np.ndarray) -> float:
    """Mean |row difference| between the fields over that within one field."""
    y = img.astype(np.float64).mean(-1)
    across = np.abs(y[1:-1:2] - y[0:-2:2]).mean() + np.abs(y[1:-1:2] - y[2::2]).mean()
    within = np.abs(y[2::2] - y[0:-2:2]).mean()
    return across / 2 / max(within, 1e-6)


def test_interlaced_stream_is_deinterlaced_frame_for_frame(tmp_path):
    path = make_clip(tmp_path / "i.mp4", width=96, height=64, frames=8, audio=(), interlaced=True)
    progressive = make_clip(tmp_path / "p.mp4", width=96, height=64, frames=3, audio=())
    assert video.probe(path).interlaced and not video.probe(progressive).interlaced
    woven = list(video.decode(path, deinterlace="off"))
    auto = list(video.decode(path))
    assert [(f.index, f.pts) for f in auto] == [(f.index, f.pts) for f in woven]  # rate and timing kept
    before = np.mean([_combing(f.image) for f in woven])
    after = np.mean([_combing(f.image) for f in auto])
    assert before > 2.0 and after < 0.5 * before, (before, after)
    resumed = list(video.decode(path, start=5))  # the filter sees the skipped frames too
    assert all(np.array_equal(a.image, b.image) for a, b in zip(resumed, auto[5:]))
    forced = list(video.decode(progressive, deinterlace="on"))
    assert len(forced) == 3
    with pytest.raises(UsageError, match="deinterlace"):
        next(video.decode(path, deinterlace="yes"))
