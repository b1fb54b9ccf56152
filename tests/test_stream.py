"""`vsr stream`, run as a real process on real sockets (no mocks).

- behind nginx-rtmp (`exec_push`, the empty environment, `exec_kill_signal term`): a
  publisher pushes a clip with audio at real-time pace under a stream name full of shell
  metacharacters, a player pulls the upscaled stream: size, every frame, audio in sync,
  end-to-end latency reported;
- over plain TCP (vsr connects to a socket the test serves MPEG-TS on): SIGTERM or SIGINT mid-stream
  stops within 2 s with the output flushed; a publisher faster than real time is slowed
  down instead of filling memory; a source that goes silent is an error (one line, exit 3);
- a declared resolution above the limit is refused in one line before any work.
The model is the tiny random UNet of conftest (the ladder mostly runs the fast path with
it on a CPU: this tests the plumbing, `tests/test_ladder.py` the controller).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import av
import pytest

from tests.live import Nginx, Received, TsServer, publish, read, sync_offset, vsr_argv, write_clip
from vsr.pipelines.stream import QUEUE_ITEMS

FPS = 15
W, H = 64, 48


def _stats(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _wait_for(predicate, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds} s waiting for {what}")
        time.sleep(0.05)


# ------------------------------------------------------------------------ nginx-rtmp
def test_nginx_rtmp_exec_push_end_to_end(tmp_path, tiny_model_dir, record_property):
    name = "cam;touch${IFS}PWNED|$(id)`id`&x"  # must reach vsr as one argument, never a shell
    frames = 3 * FPS
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    stats = out_dir / "stats-$name.jsonl"  # nginx substitutes $name here too
    argv = vsr_argv() + [
        "stream", "{rtmp}/live/$name", "{rtmp}/hd/$name", "--model", str(tiny_model_dir), "--scale", "2",
        "--threads", "1", f"--stats={stats}", "--log", str(out_dir / "vsr.log"),
    ]
    ng = Nginx(tmp_path / "nginx", f"exec_push {' '.join(argv)};\n            exec_kill_signal term;")
    cwd = os.getcwd()
    os.chdir(tmp_path)  # an injected `touch PWNED` would land here
    try:
        with ng:
            rec = Received()
            threading.Thread(target=read, args=(ng.url("hd", name), rec, 400), daemon=True).start()
            _wait_for(lambda: ng.clients("hd", name) >= 1, 60, "the player to connect")
            pub = publish(ng.url("live", name), frames=frames, fps=FPS, width=W, height=H,
                          ready=lambda: ng.clients("live", name) >= 2)  # vsr subscribed
            vsr_log = out_dir / "vsr.log"
            assert pub.error is None, (pub.error, vsr_log.read_text() if vsr_log.exists() else "no vsr.log", ng.log()[-2000:])
            assert rec.done.wait(120), "the player was not told that the stream ended"
            done_file = out_dir / f"stats-{name}.jsonl"
            _wait_for(lambda: any(d["event"] == "done" for d in _stats(done_file)), 60, "vsr to finish")
            log = ng.log()
    finally:
        os.chdir(cwd)
    assert not list(tmp_path.rglob("PWNED")), "the stream name went through a shell"
    assert rec.error is None, rec.error
    # size, and every published frame, in order, with its timestamp
    assert rec.size == (2 * W, 2 * H)
    assert len(rec.frames) == pub.frames == frames, (len(rec.frames), pub.frames, log[-2000:])
    pts = [p for _, p, _ in rec.frames]
    assert all(b > a for a, b in zip(pts, pts[1:]))
    assert abs((pts[-1] - pts[0]) - (frames - 1) / FPS) < 0.01
    # audio present for the whole clip, and in sync with the picture
    audio_seconds = sum(len(a) for a in rec.audio) / 48000
    assert audio_seconds > frames / FPS - 0.2
    offset = sync_offset(rec)
    assert abs(offset) < 0.03, f"audio is {offset * 1000:.0f} ms off the picture"
    # vsr's own account: nothing dropped, a flushed ending (nginx sent SIGTERM or the input ended)
    done = [d for d in _stats(out_dir / f"stats-{name}.jsonl") if d["event"] == "done"][0]
    assert done["frames"] == frames and done["dropped"] == 0
    # end-to-end latency (publisher mux -> player decode), steady state: the second half
    lat = sorted(rec.frames[i][0] - pub.sent_at[i] for i in range(frames // 2, frames))
    median = lat[len(lat) // 2]
    record_property("e2e_latency_median_s", round(median, 3))
    record_property("vsr_latency_mean_s", done["latency_mean"])
    print(f"\nend-to-end latency (publisher -> nginx -> vsr -> nginx -> player): median {median:.3f} s, "
          f"max {lat[-1]:.3f} s; inside vsr: mean {done['latency_mean']} s; rungs {done['frames_per_rung']}")
    assert median < 2.0 + 1.0  # the budget plus the two server hops and the player's buffer


# ------------------------------------------------------------------- over plain TCP
def _vsr(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen(vsr_argv() + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _count_frames(path: Path) -> int:
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_mid_stream_stops_within_2s_with_the_encoder_flushed(tmp_path, tiny_model_dir, sig):
    clip = write_clip(tmp_path / "in.ts", width=W, height=H, frames=20 * FPS, fps=FPS)
    server = TsServer(clip, 20.0)
    out = tmp_path / "out.ts"
    stats = tmp_path / "stats.jsonl"
    p = _vsr("stream", server.url, str(out), "--model", str(tiny_model_dir), "--threads", "1", f"--stats={stats}")
    _wait_for(lambda: any(d.get("frames", 0) >= 2 * FPS for d in _stats(stats)) or p.poll() is not None, 300,
              "two seconds of output")  # generous: vsr's start-up (torch) on a loaded shared machine
    assert p.poll() is None, p.communicate()
    t0 = time.monotonic()
    p.send_signal(sig)
    _, err = p.communicate(timeout=30)
    took = time.monotonic() - t0
    assert p.returncode == 0, err
    assert took < 2.0 + 0.5, f"stopped {took:.2f} s after {sig.name}"
    done = [d for d in _stats(stats) if d["event"] == "done"][0]
    assert done["stopped"] and not done["input_ended"]
    assert _count_frames(out) == done["frames"] >= 2 * FPS  # all encoded frames are in the file


def test_a_publisher_faster_than_real_time_is_slowed_not_buffered(tmp_path, tiny_model_dir):
    # 1200 frames (48 s at 25 fps) sent as fast as vsr reads; without a bound the queue
    # would hold all the decoded frames (1200 x 57.6 kB = 69 MB of RGB). Scale 1: the
    # bound is the subject here, not the upscaling.
    fps = 25
    clip = write_clip(tmp_path / "in.ts", width=160, height=120, frames=1200, fps=fps, audio=False)
    server = TsServer(clip, 0.0, pace=False)
    out = tmp_path / "out.ts"
    stats = tmp_path / "stats.jsonl"
    p = _vsr("stream", server.url, str(out), "--model", str(tiny_model_dir), "--scale", "1", f"--stats={stats}")
    peak, base = 0, None
    while p.poll() is None:
        try:
            rss = int(next(line for line in Path(f"/proc/{p.pid}/status").read_text().splitlines()
                           if line.startswith("VmRSS:")).split()[1]) * 1024
        except (OSError, StopIteration):  # a read between exit and reaping: the loop condition ends it
            time.sleep(0.05)
            continue
        if base is None and _stats(stats):
            base = rss  # the model loaded and the stream running
        peak = max(peak, rss)
        time.sleep(0.1)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    lines = _stats(stats)
    done = lines[-1]
    assert done["event"] == "done" and done["frames"] == 1200 and done["dropped"] == 0
    assert max(d["queue"] for d in lines[:-1]) <= QUEUE_ITEMS
    assert base is not None, "the stream's memory was never sampled while it ran"
    assert peak - base < 40e6, f"memory grew by {(peak - base) / 1e6:.0f} MB"


def test_a_silent_source_is_an_error_in_one_line(tmp_path, tiny_model_dir):
    clip = write_clip(tmp_path / "in.ts", width=W, height=H, frames=6 * FPS, fps=FPS)
    server = TsServer(clip, 6.0, stall_after=0.5)
    out = tmp_path / "out.ts"
    stats = tmp_path / "stats.jsonl"
    p = _vsr("stream", server.url, str(out), "--model", str(tiny_model_dir), "--threads", "1", "--timeout", "2",
             f"--stats={stats}")
    _, err = p.communicate(timeout=300)
    assert p.returncode == 3, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("vsr: ") and "broke: no data for 2 s" in lines[0], err
    assert _count_frames(out) > FPS  # what was done before the break is in the file
    done = _stats(stats)[-1]  # the statistics still end with "done", saying why
    assert done["event"] == "done" and "no data for 2 s" in done["error"] and done["frames"] == _count_frames(out)


def test_a_declared_resolution_too_large_is_refused_in_one_line(tmp_path, tiny_model_dir):
    big = tmp_path / "big.ts"
    with av.open(str(big), "w") as c:  # one black 4096x2304 frame: 9.4 Mpx, above 4K UHD's 8.3
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 4096, 2304, "yuv420p"
        s.codec_context.options = {"preset": "ultrafast"}
        f = av.VideoFrame(4096, 2304, "yuv420p")
        for plane in f.planes:
            plane.update(bytes(plane.buffer_size))
        f.pts = 0
        c.mux(s.encode(f))
        c.mux(s.encode(None))
    p = _vsr("stream", str(big), str(tmp_path / "out.ts"), "--model", str(tiny_model_dir), "--scale", "1")
    _, err = p.communicate(timeout=300)
    assert p.returncode == 3, err
    assert err.count("\n") == 1 and "4096x2304" in err and "--max-pixels" in err, err
    assert not (tmp_path / "out.ts").exists()
    # a small input asked for an output above the limit: the same, as a usage error
    small = write_clip(tmp_path / "small.ts", width=W, height=H, frames=3, fps=FPS)
    p = _vsr("stream", str(small), str(tmp_path / "out2.ts"), "--model", str(tiny_model_dir), "--target", "4320p")
    _, err = p.communicate(timeout=300)
    assert p.returncode == 2 and err.count("\n") == 1 and "--max-pixels" in err, err


# ---------------------------------------------------------------- the pieces, in-process
def test_an_encoder_option_x264_cannot_parse_is_refused_before_the_destination_opens(tmp_path, tiny_model_dir):
    """libx264 only logs "Error parsing option" for a bad key inside x264-params and goes
    on; a live encode would have run without it for hours."""
    small = write_clip(tmp_path / "small.ts", width=W, height=H, frames=3, fps=FPS)
    p = _vsr("stream", str(small), str(tmp_path / "out.ts"), "--model", str(tiny_model_dir),
             "--encoder-opt", "x264-params=bogus=1")
    _, err = p.communicate(timeout=300)
    assert p.returncode == 6 and err.count("\n") == 1 and "bogus" in err and "tune=" not in err, err
    assert not (tmp_path / "out.ts").exists()


def test_an_encoder_opt_tune_replacing_zerolatency_is_said(tmp_path, tiny_model_dir):
    small = write_clip(tmp_path / "small.ts", width=W, height=H, frames=3, fps=FPS)
    p = _vsr("stream", str(small), str(tmp_path / "out.ts"), "--model", str(tiny_model_dir), "--encoder-opt", "tune=film")
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert "--encoder-opt tune=film replaces --tune zerolatency" in err and "latency" in err


def test_the_container_follows_the_scheme_or_format():
    from vsr.errors import UsageError
    from vsr.io.live import live_format

    assert live_format("rtmp://host/app/name") == "flv"
    assert live_format("srt://host:9000?mode=caller") == "mpegts"
    assert live_format("udp://239.0.0.1:1234") == "mpegts"
    assert live_format("-") == "mpegts"
    assert live_format("rtsp://host/path") == "rtsp"
    assert live_format("out.mkv") == "matroska"
    assert live_format("out") == "mpegts"
    assert live_format("rtmp://host/app/name", "mpegts") == "mpegts"
    with pytest.raises(UsageError, match="unknown output format"):  # --format: a bad argument
        live_format("x.ts", "nosuchformat")


def test_rate_control_and_keyframe_settings():
    from fractions import Fraction

    from vsr.io.live import LiveEncoding

    x264 = {"tune": "zerolatency", "threads": "0", "thread_type": "slice"}
    crf = dict(LiveEncoding().settings(Fraction(30)).options)
    assert crf == {**x264, "g": "60"}  # a keyframe every 2 s at 30 fps
    s = LiveEncoding(bitrate="3M", keyint=1.0).settings(Fraction(25))
    assert s.crf is None and dict(s.options) == {**x264, "g": "25", "b": "3M", "maxrate": "3M", "bufsize": "3M"}
    capped = dict(LiveEncoding(maxrate="4M").settings(None).options)  # unknown rate: keyframes by pts only
    assert capped == {**x264, "maxrate": "4M", "bufsize": "4M"}
    assert LiveEncoding(codec="libvpx-vp9", preset="veryfast").settings(Fraction(30)).preset is None


def test_the_live_encoder_holds_no_frame_back():
    from fractions import Fraction

    import numpy as np

    from vsr.frame import Frame
    from vsr.io.encoder import StreamFormat, configure, to_av_frame
    from vsr.io.live import LiveEncoding
    from vsr.io.source import Colour

    for codec in ("libx264", "libx265"):
        fmt = StreamFormat(LiveEncoding(codec=codec).settings(Fraction(30)), 64, 48, Fraction(1, 90000), Fraction(30),
                           Colour(), None, False)
        cc = av.CodecContext.create(codec, "w")
        configure(cc, fmt)
        cc.open()
        rng = np.random.default_rng(0)
        out = [len(cc.encode(to_av_frame(Frame(rng.integers(0, 255, (48, 64, 3), np.uint8), pts=3000 * i), fmt)))
               for i in range(6)]
        assert out == [1] * 6, (codec, out)


def test_ladder_off_runs_every_frame_through_the_model_in_process(tmp_path, tiny_model_dir):
    from vsr.pipelines.stream import stream_video

    clip = write_clip(tmp_path / "in.ts", width=32, height=24, frames=6, fps=FPS)
    stats = []
    result = stream_video(str(clip), str(tmp_path / "out.ts"), model=str(tiny_model_dir), config={"steps": 1},
                          ladder=False, stats=stats.append, stats_interval=0.0)
    assert result.ended and not result.stopped and result.dropped == 0
    assert result.frames == 6 and result.frames_per_rung == {"steps=1": 6, "fast": 0}
    assert result.size == (64, 48) and _count_frames(tmp_path / "out.ts") == 6
    assert stats[-1]["event"] == "done" and "error" not in stats[-1]
    assert all(d["rung"] == "steps=1" for d in stats[:-1])
