"""`vsr upscale` end to end on real clips with a tiny real diffusers model (tests/conftest.py).

In-process tests call `upscale_video`; the interruption and bad-input tests run
`python -m vsr.cli upscale ...` in subprocesses, as a user would.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from tests.conftest import child_env
from tests.media import MASTER_DISPLAY, MAX_CLL, audio_packets, decode_video, make_clip
from vsr import video
from vsr.errors import EXIT_CODEC, EXIT_INPUT, EXIT_INTERRUPTED, EXIT_OUTPUT, EXIT_USAGE, OutputError, UsageError
from vsr.targets import plan_output
from vsr.transcode import JOURNAL, EncodeOptions, temp_dir_for, upscale_video

ROOT = Path(__file__).resolve().parents[1]
def _times(path):
    return decode_video(path)[1]


def test_mkv_keeps_frames_timestamps_audio_subtitles_chapters(tmp_path, up):
    src = make_clip(tmp_path / "in.mkv", audio=("aac", "libopus"), subtitles=True, chapters=True, vfr=True, frames=12,
                    attachment=b"a font, say")
    seen = []
    result = upscale_video(src, tmp_path / "out.mkv", upscaler=up, segment_frames=5, progress=seen.append)
    out = tmp_path / "out.mkv"
    assert result.frames == 12 and result.size == (96, 64) and result.dropped_streams == ()
    frames, times = decode_video(out)
    assert len(frames) == 12 and frames[0].shape == (64, 96, 3)
    assert times == _times(src)  # VFR pts, frame for frame
    assert audio_packets(out) == audio_packets(src)  # AAC, Opus, SubRip: same bytes, same timestamps
    with av.open(str(src)) as a, av.open(str(out)) as b:
        assert b.chapters() == a.chapters()
        assert b.metadata["title"] == "vsr test clip"
        assert [(s.type, s.language) for s in b.streams] == [(s.type, s.language) for s in a.streams]
        assert [(s.metadata.get("filename"), s.data) for s in b.streams if s.type == "attachment"] == [
            ("notes.txt", b"a font, say")
        ]
    assert [d["frames_done"] for d in seen] == list(range(1, 13))
    assert not temp_dir_for(out).exists()


def test_mp4_odd_size_rotation_and_sar(tmp_path, up):
    src = make_clip(tmp_path / "in.mp4", width=47, height=33, pix_fmt="yuv444p", rotation=90, sar=Fraction(4, 3),
                    subtitles=True, frames=6)
    result = upscale_video(src, tmp_path / "out.mp4", upscaler=up, scale=2)
    # upright 33x47 with SAR 3:4 displays as 24.75x47 -> 2x, even: 50x94, square pixels
    assert result.size == (50, 94) == plan_output(33, 47, sar=Fraction(3, 4), scale=2).out
    info = video.probe(tmp_path / "out.mp4")
    assert (info.width, info.height, info.rotation, info.sar) == (50, 94, 0, Fraction(1))
    assert _times(tmp_path / "out.mp4") == _times(src)
    assert audio_packets(tmp_path / "out.mp4") == audio_packets(src)


def test_resolution_change_midstream_gives_one_size_and_every_frame(tmp_path, up, caplog):
    """Two MPEG-TS clips joined end to end (as broadcast captures are): 64x48, then 96x64."""
    a = make_clip(tmp_path / "a.ts", width=64, height=48, frames=5, audio=())
    b = make_clip(tmp_path / "b.ts", width=96, height=64, frames=5, audio=(), first_pts=8)  # the TS muxer shifts a clip by its b-frame delay
    src = tmp_path / "ab.ts"
    src.write_bytes(a.read_bytes() + b.read_bytes())
    frames = list(video.decode(src))
    assert len(frames) == 10 and {f.image.shape for f in frames} == {(48, 64, 3)}
    assert "scaling such frames to 64x48" in caplog.text
    result = upscale_video(src, tmp_path / "out.mp4", upscaler=up, scale=2)
    assert result.frames == 10 and result.size == (128, 96)
    assert [f.image.shape for f in video.decode(tmp_path / "out.mp4")] == [(96, 128, 3)] * 10


def test_ten_bit_hdr10_stays_ten_bit_with_its_metadata(tmp_path, up):
    src = make_clip(tmp_path / "in.mkv", color="hdr10", audio=("aac",), frames=4)
    upscale_video(src, tmp_path / "out.mkv", upscaler=up, encode={"options": {"preset": "ultrafast"}})
    info = video.probe(tmp_path / "out.mkv")
    assert info.bit_depth == 10 and info.pix_fmt == "yuv420p10le"
    assert info.colour == video.Colour(primaries=9, transfer=16, matrix=9, range=1)
    assert info.hdr == video.HDR10(MASTER_DISPLAY, MAX_CLL)
    upscale_video(src, tmp_path / "av1.mkv", upscaler=up, encode={"codec": "libsvtav1", "preset": "12"})
    info = video.probe(tmp_path / "av1.mkv")
    assert "av1" in info.codec and info.bit_depth == 10, info
    assert info.hdr == video.HDR10(MASTER_DISPLAY, MAX_CLL)


def test_size_with_pad_and_crop_and_target(tmp_path, up):
    src = make_clip(tmp_path / "in.mp4", audio=(), frames=3)
    r = upscale_video(src, tmp_path / "pad.mp4", upscaler=up, size=(160, 64), fit="pad")
    frames, _ = decode_video(tmp_path / "pad.mp4")
    assert r.size == (160, 64) and frames[0].shape == (64, 160, 3)
    assert frames[0][:, :28].max() <= 24 and frames[0][:, -28:].max() <= 24  # black side bars (32 px)
    assert frames[0][:, 40:120].mean() > 60
    assert upscale_video(src, tmp_path / "crop.mp4", upscaler=up, size="64x64", fit="crop").size == (64, 64)
    assert upscale_video(src, tmp_path / "t.mkv", upscaler=up, target="96p").size == (144, 96)


def test_preview_writes_side_by_side_pngs(tmp_path, up):
    src = make_clip(tmp_path / "in.mp4", audio=(), frames=10)
    result = upscale_video(src, tmp_path / "out.mp4", upscaler=up, preview=3)
    assert [p.name for p in result.previews] == [f"out.preview-{k:02d}.png" for k in range(3)]
    for p in result.previews:
        assert cv2.imread(str(p)).shape == (64, 192, 3)
    assert not (tmp_path / "out.mp4").exists()


def _interrupt_after(n: int):
    def progress(d: dict) -> None:
        if d["frames_done"] >= n:
            raise KeyboardInterrupt

    return progress


@pytest.mark.parametrize("batch", [8, 36])
def test_interrupted_then_resumed_equals_uninterrupted(tmp_path, up, batch):
    """batch 36 = 3 frames of 12 tiles per model call: the resumed run (from frame 4)
    groups frames differently from the uninterrupted one, and must still match it."""
    up = up.with_config(batch=batch)
    src = make_clip(tmp_path / "in.mkv", audio=("aac",), frames=14)
    upscale_video(src, tmp_path / "ref.mkv", upscaler=up, segment_frames=4)
    out = tmp_path / "out.mkv"
    with pytest.raises(KeyboardInterrupt):
        upscale_video(src, out, upscaler=up, segment_frames=4, progress=_interrupt_after(10))
    assert not out.exists()
    journal = [json.loads(x) for x in (temp_dir_for(out) / JOURNAL).read_text().splitlines()]
    assert [r["segment"] for r in journal if "segment" in r] == [0, 1]
    # a damaged segment is found by its hash and redone
    seg1 = temp_dir_for(out) / journal[2]["file"]
    seg1.write_bytes(seg1.read_bytes()[:-10])
    with pytest.raises(OutputError, match="--resume"):
        upscale_video(src, out, upscaler=up, segment_frames=4)
    with pytest.raises(UsageError, match="crf"):
        upscale_video(src, out, upscaler=up, segment_frames=4, encode=EncodeOptions(crf=20), resume=True)
    result = upscale_video(src, out, upscaler=up, segment_frames=4, resume=True)
    assert result.resumed_frames == 4 and result.frames == 14
    a, ta = decode_video(tmp_path / "ref.mkv")
    b, tb = decode_video(out)
    assert ta == tb and all(np.array_equal(x, y) for x, y in zip(a, b)) and len(a) == len(b) == 14
    assert audio_packets(out) == audio_packets(tmp_path / "ref.mkv")


def test_a_failing_encode_thread_stops_the_job_with_its_error(tmp_path, up):
    src = make_clip(tmp_path / "in.mkv", audio=(), frames=12)
    out = tmp_path / "out.mkv"

    def pull_the_rug(d: dict) -> None:
        if d["frames_done"] == 3:
            # moved away in one step (rmtree races the encode thread creating files in it):
            # the encode thread can no longer write its next segment
            temp_dir_for(out).rename(tmp_path / "moved-away")

    with pytest.raises(OutputError, match="cannot write"):
        upscale_video(src, out, upscaler=up, segment_frames=2, progress=pull_the_rug)
    assert not out.exists()


def test_existing_output_needs_overwrite(tmp_path, up):
    src = make_clip(tmp_path / "in.mp4", audio=(), frames=2)
    (tmp_path / "out.mp4").write_bytes(b"keep me")
    with pytest.raises(OutputError, match="--overwrite"):
        upscale_video(src, tmp_path / "out.mp4", upscaler=up)
    assert (tmp_path / "out.mp4").read_bytes() == b"keep me"
    upscale_video(src, tmp_path / "out.mp4", upscaler=up, overwrite=True)
    assert len(decode_video(tmp_path / "out.mp4")[0]) == 2


# ------------------------------------------------------------------ the real command line
def _cli(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "vsr.cli", "upscale", *map(str, args)]


def _env() -> dict:
    return child_env()


def _wait_for_segments(journal: Path, n: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if journal.exists() and sum('"segment"' in x for x in journal.read_text().splitlines()) >= n:
            return
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (rc {proc.returncode}) before segment {n}: {proc.stderr.read()}")
        time.sleep(0.02)
    raise AssertionError("no segment was journalled in time")


def test_cli_ctrl_c_and_kill_9_then_resume_equals_uninterrupted(tmp_path, tiny_model_dir, capsys):
    """Ctrl-C (a real SIGINT to this process), then kill -9 of a real `vsr upscale` process,
    then --resume: the result is frame for frame the uninterrupted run's."""
    import threading

    from vsr.cli import main

    src = make_clip(tmp_path / "in.mkv", width=64, height=48, audio=("aac",), frames=18)
    opts = ["--model", str(tiny_model_dir), "--steps", "1", "--tile", "32", "--overlap", "8", "--device", "cpu",
            "--segment-frames", "3", "--preset", "ultrafast", "--quiet"]
    out, ref = tmp_path / "out.mkv", tmp_path / "ref.mkv"
    journal = temp_dir_for(out) / JOURNAL
    assert main(["upscale", str(src), str(ref), *opts]) == 0
    # 1. Ctrl-C once the first segment is journalled: exit 130, one line, journal kept, no OUT
    returned = threading.Event()

    def interrupt() -> None:
        while not (journal.exists() and '"segment"' in journal.read_text()) and not returned.is_set():
            time.sleep(0.01)
        if not returned.is_set():  # never signal pytest itself once the run is over
            os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    try:
        rc = main(["upscale", str(src), str(out), *opts])
    finally:
        returned.set()
    assert rc == EXIT_INTERRUPTED
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1] == "vsr: interrupted (rerun with --resume to continue)" and not out.exists()
    done = sum('"segment"' in x for x in journal.read_text().splitlines())
    # 2. resume in a real process, kill -9 it once it has journalled one more segment
    run = subprocess.Popen(_cli(src, out, *opts, "--resume"), cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    _wait_for_segments(journal, done + 1, run)
    run.kill()
    run.wait(timeout=60)
    assert not out.exists()
    # 3. resume to the end
    assert main(["upscale", str(src), str(out), *opts, "--resume", "--progress", "json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["event"] == "done" and summary["frames"] == 18 and summary["resumed_frames"] >= 6
    a, ta = decode_video(ref)
    b, tb = decode_video(out)
    assert len(a) == len(b) == 18 and ta == tb
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert audio_packets(out) == audio_packets(ref) == audio_packets(src)
    assert not temp_dir_for(out).exists()


def _bad_cases(tmp_path: Path) -> dict[str, tuple[int, list]]:
    """name -> (expected exit code, arguments) for every kind of bad input."""
    good = make_clip(tmp_path / "good.mp4", audio=(), frames=2)
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "corrupt.mp4").write_bytes(np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    data = make_clip(tmp_path / "full.mp4", frames=12).read_bytes()
    (tmp_path / "truncated.mp4").write_bytes(data[: len(data) // 2])
    with av.open(str(tmp_path / "audio.m4a"), "w") as o:
        from tests.media import _write_tone

        s = o.add_stream("aac", rate=48000)
        _write_tone(o, s, 0.2, 440.0)
    (tmp_path / "exists.mp4").write_bytes(b"x")
    (tmp_path / "afile").write_bytes(b"x")
    o = tmp_path / "o.mp4"
    return {
        "missing": (EXIT_INPUT, [tmp_path / "nope.mp4", o]),
        "empty": (EXIT_INPUT, [tmp_path / "empty.mp4", o]),
        "corrupt": (EXIT_INPUT, [tmp_path / "corrupt.mp4", o]),
        "truncated": (EXIT_INPUT, [tmp_path / "truncated.mp4", o]),
        "no video": (EXIT_INPUT, [tmp_path / "audio.m4a", o]),
        "output folder missing": (EXIT_OUTPUT, [good, tmp_path / "no" / "o.mp4"]),
        "output folder is a file": (EXIT_OUTPUT, [good, tmp_path / "afile" / "o.mp4"]),
        "output exists": (EXIT_OUTPUT, [good, tmp_path / "exists.mp4"]),
        "unknown codec": (EXIT_CODEC, [good, o, "--codec", "libnope"]),
        "audio codec": (EXIT_CODEC, [good, o, "--codec", "aac"]),
        "size 0x0": (EXIT_USAGE, [good, o, "--size", "0x0"]),
        "smaller than input": (EXIT_USAGE, [good, o, "--size", "24x16"]),
        "bad target": (EXIT_USAGE, [good, o, "--target", "hd"]),
        "bad config value": (EXIT_USAGE, [good, o, "--steps", "0"]),
    }


def test_bad_inputs_give_their_exit_code_and_one_line(tmp_path, tiny_model_dir, capsys):
    """Through the dispatcher in this process (the subprocess test below covers the real exit)."""
    from vsr.cli import main

    model = ["--model", tiny_model_dir, "--steps", "1", "--tile", "32", "--overlap", "8", "--device", "cpu"]
    for name, (code, args) in _bad_cases(tmp_path).items():
        rc = main(["upscale", *map(str, model), *map(str, args)])
        err = capsys.readouterr().err
        assert rc == code, f"{name}: rc {rc}, stderr {err!r}"
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("vsr: "), f"{name}: {err!r}"
    assert (tmp_path / "exists.mp4").read_bytes() == b"x"
    assert not (tmp_path / "o.mp4").exists()


def test_cli_process_exit_codes_and_one_line(tmp_path):
    for name in ("corrupt",):
        code, args = _bad_cases(tmp_path)[name]
        run = subprocess.run(_cli(*args), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
        assert run.returncode == code, f"{name}: {run.stderr!r}"
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("vsr: "), f"{name}: {run.stderr!r}"


@pytest.mark.slow
def test_shipped_prior_upscales_the_sample_clip(tmp_path):
    prior = ROOT / "vsr" / "weights" / "vsr-prior-s"
    if not (prior / "unet").exists():
        pytest.skip("the shipped prior vsr/weights/vsr-prior-s is not there yet")
    sample = ROOT / "vsr" / "assets" / "sample.mp4"
    # steps 1 keeps this near 10 minutes on 2 busy cores (the default 2 steps doubles it)
    result = upscale_video(sample, tmp_path / "sample_2x.mp4", scale=2, config={"steps": 1})
    info_in, info_out = video.probe(sample), video.probe(tmp_path / "sample_2x.mp4")
    assert (info_out.width, info_out.height) == (2 * info_in.width, 2 * info_in.height)
    assert _times(tmp_path / "sample_2x.mp4") == _times(sample)
    assert audio_packets(tmp_path / "sample_2x.mp4") == audio_packets(sample)
    assert result.frames == len(decode_video(sample)[0])
