"""Live I/O for `vsr stream`: read a live source once, write a live destination as it goes.

- `LiveInput(source)`: opens any URL FFmpeg reads (`rtmp://`, `srt://`, `rtsp://`,
  `udp://`, `tcp://`, `http(s)://`, a file, "-" for stdin) with a read timeout, and yields
  in arrival order upright RGB `Frame`s of the first video stream and, opaque, the packets
  of every other stream (audio, data) to be copied as they are.
- `LiveOutput(destination, ...)`: encodes `Frame`s (H.264 by default, low-latency
  settings, a keyframe at least every `keyint` seconds) and muxes the copied packets with
  their own timestamps into the container the destination's scheme calls for (`live_format`).

Only this module and the rest of `vsr/io` import PyAV; callers see `Frame`s, `VideoInfo`
and packets they hand back unopened.
"""
from __future__ import annotations

import io
import logging
import os
import re
import select
import sys
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from vsr.errors import CodecError, InputError, OutputError, UsageError
from vsr.frame import Frame
from vsr.io.decoder import Increasing, deinterlaced, same_size, to_rgb
from vsr.io.encoder import (
    EncoderSettings,
    StreamFormat,
    check_crf,
    check_encoder,
    check_encoder_opens,
    codec_id,
    configure,
    output_format,
    storable_codecs,
    to_av_frame,
)
from vsr.io.source import VideoInfo, describe, is_url, reason, video_stream

log = logging.getLogger(__name__)

# scheme -> container: what each kind of server or transport expects
SCHEME_FORMATS = {
    "rtmp": "flv", "rtmps": "flv", "rtmpt": "flv", "rtmpe": "flv", "rtmpte": "flv", "rtmpts": "flv",
    "srt": "mpegts", "udp": "mpegts", "tcp": "mpegts", "unix": "mpegts", "pipe": "mpegts",
    "http": "mpegts", "https": "mpegts", "rtp": "rtp_mpegts", "rtsp": "rtsp",
}
def live_format(destination: str, format: str | None = None) -> str:
    """The container for `destination`: `format` if given, else by scheme (FLV for RTMP,
    MPEG-TS for SRT/UDP/TCP/HTTP and pipes, RTSP for rtsp://), else by file extension
    (MPEG-TS when there is none). A format FFmpeg does not have: UsageError when it is
    `format` (--format), OutputError when it comes from the destination."""
    name = format
    if name is None:
        if destination == "-":
            name = "mpegts"
        elif is_url(destination):
            scheme = destination.split(":", 1)[0].lower()
            name = SCHEME_FORMATS.get(scheme, "mpegts")
        else:
            name = output_format(destination).name if Path(destination).suffix else "mpegts"
    try:
        av.format.ContainerFormat(name, "w")
    except Exception as exc:  # noqa: BLE001 - PyAV raises several types for unknown names
        error = OutputError if format is None else UsageError
        raise error(f"unknown output format {name!r}: try --format flv, mpegts, matroska or mp4") from exc
    return name


# ------------------------------------------------------------------------------ input
class LiveInput:
    """A live source, read once, from where it is.

    Opening blocks until the first video frame has been decoded (that is how the size,
    pixel format and colour are known: `info`). Iterating yields, in arrival order,
    `Frame`s (upright RGB, uint8 or uint16, with the source's pts/time_base, index 0, 1,
    ...) and the other streams' packets as `Copied` (hand them to `LiveOutput.write_packet`).
    A read that waits longer than `timeout` seconds, a broken connection or corrupt data
    raise InputError; the end of the stream (the publisher stopped) ends the iteration.

    Timestamps come out strictly increasing, stream by stream (`vsr.io.decoder.Increasing`,
    as the file decoder and FFmpeg do): a frame or packet not after the previous one of its
    stream (the publisher's encoder restarted, MPEG-TS segments whose clocks restart) gets
    the previous one plus its last spacing, with one warning per stream. Each stream is
    re-stamped on its own clock, so audio stays in sync as long as all streams restart
    together (a publisher's restart does), within about one audio packet.
    """

    def __init__(self, source: str | os.PathLike, *, timeout: float = 10.0, deinterlace: str = "auto",
                 max_pixels: int | None = None):
        self.source = os.fspath(source)
        self._timeout = timeout
        self._deinterlace = deinterlace
        self._pending: deque = deque()  # other streams' packets demuxed before the next frame
        self._clocks: dict[int, Increasing] = {}  # per copied stream: its timestamps made increasing
        self._container = _open(self.source, timeout)
        try:
            vs = video_stream(self._container, self.source)
            vs.thread_type = "SLICE"  # frame threads would hold frames back (latency, and lost at a stop)
            declared = (vs.codec_context.width, vs.codec_context.height)
            if max_pixels and declared[0] * declared[1] > max_pixels:
                raise InputError(
                    f"{self.source} declares {declared[0]}x{declared[1]} video, above the {pixel_count(max_pixels)} "
                    "a live stream may have (--max-pixels)"
                )
            self._video = vs
            self.copied = [s for s in self._container.streams if s.index != vs.index and s.type in ("audio", "data", "subtitle")]
            self._frames = self._video_frames()
            self.info, first = describe(self._container, vs, self.source, self._frames)
            self._first = first
        except BaseException:
            self._container.close()
            raise

    def _video_frames(self) -> Iterator[av.VideoFrame]:
        """The video stream's decoded frames; other packets go to `_pending` as they come."""
        copied = {s.index for s in self.copied}
        try:
            for pkt in self._container.demux():
                if pkt.stream.index == self._video.index:
                    yield from pkt.decode()
                elif pkt.stream.index in copied and pkt.size:  # size 0: demuxer flush packets
                    self._pending.append(Copied(pkt.stream.index, self._increasing(pkt)))
        except (av.ExitError, StdinTimeout) as exc:  # PyAV's read timeout, or stdin's (_TimedPipe)
            raise InputError(f"input {self.source} broke: no data for {self._timeout:g} s") from exc
        except av.FFmpegError as exc:
            raise InputError(f"input {self.source} broke: {reason(exc)}") from exc

    def _increasing(self, pkt: av.Packet) -> av.Packet:
        """`pkt` with its dts (and pts, by as much) made strictly increasing in its stream."""
        ts = pkt.dts if pkt.dts is not None else pkt.pts
        if ts is None:
            return pkt
        clock = self._clocks.get(pkt.stream.index)
        if clock is None:
            clock = self._clocks[pkt.stream.index] = Increasing(f"{self.source} stream {pkt.stream.index}",
                                                                max(1, pkt.duration or 1))
        shift = clock(ts, "a packet") - ts
        if shift:
            pkt.dts = None if pkt.dts is None else pkt.dts + shift
            pkt.pts = None if pkt.pts is None else pkt.pts + shift
        return pkt

    def __iter__(self) -> Iterator[Frame | Any]:
        info = self.info
        first, self._first = self._first, None
        frames = same_size(_chain(first, self._frames), (info.width, info.height))
        k = 0
        # strictly increasing pts (a publisher's encoder restarting, concatenated segments):
        # a frame without one, or one not after the previous, gets the previous plus the last step
        increasing = Increasing(self.source, max(1, round(1 / (info.rate * info.time_base))) if info.rate else 1)
        try:
            for frame, rotation in deinterlaced(frames, self._video, _mode(info, self._deinterlace)):
                while self._pending:
                    yield self._pending.popleft()
                pts = increasing(frame.pts, f"frame {k}")  # None only before the first timestamp
                img = to_rgb(frame, info)
                turns = (int(round(rotation / 90.0)) % 4) if rotation else 0
                if turns:
                    img = np.ascontiguousarray(np.rot90(img, turns))
                yield Frame(img, pts=pts, time_base=frame.time_base or info.time_base, index=k)
                k += 1
        except av.FFmpegError as exc:
            raise InputError(f"input {self.source} broke at frame {k}: {reason(exc)}") from exc
        while self._pending:
            yield self._pending.popleft()

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> "LiveInput":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class Copied:
    """A packet of another stream, to be copied as it is. stream: its input stream's
    index (kept here: the packet must not reach back into the input container, which the
    reader may have closed by the time the packet is written)."""

    stream: int
    packet: Any


def _chain(first: Any, rest: Iterator[Any]) -> Iterator[Any]:
    if first is not None:
        yield first
    yield from rest


def _mode(info: VideoInfo, deinterlace: str) -> str:
    if deinterlace == "auto":
        return "interlaced" if info.interlaced else "off"
    return deinterlace


class StdinTimeout(OSError):
    """No byte arrived on standard input within the read timeout."""


class _TimedPipe(io.RawIOBase):
    """Standard input for PyAV with a read timeout: FFmpeg's `pipe:` protocol blocks in
    read(2) and never consults the interrupt callback that bounds network reads, so a
    producer that keeps the pipe open and goes silent would hang the stream. Each read
    waits at most `timeout` seconds for data (select(2)), then raises StdinTimeout."""

    def __init__(self, fd: int, timeout: float):
        super().__init__()
        self._fd, self._timeout = fd, timeout

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        ready, _, _ = select.select([self._fd], [], [], self._timeout)
        if not ready:
            raise StdinTimeout(f"no data for {self._timeout:g} s")
        data = os.read(self._fd, len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _open(source: str, timeout: float) -> av.container.InputContainer:
    """Open for live reading: a bounded probe (FFmpeg reads until every stream's parameters
    are known, at most 1.5 s or 1 MB; no frame-rate estimation: the pts say it), and `timeout` seconds
    for the connection and for each read (PyAV's interrupt callback), so a publisher that
    goes silent ends the read instead of hanging it."""
    options = {"analyzeduration": "1500000", "probesize": "1000000", "fpsprobesize": "0"}
    target = _TimedPipe(sys.stdin.fileno(), timeout) if source == "-" else source
    if source != "-" and not is_url(source):
        p = Path(source)
        if not p.is_file() or p.stat().st_size == 0:
            raise InputError(f"input not found or empty: {source}")
    try:
        return av.open(target, "r", container_options=options, timeout=(timeout, timeout))
    except StdinTimeout as exc:
        raise InputError(f"cannot read {source}: {exc}") from None
    except av.FFmpegError as exc:
        raise InputError(f"cannot read {source}: {reason(exc)}") from exc


# ----------------------------------------------------------------------------- output
RATE = re.compile(r"[0-9]+(\.[0-9]+)?[kKMG]?")  # what FFmpeg's AVOption parser reads as a bit rate


def pixel_count(n: int) -> str:
    """A pixel limit for a message: "8.3 Mpx" when large, "100 pixels" when small."""
    return f"{n / 1e6:.1f} Mpx" if n >= 100_000 else f"{n} pixels"


@dataclass(frozen=True)
class LiveEncoding:
    """The video encoder of a live output and its rate control.

    crf: constant quality (ignored when bitrate is set); bitrate: average bits/s (`2M`),
    with maxrate and bufsize (default: bitrate and one second of it) for a CBR-like VBV;
    maxrate/bufsize alone cap a CRF stream. keyint: the longest time between keyframes,
    in seconds (a player joining waits at most this long). x264/x265 get `tune=zerolatency`
    (no B-frames, no lookahead) unless `tune` says otherwise, and threads that hold no
    frame back (x264: sliced; x265: one frame thread): one packet out per frame in.
    """

    codec: str = "libx264"
    crf: float | None = 23
    bitrate: str | None = None
    maxrate: str | None = None
    bufsize: str | None = None
    preset: str | None = "veryfast"
    tune: str | None = "zerolatency"
    pix_fmt: str = "yuv420p"
    keyint: float = 2.0
    options: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        """UsageError naming the option for a value no encoder takes."""
        if not 0 < self.keyint <= 60:
            raise UsageError(f"--keyint must be in (0, 60] seconds, got {self.keyint:g}")
        check_crf(self.codec, None if self.bitrate else self.crf)
        for option in ("bitrate", "maxrate", "bufsize"):
            value = getattr(self, option)
            if value is not None and not RATE.fullmatch(str(value)):
                raise UsageError(f"--{option} must be bits per second such as 3M, 800k or 2500000, got {value!r}")

    def settings(self, rate: Fraction | None) -> EncoderSettings:
        """The `EncoderSettings` for a stream of `rate` frames/s (None: unknown)."""
        opts: dict[str, str] = {}
        x26x = self.codec in ("libx264", "libx265")
        if x26x and self.tune:
            opts["tune"] = self.tune
        # vsr's file encodes use a fixed count of *frame* threads (deterministic bytes,
        # `vsr.io.encoder.DETERMINISTIC_THREADS`); each frame thread holds a frame back,
        # so live output uses x264's sliced threads (zerolatency's own choice) instead
        if self.codec == "libx264":
            opts.update({"threads": "0", "thread_type": "slice"})
        elif self.codec == "libx265":
            opts["x265-params"] = "frame-threads=1"
        if rate:
            opts["g"] = str(max(1, int(float(rate) * self.keyint)))
        if self.bitrate:
            opts["b"] = self.bitrate
            opts["maxrate"] = self.maxrate or self.bitrate
            opts["bufsize"] = self.bufsize or self.bitrate
        else:
            if self.maxrate:
                opts["maxrate"] = self.maxrate
                opts["bufsize"] = self.bufsize or self.maxrate
        opts.update(dict(self.options))
        settings = EncoderSettings(
            codec=self.codec,
            crf=None if self.bitrate else self.crf,
            preset=self.preset if x26x else None,
            pix_fmt=self.pix_fmt,
            options=tuple(opts.items()),
        )
        check_encoder(settings)
        return settings


class LiveOutput:
    """Encode frames and copy packets into a live destination as they come.

    The header is written on the first frame; `close()` flushes the encoder and writes
    the trailer (use it as a context manager). Streams the container cannot hold are
    left out with a warning. Keyframes: every `g` frames (from the rate) and, whatever
    the rate, whenever `keyint` seconds of pts have passed since the last one.
    """

    def __init__(self, destination: str, source: LiveInput, size: tuple[int, int], encoding: LiveEncoding,
                 *, format: str | None = None):
        self.destination = destination
        info = source.info
        self.format_name = live_format(destination, format)
        settings = encoding.settings(info.rate)
        self._fmt = StreamFormat(
            settings=settings, width=size[0], height=size[1], time_base=info.time_base, rate=info.rate,
            colour=info.colour, hdr=None, global_header=False,
        )
        check_encoder_opens(self._fmt, tuple(encoding.options))  # a bad --encoder-opt fails before the destination opens
        self._keyint = encoding.keyint
        self._last_key: float | None = None
        mux_opts = {"flvflags": "no_duration_filesize"} if self.format_name == "flv" else {}
        if self.format_name == "mpegts":
            mux_opts["mpegts_flags"] = "resend_headers"  # a reader joining late gets PAT/PMT soon
        target = "pipe:" if destination == "-" else destination
        try:
            self._c = av.open(target, "w", format=self.format_name, container_options=mux_opts)
        except av.FFmpegError as exc:
            raise OutputError(f"cannot write {destination}: {reason(exc)}") from exc
        try:
            try:
                self._video = self._c.add_stream(settings.codec, rate=info.rate)
            except ValueError as exc:
                raise CodecError(f"{settings.codec} cannot go into {self.format_name}: {exc}") from exc
            configure(self._video.codec_context, self._fmt)
            self._video.time_base = info.time_base
            supported = storable_codecs(self._c)
            self._copies: dict[int, Any] = {}
            for ist in source.copied:
                cc = ist.codec_context
                codec = codec_id(cc)
                if ist.type == "audio" and cc is not None and not (cc.sample_rate and cc.channels):
                    log.warning("stream %d (audio %s): no parameters found in the first 1.5 s: left out", ist.index, codec)
                    continue
                if codec and codec not in supported:
                    log.warning("stream %d (%s %s) cannot go into %s: left out", ist.index, ist.type, codec, self.format_name)
                    continue
                ost = self._c.add_stream_from_template(ist)
                ost.time_base = ist.time_base
                self._copies[ist.index] = ost
        except BaseException:
            self._c.close()
            raise
        self._closed = False

    @property
    def stream_format(self) -> StreamFormat:
        return self._fmt

    def write(self, frame: Frame) -> None:
        """Encode one upscaled frame (its pts in the source's time base) and mux its packets."""
        vf = to_av_frame(frame, self._fmt)
        t = float(vf.pts * self._fmt.time_base) if vf.pts is not None else None
        if t is not None and (self._last_key is None or t - self._last_key >= self._keyint - 1e-6):
            vf.pict_type = av.video.frame.PictureType.I
            self._last_key = t
        self._mux(self._video.encode(vf))

    def write_packet(self, copied: Copied) -> None:
        """Copy one packet of another stream, timestamps as they are."""
        ost = self._copies.get(copied.stream)
        if ost is None:
            return
        copied.packet.stream = ost
        self._mux([copied.packet])

    def _mux(self, packets: list) -> None:
        try:
            self._c.mux(packets)
        except av.FFmpegError as exc:
            raise OutputError(f"cannot write {self.destination}: {reason(exc)}") from exc

    def close(self) -> None:
        """Flush the encoder, write the trailer, close. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._mux(self._video.encode(None))
        finally:
            try:
                self._c.close()
            except av.FFmpegError as exc:
                raise OutputError(f"cannot finish {self.destination}: {reason(exc)}") from exc

    def __enter__(self) -> "LiveOutput":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


