"""Small real video files for the tests, made with PyAV (no ffmpeg binary needed).

`make_clip` writes a clip whose pictures move (a gradient that drifts plus a bright
square that walks), so encoders, timestamps and upscalers all see real content. Every
knob the transcoder must respect has a switch: audio tracks (AAC, Opus), a subtitle
track, chapters, odd sizes, rotation metadata, sample aspect ratio, variable frame rate
timestamps and 10-bit pixels. The clips are tiny (48x32, a dozen frames) so a test that
makes one costs milliseconds.
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

SAMPLE_RATE = 48000
MASTER_DISPLAY = "G(13250,34500)B(7500,3000)R(34000,16000)WP(15635,16450)L(10000000,50)"
MAX_CLL = (1000, 400)


def moving_picture(i: int, width: int, height: int, *, ten_bit: bool = False) -> np.ndarray:
    """Frame i of the test pattern: HxWx3 RGB, uint8 (or uint16 scaled to 0..65535).

    A diagonal gradient that drifts one pixel per frame and a 6x6 square that walks two
    pixels per frame, so consecutive frames differ and motion is visible.
    """
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    r = (x + i) / max(width, 1)
    g = (y + 0.5 * i) / max(height, 1)
    b = 0.5 + 0.5 * np.sin((x + y + 3 * i) / 5.0)
    img = np.stack([r % 1.0, g % 1.0, b], axis=-1) * 0.8 + 0.1
    s = 6
    cx = (2 * i) % max(width - s, 1)
    cy = (i) % max(height - s, 1)
    img[cy : cy + s, cx : cx + s] = (0.95, 0.9, 0.2)
    if ten_bit:
        return (np.round(img * 1023) * 64).astype(np.uint16)
    return np.round(img * 255).astype(np.uint8)


def vfr_pts(frames: int, time_base: Fraction) -> list[int]:
    """Variable frame rate timestamps: durations alternate 1/30 s, 1/20 s, 1/60 s."""
    durations = [Fraction(1, 30), Fraction(1, 20), Fraction(1, 60)]
    pts, t = [], Fraction(0)
    for i in range(frames):
        pts.append(int(t / time_base))
        t += durations[i % 3]
    return pts


def make_clip(
    path: str | Path,
    *,
    width: int = 48,
    height: int = 32,
    frames: int = 12,
    fps: int = 24,
    codec: str = "libx264",
    audio: tuple[str, ...] = ("aac",),
    subtitles: bool = False,
    chapters: bool = False,
    rotation: int = 0,
    sar: Fraction | None = None,
    vfr: bool = False,
    ten_bit: bool = False,
    color: str | None = "bt709",
    bframes: bool = True,
    pix_fmt: str | None = None,
    attachment: bytes | None = None,
    first_pts: int = 0,
    interlaced: bool = False,
    keyint: int | None = None,
) -> Path:
    """Write a clip to `path` (container from its extension) and return the path.

    audio: codec names ("aac", "libopus"), one stereo sine track each, as long as the
    video. subtitles: one SubRip (mkv) or mov_text (mp4) track with two cues.
    rotation: display-matrix rotation in degrees counter-clockwise (as PyAV reads it).
    vfr: timestamps from `vfr_pts` in a 1/90000 time base (else 1/fps steps).
    pix_fmt: defaults to yuv420p (yuv420p10le for ten_bit); odd sizes need yuv444p.
    attachment: bytes stored as an attached file "notes.txt" (Matroska only).
    first_pts: the first frame's pts (clips meant to be joined end to end, e.g. .ts).
    interlaced: x264 field coding (top field first), and each picture woven from two
    moments (even rows at frame i, odd rows at i + 0.5: the combing of real interlaced
    capture of motion).
    keyint: at most this many frames between keyframes (places `decode(start=)` can seek to).
    color: "bt709" tags BT.709; "hdr10" makes a 10-bit BT.2020/PQ clip with mastering
    display and content light level SEI (`MASTER_DISPLAY`, `MAX_CLL`); None: untagged.
    """
    path = Path(path)
    time_base = Fraction(1, 90000) if vfr else Fraction(1, fps)
    pts_list = vfr_pts(frames, time_base) if vfr else list(range(first_pts, first_pts + frames))
    duration_s = float((pts_list[-1] + (time_base**-1 / fps if not vfr else 1500)) * time_base)
    ten_bit = ten_bit or color == "hdr10"
    pix_fmt = pix_fmt or ("yuv420p10le" if ten_bit else "yuv420p")
    with av.open(str(path), "w") as out:
        out.metadata["title"] = "vsr test clip"
        vs = out.add_stream(codec, rate=fps)
        vs.width, vs.height, vs.pix_fmt = width, height, pix_fmt
        vs.time_base = time_base
        vs.codec_context.time_base = time_base
        opts = {"crf": "20"}
        if not bframes and codec == "libx264":
            opts["bframes"] = "0"
        if codec in ("libx264", "libx265"):
            vs.codec_context.options = {**opts, "preset": "ultrafast" if not bframes else "veryfast"}
            if codec == "libx265":
                vs.codec_context.options = {"crf": "20", "preset": "ultrafast", "x265-params": "log-level=error"}
            if interlaced:
                vs.codec_context.options = {**vs.codec_context.options, "x264-params": "interlaced=1:tff=1"}
        if keyint is not None:
            vs.codec_context.gop_size = keyint
        if sar is not None:
            vs.codec_context.sample_aspect_ratio = sar
        cc = vs.codec_context
        matrix = "ITU709"
        if color == "bt709":
            cc.color_primaries, cc.color_trc, cc.colorspace, cc.color_range = 1, 1, 1, 1
        elif color == "hdr10":
            cc.color_primaries, cc.color_trc, cc.colorspace, cc.color_range = 9, 16, 9, 1
            matrix = "BT2020"
            params = f"mastering-display={MASTER_DISPLAY}:cll={MAX_CLL[0]},{MAX_CLL[1]}"
            cc.options = {**cc.options, "x264-params": params}
        if rotation:
            vs.set_display_rotation(rotation)
        audio_streams = []
        for i, name in enumerate(audio):
            a = out.add_stream(name, rate=SAMPLE_RATE)
            a.layout = "stereo"
            a.metadata["language"] = ["eng", "fra", "deu"][i % 3]
            audio_streams.append(a)
        sub = None
        if subtitles:
            sub = out.add_mux_stream("subrip" if path.suffix == ".mkv" else "mov_text")
            sub.time_base = Fraction(1, 1000)
            sub.metadata["language"] = "eng"
        if attachment is not None:
            out.add_attachment(name="notes.txt", mimetype="text/plain", data=attachment)
        if chapters:
            half = int(duration_s * 500)
            out.set_chapters(
                [
                    {"id": 1, "start": 0, "end": half, "time_base": Fraction(1, 1000), "metadata": {"title": "One"}},
                    {"id": 2, "start": half, "end": 2 * half, "time_base": Fraction(1, 1000), "metadata": {"title": "Two"}},
                ]
            )

        for i, pts in enumerate(pts_list):
            img = moving_picture(i, width, height, ten_bit=ten_bit)
            if interlaced:  # odd rows: the bottom field, captured later, after the picture moved 12 px
                img[1::2] = np.roll(img, 12, axis=1)[1::2]
            frame = av.VideoFrame.from_ndarray(img, format="rgb48le" if ten_bit else "rgb24")
            frame = frame.reformat(format=pix_fmt, dst_colorspace=matrix, dst_color_range="MPEG")
            frame.pts, frame.time_base = pts, time_base
            out.mux(vs.encode(frame))
        out.mux(vs.encode(None))

        for k, a in enumerate(audio_streams):
            _write_tone(out, a, duration_s, 220.0 * (k + 2))
        if sub is not None:
            for start, end, text in ((0, 200, "Hello"), (250, 400, "World")):
                payload = text.encode() if path.suffix == ".mkv" else len(text).to_bytes(2, "big") + text.encode()
                pkt = av.Packet(payload)
                pkt.stream = sub
                pkt.pts = pkt.dts = start
                pkt.duration = end - start
                pkt.time_base = Fraction(1, 1000)
                out.mux(pkt)
    return path


def _write_tone(out: av.container.OutputContainer, stream: av.AudioStream, seconds: float, hz: float) -> None:
    """Encode `seconds` of a stereo sine into `stream` (float planar, 1024-sample frames)."""
    total = int(seconds * SAMPLE_RATE)
    fmt = stream.codec_context.format.name if stream.codec_context.format else "fltp"
    for start in range(0, total, 960):
        n = min(960, total - start)
        t = (np.arange(start, start + n) / SAMPLE_RATE).astype(np.float32)
        wave = (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)
        frame = av.AudioFrame.from_ndarray(np.stack([wave, wave]), format="fltp", layout="stereo")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = start
        frame.time_base = Fraction(1, SAMPLE_RATE)
        if fmt != "fltp":
            frame = frame.reformat(format=fmt) if hasattr(frame, "reformat") else frame
        out.mux(stream.encode(frame))
    out.mux(stream.encode(None))


def audio_packets(path: str | Path) -> list[list[tuple[bytes, int | None, int | None]]]:
    """Per audio/subtitle stream (in stream order): the (payload, pts, dts) of every packet.

    Empty mov_text samples (2 zero bytes) are left out: the MP4 muxer writes them to fill
    the gaps between cues, they are not content.
    """
    with av.open(str(path)) as c:
        streams = [s for s in c.streams if s.type in ("audio", "subtitle")]
        if not streams:
            return []
        result: dict[int, list] = {s.index: [] for s in streams}
        for pkt in c.demux(*streams):
            if pkt.size and not (pkt.stream.codec_context.name == "mov_text" and bytes(pkt) == b"\0\0"):
                result[pkt.stream.index].append((bytes(pkt), pkt.pts, pkt.dts))
        return [result[s.index] for s in streams]


def decode_video(path: str | Path) -> tuple[list[np.ndarray], list[float]]:
    """All video frames of `path` as RGB uint8 arrays plus their times in seconds."""
    with av.open(str(path)) as c:
        frames, times = [], []
        for f in c.decode(video=0):
            frames.append(f.to_ndarray(format="rgb24"))
            times.append(float(f.pts * f.time_base))
        return frames, times


def stream_format(info=None, *, width: int = 48, height: int = 32, global_header: bool = True, **settings):
    """A `vsr.io.StreamFormat` for tests: `info`'s timing and colour (None: 1/24 s, no rate,
    untagged), settings as `EncoderSettings(**settings)` (default: preset ultrafast)."""
    from vsr import io

    enc = io.EncoderSettings(**{"preset": "ultrafast", **settings})
    if info is None:
        return io.StreamFormat(enc, width, height, Fraction(1, 24), None, io.Colour(), None, global_header)
    return io.StreamFormat(enc, width, height, info.time_base, info.rate, info.colour, None, global_header)


def remux(src: str | Path, dst: str | Path, fmt, info=None, frames=None) -> list[str]:
    """Encode `frames` (default: every frame of `src`) into one segment file beside `dst`,
    then assemble it with `src`'s other streams into `dst`; returns the dropped streams."""
    from vsr import io

    info = info or io.probe(src)
    seg = Path(dst).with_suffix(".vsrseg")
    with io.SegmentWriter(seg, fmt) as w:
        for f in frames if frames is not None else io.decode(src, info):
            w.write(f)
    return io.assemble(src, info, [seg], dst, fmt)
