"""Hostile-but-real inputs for the stream hardening tests (issue 11, items 1-4 and 15),
each made with PyAV in a few milliseconds: a transport stream that starts late, raw
elementary streams without timestamps, clips with transparency, and files cut short or
damaged mid-way. `benchmarks/robustness_cases_streams.py` reuses them for the corpus.
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from tests.media import moving_picture

SAMPLE_RATE = 48000
AUDIO_DELAY = 2400  # samples: the audio of `late_ts` starts 50 ms after its video


def late_ts(path: str | Path, start_s: float, *, frames: int = 12, fps: int = 24) -> Path:
    """MPEG-TS with H.264 video and AAC audio whose first video pts is `start_s` seconds
    (a broadcast or camcorder capture), the audio starting `AUDIO_DELAY` samples later."""
    path = Path(path)
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = 48, 32, "yuv420p"
        vs.codec_context.options = {"preset": "ultrafast", "bframes": "0"}
        vs.codec_context.time_base = Fraction(1, fps)
        a = out.add_stream("aac", rate=SAMPLE_RATE)
        a.layout = "stereo"
        first = round(start_s * fps)
        for i in range(frames):
            f = av.VideoFrame.from_ndarray(moving_picture(i, 48, 32), format="rgb24").reformat(format="yuv420p")
            f.pts, f.time_base = first + i, Fraction(1, fps)
            out.mux(vs.encode(f))
        out.mux(vs.encode(None))
        total = frames * SAMPLE_RATE // fps
        t = np.arange(total, dtype=np.float32) / SAMPLE_RATE
        wave = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        for s0 in range(0, total, 1024):
            chunk = wave[s0 : s0 + 1024]
            fr = av.AudioFrame.from_ndarray(np.stack([chunk, chunk]), format="fltp", layout="stereo")
            fr.sample_rate = SAMPLE_RATE
            fr.pts, fr.time_base = round(start_s * SAMPLE_RATE) + AUDIO_DELAY + s0, Fraction(1, SAMPLE_RATE)
            out.mux(a.encode(fr))
        out.mux(a.encode(None))
    return path


def raw_stream(path: str | Path, *, codec: str = "libx264", fmt: str = "h264", frames: int = 12, fps: int = 30,
               pix_fmt: str = "yuv420p") -> Path:
    """A raw elementary stream (no container, so no timestamps): `.h264` declares `fps`
    in its SPS; raw `.mjpeg` declares no rate at all."""
    path = Path(path)
    with av.open(str(path), "w", format=fmt) as out:
        vs = out.add_stream(codec, rate=fps)
        vs.width, vs.height, vs.pix_fmt = 48, 32, pix_fmt
        if codec == "libx264":
            vs.codec_context.options = {"preset": "ultrafast"}
        for i in range(frames):
            f = av.VideoFrame.from_ndarray(moving_picture(i, 48, 32), format="rgb24").reformat(format=pix_fmt)
            f.pts, f.time_base = i, Fraction(1, fps)
            out.mux(vs.encode(f))
        out.mux(vs.encode(None))
    return path


def alpha_plane(width: int, height: int) -> np.ndarray:
    """HxW uint8 transparency: opaque left half, half-transparent top right, clear bottom right."""
    a = np.zeros((height, width), np.uint8)
    a[:, : width // 2] = 255
    a[: height // 2, width // 2 :] = 128
    return a


def alpha_clip(path: str | Path, codec: str = "qtrle", pix_fmt: str = "argb", *, frames: int = 4,
               width: int = 32, height: int = 24) -> Path:
    """A clip with transparency (`alpha_plane`): qtrle argb (QuickTime Animation), prores_ks
    yuva444p10le (ProRes 4444) or png rgba, in .mov."""
    path = Path(path)
    with av.open(str(path), "w") as out:
        vs = out.add_stream(codec, rate=24)
        vs.width, vs.height, vs.pix_fmt = width, height, pix_fmt
        for i in range(frames):
            rgba = np.dstack([moving_picture(i, width, height), alpha_plane(width, height)])
            f = av.VideoFrame.from_ndarray(rgba, format="rgba").reformat(format=pix_fmt)
            f.pts, f.time_base = i, Fraction(1, 24)
            out.mux(vs.encode(f))
        out.mux(vs.encode(None))
    return path


def _clip8(path: Path) -> Path:
    """8 frames, 64x48, a keyframe every 2 frames, no audio (what is cut or damaged below)."""
    from tests.media import make_clip

    return make_clip(path, frames=8, audio=(), width=64, height=48, keyint=2)


def faststart_mp4_cut(path: str | Path, fraction: float = 0.7) -> Path:
    """An MP4 with its index first (`movflags=faststart`: it declares all 8 frames) cut at
    `fraction` of its bytes: a download that stopped."""
    path = Path(path)
    full = _clip8(path.with_name(path.stem + "-source.mkv"))
    whole = path.with_name(path.stem + "-whole.mp4")
    with av.open(str(full)) as i, av.open(str(whole), "w", options={"movflags": "faststart"}) as o:
        s = o.add_stream_from_template(i.streams.video[0])
        for p in i.demux(i.streams.video[0]):
            if p.size:
                p.stream = s
                o.mux(p)
    data = whole.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def mkv_cut(path: str | Path, fraction: float = 0.7) -> Path:
    """A Matroska file (its header declares the duration of 8 frames) cut at `fraction`."""
    path = Path(path)
    data = _clip8(path.with_name(path.stem + "-whole.mkv")).read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def mkv_corrupt(path: str | Path) -> Path:
    """A Matroska file of 8 frames whose 4th and 5th video packets are overwritten with noise."""
    path = Path(path)
    whole = _clip8(path.with_name(path.stem + "-whole.mkv"))
    data = bytearray(whole.read_bytes())
    with av.open(str(whole)) as c:
        packets = [(p.pos, p.size) for p in c.demux(video=0) if p.size]
    noise = np.random.default_rng(0)
    for pos, size in packets[3:5]:
        data[pos + 2 : pos + size] = noise.integers(0, 256, size - 2, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return path
