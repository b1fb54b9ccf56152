"""What a new user tripped on with `vsr stream`, the engine's av frames, the Ray address
and the GStreamer element: each on tiny real media the test makes (no mocks).

The process returns the documented code even when the model thread is inside torch as it
exits; option errors are one line with exit 2 (4 for an unwritable --stats file); a
broken input still gets its "done" statistics line; timestamps that go backwards in the
live input are re-stamped instead of failing at the mux.
"""
from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import av
import numpy as np
import pytest

from tests.live import TsServer, vsr_argv, write_clip

FPS = 15


def _vsr(*args: str) -> subprocess.Popen:
    return subprocess.Popen(vsr_argv() + [str(a) for a in args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _stats(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


# ------------------------------------------------------------ the documented exit code
def test_sigterm_while_the_model_thread_is_in_torch_exits_0(tmp_path, tiny_model_dir):
    # 50 steps on 32-px tiles of a 320x240 output: each frame takes seconds in the model
    # thread, which is still inside torch when the stopped stream returns
    clip = write_clip(tmp_path / "in.ts", width=160, height=120, frames=30, fps=FPS, audio=False)
    out = tmp_path / "out.ts"
    p = _vsr("stream", clip, out, "--model", tiny_model_dir, "--ladder", "off", "--threads", "1", "--steps", "50",
             "--tile", "32", "--overlap", "8", "--device", "cpu")
    deadline = time.monotonic() + 300
    while not out.exists() and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.5)  # the first frame is in the model
    assert p.poll() is None, p.communicate()
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert "terminate called" not in err and err.startswith("vsr stream: "), err




def test_sigterm_during_start_up_exits_0_at_once_without_output(tmp_path, tiny_model_dir):
    """A server stopping a worker that is still importing torch or loading the model: exit 0
    and one line, nothing written (it died by the signal, -15, during the imports; later in
    the start-up it loaded and warmed the model up before seeing the stop: 5.4 s)."""
    clip = write_clip(tmp_path / "in.ts", width=32, height=24, frames=FPS, fps=FPS, audio=False)
    out = tmp_path / "out.ts"
    p = _vsr("stream", clip, out, "--model", tiny_model_dir, "--ladder", "off", "--device", "cpu")
    time.sleep(0.3)  # the CLI is importing its modules
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert err.strip().splitlines()[-1] == "vsr stream: stopped before the stream started", err
    assert not out.exists()

def test_a_stream_run_from_python_leaves_no_model_thread_behind(tmp_path, tiny_model_dir):
    """A server calling stream_video once per publisher must not gain a thread per call:
    the model thread ends once the stream has returned (after the call it may be in)."""
    import threading

    from vsr.pipelines.stream import stream_video

    clip = write_clip(tmp_path / "in.ts", width=32, height=24, frames=FPS, fps=FPS, audio=False)
    before = set(threading.enumerate())
    for i in range(2):
        result = stream_video(str(clip), str(tmp_path / f"out{i}.ts"), model=str(tiny_model_dir),
                              config={"steps": 1}, ladder=False)
        assert result.ended and result.frames == FPS
    new = [t for t in threading.enumerate() if t not in before and t.name == "vsr-model"]
    deadline = time.monotonic() + 10
    while any(t.is_alive() for t in new) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [t for t in threading.enumerate() if t not in before and t.name == "vsr-model"]

# ------------------------------------------------------------------------ the engine
def test_a_plain_av_frame_without_time_base_is_upscaled(up):
    frame = av.VideoFrame.from_ndarray(np.full((16, 24, 3), 90, np.uint8), format="rgb24")
    out = up.with_config(scale=2.0)(frame)
    assert isinstance(out, av.VideoFrame) and (out.width, out.height) == (48, 32) and out.time_base is None


# ------------------------------------------------------------------- option errors
def _main(capsys, *args) -> tuple[int, list[str]]:
    """Run `vsr stream ARGS` in this process: (exit code, stderr lines)."""
    from vsr.cli import main

    code = main(["stream", *map(str, args)])
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("option, code, words", [
    (["--stats", "/nonexist/d/s.jsonl"], 4, "--stats file /nonexist/d/s.jsonl"),
    (["--log", "/nonexist/d/vsr.log"], 4, "--log file /nonexist/d/vsr.log"),
    (["--bitrate", "abc"], 2, "--bitrate"),
    (["--maxrate", "4 M"], 2, "--maxrate"),
    (["--timeout", "0"], 2, "--timeout"),
    (["--crf", "99"], 2, "--crf 99 is outside libx264's range 0-51"),
    (["--format", "nosuch"], 2, "unknown output format 'nosuch'"),
    (["--keyint", "0"], 2, "--keyint"),
    (["--max-pixels", "0"], 2, "--max-pixels"),
])
def test_bad_stream_options_are_one_line_before_any_work(tmp_path, capsys, option, code, words):
    clip = write_clip(tmp_path / "in.ts", width=32, height=24, frames=2, fps=FPS, audio=False)
    rc, err = _main(capsys, clip, tmp_path / "out.ts", "--model", tmp_path / "no-model-needed", *option)
    assert (rc, len(err)) == (code, 1) and words in err[0], err
    assert not (tmp_path / "out.ts").exists()


def test_a_small_max_pixels_is_said_in_pixels(tmp_path, tiny_model_dir, capsys):
    clip = write_clip(tmp_path / "in.ts", width=32, height=24, frames=FPS, fps=FPS, audio=False)
    rc, err = _main(capsys, clip, tmp_path / "out.ts", "--model", tiny_model_dir, "--max-pixels", "100")
    assert rc == 3 and len(err) == 1 and "above the 100 pixels a live stream may have" in err[0], err


# ----------------------------------------------------------------- --ray-address
@pytest.mark.parametrize("address, words", [
    ("garbage:::", "--ray-address must be auto, local or HOST:PORT"),
    ("host:99999", "--ray-address must be auto, local or HOST:PORT"),
    ("127.0.0.1:1", "cannot reach a Ray cluster at 127.0.0.1:1"),  # nothing listens on port 1
])
def test_a_bad_ray_address_is_one_line_at_once(tmp_path, tiny_model_dir, capsys, address, words):
    from vsr.cli import main

    clip = write_clip(tmp_path / "in.ts", width=32, height=24, frames=4, fps=FPS, audio=False)
    t0 = time.monotonic()
    rc = main(["upscale", str(clip), str(tmp_path / "out.mp4"), "--model", str(tiny_model_dir), "--runner", "ray",
               "--ray-address", address])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and words in err[0], err
    assert time.monotonic() - t0 < 20


# ------------------------------------------------------------ timestamps going back
def test_timestamps_going_back_are_restamped_with_audio_in_step(tmp_path, tiny_model_dir, caplog):
    from vsr.pipelines.stream import stream_video

    # two MPEG-TS segments whose clocks both start at the same time: a publisher's restart
    a = write_clip(tmp_path / "a.ts", width=32, height=24, frames=2 * FPS, fps=FPS)
    b = write_clip(tmp_path / "b.ts", width=32, height=24, frames=2 * FPS, fps=FPS)
    src = tmp_path / "in.ts"
    src.write_bytes(a.read_bytes() + b.read_bytes())
    out = tmp_path / "out.ts"
    with caplog.at_level("WARNING"):
        result = stream_video(str(src), str(out), model=str(tiny_model_dir), config={"steps": 1}, ladder=False)
    assert result.ended and result.frames == 4 * FPS
    with av.open(str(out)) as c:
        times = {"video": [], "audio": []}
        for pkt in c.demux():
            if pkt.size and pkt.dts is not None:
                times[pkt.stream.type].append(float(pkt.dts * pkt.time_base))
    for kind, ts in times.items():
        assert all(b > a for a, b in zip(ts, ts[1:])), kind
    assert abs(times["video"][-1] - times["audio"][-1]) < 0.2, times  # the second segment's sound still in step
    assert times["video"][-1] > 3.5
    assert 1 <= sum("renumbered" in r.getMessage() for r in caplog.records) <= 2  # once per stream


# --------------------------------------------------------------- a silent stdin producer
def test_a_stdin_producer_that_goes_silent_ends_the_stream_after_timeout(tmp_path, tiny_model_dir):
    """FFmpeg's pipe: read blocks and never sees the interrupt callback: stdin is read through
    a select(2)-bounded reader, so a producer that keeps the pipe open and stops writing ends
    the stream with exit 3 after --timeout, as a silent network source does."""
    data = write_clip(tmp_path / "in.ts", width=64, height=48, frames=2 * FPS, fps=FPS).read_bytes()
    out = tmp_path / "out.ts"
    p = subprocess.Popen(vsr_argv() + ["stream", "-", str(out), "--model", str(tiny_model_dir), "--threads", "1",
                                       "--timeout", "2"], stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdin.write(data[: len(data) // 2])
    p.stdin.flush()  # and keep it open: the producer is alive but silent
    try:
        p.wait(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
        p.stdin.close()
    err = p.stderr.read().decode()
    assert p.returncode == 3, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "input - broke: no data for 2 s" in lines[0], err


# ------------------------------------------------------------ a file read at its own pace
def test_realtime_reads_a_file_no_faster_than_its_timestamps(tmp_path, tiny_model_dir):
    """A file IN is read as fast as it decodes unless --realtime (FFmpeg's -re): then its
    2 s of frames take at least 2 s to arrive. (A lower bound: a slow machine only adds.)"""
    from vsr.pipelines.stream import stream_video

    clip = write_clip(tmp_path / "in.ts", width=32, height=24, frames=2 * FPS, fps=FPS, audio=False)
    fast = stream_video(str(clip), str(tmp_path / "fast.ts"), model=str(tiny_model_dir), config={"steps": 1},
                        ladder=False)
    paced = stream_video(str(clip), str(tmp_path / "paced.ts"), model=str(tiny_model_dir), config={"steps": 1},
                         ladder=False, realtime=True)
    assert fast.frames == paced.frames == 2 * FPS
    assert paced.seconds >= (2 * FPS - 1) / FPS > fast.seconds, (paced.seconds, fast.seconds)


def test_a_signal_ignored_at_launch_stays_ignored_for_the_whole_stream(tmp_path, tiny_model_dir):
    """A shell's background job starts with SIGINT ignored: vsr leaves it so (as Python
    does) instead of ignoring it during the imports and obeying it once the stream runs;
    SIGTERM still stops it."""
    clip = write_clip(tmp_path / "in.ts", width=32, height=24, frames=30 * FPS, fps=FPS, audio=False)
    out = tmp_path / "out.ts"
    p = subprocess.Popen(vsr_argv() + ["stream", str(clip), str(out), "--model", str(tiny_model_dir), "--ladder", "off",
                                       "--device", "cpu", "--realtime"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    deadline = time.monotonic() + 300
    while not out.exists() and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # the stream runs (30 s of input at its own pace)
    p.send_signal(signal.SIGINT)
    time.sleep(1.0)
    assert p.poll() is None, p.communicate()  # ignored (it stopped the stream before)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert err.strip().splitlines()[-1].startswith("vsr stream: "), err
