"""What a new user tripped on (the second pass): each on a tiny real file the test makes.

.ts output keeps AAC, a variable-frame-rate Matroska file is not "truncated", duplicate
timestamps are renumbered instead of failing at the mux, .avi and unknown extensions are
bad arguments, a second run on one OUT is refused before the model loads, --resume of a
finished job says why it cannot tell, a full-reference eval leaves NIQE out on small
frames, an overlap above half the tile is a config error, and the small ones.
"""
from __future__ import annotations

import logging
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from tests.media import decode_video, make_clip, moving_picture
from vsr import io
from vsr.errors import EXIT_OUTPUT, EXIT_USAGE, CodecError, ConfigError, InputError, OutputError, UsageError
from vsr.transcode import temp_dir_for, upscale_video

OPTS = ["--steps", "1", "--tile", "32", "--overlap", "8", "--device", "cpu", "--dtype", "float32",
        "--preset", "ultrafast", "--quiet"]


def _main(capsys, *args) -> tuple[int, list[str]]:
    """Run `vsr upscale ARGS` in this process: (exit code, stderr lines)."""
    from vsr.cli import main

    code = main(["upscale", *map(str, args)])
    return code, capsys.readouterr().err.strip().splitlines()


def _clip_with_pts(path: Path, pts: list[int], time_base: Fraction, fps: int = 24) -> Path:
    """An x264 clip (no B-frames) whose frames have exactly these pts."""
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt, vs.time_base = 48, 32, "yuv420p", time_base
        vs.codec_context.time_base = time_base
        vs.codec_context.options = {"bframes": "0", "preset": "ultrafast"}
        for i, p in enumerate(pts):
            f = av.VideoFrame.from_ndarray(moving_picture(i, 48, 32), format="rgb24")
            f.pts, f.time_base = p, time_base
            out.mux(vs.encode(f))
        out.mux(vs.encode(None))
    return path


# ---------------------------------------------------------------- 1. AAC in MPEG-TS
def test_ts_output_keeps_aac_audio(tmp_path, up, caplog):
    src = make_clip(tmp_path / "a.ts", audio=("aac",), frames=8)
    out = tmp_path / "out.ts"
    result = upscale_video(src, out, upscaler=up)
    assert result.dropped_streams == ()
    assert not [r for r in caplog.records if "left out" in r.getMessage() or "re-encoded" in r.getMessage()]
    with av.open(str(out)) as c:
        assert [(s.type, s.codec_context.name) for s in c.streams] == [("video", "h264"), ("audio", "aac")]
        assert sum(f.samples for f in c.decode(audio=0)) > 0.2 * 48000


# ---------------------------------------------------------------- 2. VFR Matroska is whole
def test_vfr_matroska_is_not_called_truncated_and_counts_its_frames(tmp_path, up):
    """6 frames over 0.42 s at a nominal 24 fps: duration x rate says 10."""
    src = _clip_with_pts(tmp_path / "vfr.mkv", [0, 100, 150, 250, 300, 380], Fraction(1, 1000))
    assert io.probe(src).frames == 10
    totals = []
    result = upscale_video(src, tmp_path / "o.mkv", upscaler=up, strict=True, progress=lambda d: totals.append(d["total"]))
    assert result.warning is None and result.frames == 6 and result.declared_frames == 6
    assert set(totals) == {6}


def test_present_frames_judges_truncation_by_timestamps():
    from vsr.pipelines.transcode import present_frames, shortfall

    info = io.VideoInfo("x.mkv", "matroska", 0, "h264", 48, 32, 0, Fraction(1), Fraction(1, 1000), Fraction(24), 8,
                        8 / 24, "yuv420p", 8, io.Colour(), None)
    whole = io.FrameIndex(tuple(round(k * 1000 / 24) for k in range(8)), ())
    cut = io.FrameIndex(whole.pts[:5], ())
    assert present_frames("x.mkv", info, whole)[:2] == (8, False)
    assert present_frames("x.mkv", info, cut)[:2] == (8, True)  # expected: what the whole file would have had
    assert shortfall(8, 8, False, [], ends_early=True) == "wrote 8 of 8 declared frames: the input ends early (truncated or damaged)"


# ---------------------------------------------------------------- 3. duplicate timestamps
def test_duplicate_timestamps_are_renumbered_with_one_warning(tmp_path, up, caplog):
    src = _clip_with_pts(tmp_path / "dup.mp4", [0] * 8, Fraction(1, 24))
    out = tmp_path / "out.mp4"
    with caplog.at_level(logging.WARNING):
        result = upscale_video(src, out, upscaler=up, segment_frames=3)
    frames, times = decode_video(out)
    assert result.frames == len(frames) == 8
    steps = np.diff(times)  # one frame spacing each (1 / the rate the file declares)
    assert (steps > 0).all() and steps == pytest.approx([steps[0]] * 7, abs=1e-4)
    assert sum("renumbered" in r.getMessage() for r in caplog.records) == 1


# ---------------------------------------------------------------- 4. .avi, 9. unknown extension
@pytest.mark.parametrize("name, words", [("o.avi", ("does not write .avi",)), ("o.xyz", ("cannot tell the container",))])
def test_avi_and_unknown_extensions_are_bad_arguments_before_any_work(tmp_path, tiny_model_dir, capsys, name, words):
    src = make_clip(tmp_path / "in.mkv", audio=(), frames=4)
    out = tmp_path / name
    code, err = _main(capsys, src, out, "--model", tiny_model_dir, *OPTS)
    assert code == EXIT_USAGE and len(err) == 1 and err[0].startswith("vsr: ") and all(w in err[0] for w in words)
    assert not out.exists() and not temp_dir_for(out).exists()


# ---------------------------------------------------------------- 5. the lock before the model
def test_a_second_run_is_refused_before_the_model_loads(tmp_path, capsys):
    from vsr.jobs.lock import lock_work_folder

    src = make_clip(tmp_path / "in.mkv", audio=(), frames=4)
    out = tmp_path / "out.mkv"
    lock, _ = lock_work_folder(temp_dir_for(out))  # another run holds this job (flock: per open file)
    try:
        # a model that cannot load: the refusal must come first (before: exit 5, the model's error)
        code, err = _main(capsys, src, out, "--model", tmp_path / "no-such-model", *OPTS)
    finally:
        lock.abandon()
    assert code == EXIT_OUTPUT and len(err) == 1 and "is running this job" in err[0]
    assert not temp_dir_for(out).exists()


def test_a_failed_set_up_leaves_no_work_folder(tmp_path, capsys):
    src = make_clip(tmp_path / "in.mkv", audio=(), frames=4)
    out = tmp_path / "out.mkv"
    code, _ = _main(capsys, src, out, "--model", tmp_path / "no-such-model", *OPTS)
    assert code == 5 and not temp_dir_for(out).exists()  # a rerun is not told of an "interrupted run"


# ---------------------------------------------------------------- 6. --resume of a finished job
def test_resume_of_a_finished_job_says_it_cannot_tell(tmp_path, up):
    src = make_clip(tmp_path / "in.mkv", audio=(), frames=4)
    out = tmp_path / "out.mkv"
    upscale_video(src, out, upscaler=up)
    before = out.read_bytes()
    with pytest.raises(OutputError, match="no interrupted run to resume.*cannot tell"):
        upscale_video(src, out, upscaler=up, resume=True)
    assert out.read_bytes() == before


# ---------------------------------------------------------------- 7. NIQE with a reference
def test_full_reference_eval_leaves_niqe_out_on_small_frames(caplog):
    from vsr import metrics
    from vsr.evaluate import evaluate_frames

    frames = [moving_picture(i, 64, 48) for i in range(3)]
    model = metrics.load_niqe_model(None)
    with caplog.at_level(logging.WARNING):
        result = evaluate_frames(frames, [f.copy() for f in frames], niqe_model=model)
    assert "niqe" not in result.summary and result.summary["psnr"] == float("inf") or result.summary["psnr"] > 60
    assert sum("NIQE is left out" in r.getMessage() for r in caplog.records) == 1
    with pytest.raises(InputError, match="--no-niqe"):  # no reference: NIQE is the point, so it stays an error
        evaluate_frames(frames, niqe_model=model)


# ---------------------------------------------------------------- 8. overlap and the tile
def test_an_overlap_above_half_the_tile_is_a_config_error_whoever_sets_the_tile(tiny_model_dir):
    from vsr.engine import Upscaler

    with pytest.raises(ConfigError, match="overlap.*at most half the tile \\(the model's crop 32\\)"):
        Upscaler.from_pretrained(str(tiny_model_dir), overlap=300)
    # an explicit 32 is not capped in silence on a 32-px crop (it was, being the old default's value)
    with pytest.raises(ConfigError, match="overlap.*at most half the tile \\(the model's crop 32\\)"):
        Upscaler.from_pretrained(str(tiny_model_dir), overlap=32)
    with pytest.raises(ConfigError, match="overlap.*at most half the tile \\(tile 32\\)"):
        Upscaler.from_pretrained(str(tiny_model_dir), tile=32, overlap=20)
    assert Upscaler.from_pretrained(str(tiny_model_dir)).overlap == 16  # auto: 32, at most half a 32 px crop
    assert Upscaler.from_pretrained(str(tiny_model_dir), overlap=16).overlap == 16
    assert Upscaler.from_pretrained(str(tiny_model_dir), tile=128).overlap == 32


def test_overlap_300_on_the_command_line_exits_2(tmp_path, tiny_model_dir, capsys):
    src = make_clip(tmp_path / "in.mkv", audio=(), frames=4)
    out = tmp_path / "o.mkv"
    code, err = _main(capsys, src, out, "--model", tiny_model_dir, "--overlap", "300", "--device", "cpu", "--quiet")
    assert code == EXIT_USAGE and len(err) == 1 and "--overlap 300 is invalid" in err[0]
    assert not out.exists() and not temp_dir_for(out).exists()


# ---------------------------------------------------------------- 9. the small ones
def test_crf_outside_the_codecs_range_is_refused(tmp_path):
    from vsr.transcode import EncodeOptions

    info = io.probe(make_clip(tmp_path / "in.mkv", audio=(), frames=2))
    with pytest.raises(UsageError, match="--crf 99 is outside libx264's range 0-51"):
        EncodeOptions(crf=99).settings(info)
    assert EncodeOptions(crf=51).settings(info).crf == 51


def test_small_wording_and_version_and_empty_frames(tiny_model_dir):
    from importlib.metadata import version

    import vsr
    from vsr.engine import Upscaler
    from vsr.pipelines.transcode_parts import frame_span

    with pytest.raises(CodecError, match="'aac' is an audio encoder"):
        io.check_codec("aac")
    messages = []
    for d in (0, -1):
        with pytest.raises(UsageError) as exc:
            frame_span("unused.mkv", None, None, d)
        messages.append(str(exc.value).rsplit(" got ", 1)[0])
    assert messages[0] == messages[1] == "--duration must be a number of seconds above 0,"
    assert vsr.__version__ == version("vsr")
    with pytest.raises(InputError, match="H, W >= 1"):
        Upscaler.from_pretrained(str(tiny_model_dir), overlap=8)(np.zeros((0, 0, 3), np.uint8))


# ------------------------------------------------------- MPEG audio copied, not re-encoded
def _audio_codecs(path: Path) -> list[str]:
    with av.open(str(path)) as c:
        return [s.codec_context.codec.canonical_name for s in c.streams.audio]


@pytest.mark.parametrize("ext", [".ts", ".mkv"])
def test_mpeg_audio_is_copied_by_its_codec_not_its_decoders_name(tmp_path, tiny_model_dir, caplog, ext):
    """MPEG-1/2 audio is decoded by "mp3float": the container's codec list has "mp2"/"mp3",
    so the track was re-encoded (a file) or left out (`vsr stream`) instead of copied."""
    from vsr.pipelines.stream import stream_video

    src = make_clip(tmp_path / "in.ts", audio=("mp2",), frames=6)
    assert len(_audio_codecs(src)) == 1
    out = tmp_path / f"out{ext}"
    with caplog.at_level("WARNING"):
        upscale_video(str(src), str(out), model=str(tiny_model_dir),
                      config={"steps": 1, "tile": 32, "overlap": 8, "device": "cpu"})
        live = tmp_path / "live.ts"
        stream_video(str(src), str(live), model=str(tiny_model_dir), config={"steps": 1}, ladder=False)
    assert _audio_codecs(out) == _audio_codecs(src) == _audio_codecs(live)
    assert not [r for r in caplog.records if "audio" in r.getMessage()], [r.getMessage() for r in caplog.records]
