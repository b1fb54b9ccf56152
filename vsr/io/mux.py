"""The final container: the segments' video plus every other stream of the source.

Other streams (audio, subtitles, data, attachments) are copied packet for packet, as
`ffmpeg -map 0 -c copy` does: payloads untouched, only packets of size 0 (demuxer flush
packets) skipped, never by `dts is None` (Matroska's first packets have none).
"""
from __future__ import annotations

import heapq
import io
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av

from vsr.errors import CodecError, OutputError
from vsr.io.encoder import (
    StreamFormat,
    codec_id,
    configure,
    output_format,
    storable_codecs,
)
from vsr.io.segments import read_segment
from vsr.io.source import VideoInfo, open_input, reason

log = logging.getLogger(__name__)

_REGENERATED = {"major_brand", "minor_version", "compatible_brands", "encoder", "duration"}


@dataclass
class _Output:
    """An output container with its header written: where each source stream went."""

    container: av.container.OutputContainer
    video: av.stream.Stream
    copies: dict[int, av.stream.Stream]
    dropped: list[str]
    encodes: dict[int, av.stream.Stream] = field(default_factory=dict)  # audio re-encoded for this container


def _start_output(inp: av.container.InputContainer, info: VideoInfo, fmt: StreamFormat, target: Any,
                  name: str, *, warn: bool) -> _Output:
    """Open `target` (a path or a file object) as the container for `name`, declare the
    new video stream and the copies of the others (metadata, dispositions, chapters) and
    write the header. Streams the container cannot hold are left out with a warning."""
    out = av.open(target, "w", format=output_format(name).name)
    # FFmpeg's bitexact muxing: no random Matroska segment/track UIDs, no muxer version
    # string, so the same frames and streams give the same file bytes (`-fflags +bitexact`)
    out.flags |= av.container.Flags.bitexact.value
    dropped: list[str] = []
    copies: dict[int, av.stream.Stream] = {}
    encodes: dict[int, av.stream.Stream] = {}
    video_out = None
    try:
        for k, v in inp.metadata.items():
            if k.lower() not in _REGENERATED:
                out.metadata[k] = v
        supported = storable_codecs(out)
        for ist in inp.streams:
            if ist.index == info.video_index:
                try:
                    video_out = out.add_stream(fmt.settings.codec, rate=fmt.rate)
                except ValueError as exc:  # e.g. libx264 in .webm (VP8/VP9/AV1 only)
                    out.close()
                    raise CodecError(
                        f"{Path(name).suffix} files cannot hold {fmt.settings.codec} video ({exc}): "
                        "pick another --codec or OUT.mkv"
                    ) from None
                configure(video_out.codec_context, fmt)
                video_out.time_base = fmt.time_base
                ost = video_out
            elif ist.type == "attachment" and out.format.name in ("matroska", "webm"):
                # fonts and cover images of Matroska files: copied whole (they have no packets)
                fname = ist.metadata.get("filename") or f"attachment-{ist.index}"
                out.add_attachment(name=fname, mimetype=ist.mimetype or "application/octet-stream", data=ist.data)
                continue
            else:
                codec = codec_id(ist.codec_context)
                encoder = _audio_encoder(out) if ist.type == "audio" and codec not in supported else None
                if encoder is not None:
                    ost = _add_audio_encoder(out, encoder, ist)
                    encodes[ist.index] = ost
                    if warn:
                        log.warning("stream %d (audio %s) is re-encoded to %s: %s files cannot hold %s", ist.index,
                                    codec, encoder, Path(name).suffix or "such", codec)
                elif ist.type not in ("audio", "subtitle", "video", "data") or codec not in supported:
                    what = f"stream {ist.index} ({ist.type} {codec or '?'})"
                    if warn:
                        log.warning("%s cannot be stored in %s and is left out", what, Path(name).suffix or "this container")
                    dropped.append(what)
                    continue
                else:
                    ost = out.add_stream_from_template(ist)
                    ost.time_base = ist.time_base
                    copies[ist.index] = ost
            for k, v in ist.metadata.items():
                if k.upper() not in ("DURATION", "ENCODER") and not k.upper().startswith("_STATISTICS"):
                    ost.metadata[k] = v
            try:
                ost.disposition = ist.disposition
            except (AttributeError, TypeError, ValueError):
                pass
        chapters = inp.chapters()
        if chapters:
            out.set_chapters(chapters)
        out.start_encoding()
    except av.FFmpegError as exc:
        out.close()
        raise OutputError(
            f"cannot write a {Path(name).suffix} file from this input ({reason(exc)}): a copied stream may not fit "
            "this container, try OUT.mkv"
        ) from exc
    return _Output(out, video_out, copies, dropped, encodes)


# Audio encoders for a container that cannot hold the source's codec (AAC in .webm), best first.
_AUDIO_ENCODERS = ("libopus", "aac", "libvorbis", "flac", "mp3", "ac3")
_AUDIO_CODEC_NAMES = {"libopus": "opus", "libvorbis": "vorbis", "mp3": "mp3", "libmp3lame": "mp3"}


def _audio_encoder(out: av.container.OutputContainer) -> str | None:
    """The encoder to re-encode audio with for `out`'s container (None: none fits)."""
    supported = storable_codecs(out)
    for name in _AUDIO_ENCODERS:
        if name in av.codecs_available and (name in supported or _AUDIO_CODEC_NAMES.get(name) in supported):
            return name
    return None


def _add_audio_encoder(out: av.container.OutputContainer, encoder: str, ist: av.stream.Stream) -> av.stream.Stream:
    """An output audio stream encoding `ist`'s channels at its sample rate (or 48 kHz where the
    encoder cannot take it, as libopus only takes 8 to 48 kHz)."""
    icc = ist.codec_context
    rates = av.codec.Codec(encoder, "w").audio_rates or ()
    rate = icc.sample_rate if not rates or icc.sample_rate in rates else 48000
    ost = out.add_stream(encoder, rate=rate)
    ost.layout = icc.layout.name if icc.layout and icc.layout.nb_channels <= 2 else "stereo"
    ost.time_base = Fraction(1, rate)
    return ost


def check_output(src: str | os.PathLike, info: VideoInfo, fmt: StreamFormat, dst: str | os.PathLike) -> list[str]:
    """Write `dst`'s header into memory, so a container that cannot take the streams fails
    before the upscaling, not after it. Warns about (and returns) the streams that would
    be left out; `assemble` then leaves them out quietly."""
    with open_input(src) as inp:
        o = _start_output(inp, info, fmt, io.BytesIO(), str(dst), warn=True)
        o.container.close()
        return o.dropped


def start_shift(inp: av.container.InputContainer) -> Fraction:
    """Seconds subtracted from every stream's timestamps: the input's start time (the
    earliest first timestamp of its streams) when it is positive, else 0.

    This mirrors the ffmpeg command line's default (no `-copyts`): it subtracts the input
    file's `start_time` from every stream, so a transport stream or a file that claims to
    start at 3600 s plays from 0 with its streams' offsets and frame spacing unchanged. A
    negative start (an encoder's priming samples in MP4) is left as it is, for the muxer
    to handle as FFmpeg's `-avoid_negative_ts auto` does."""
    start = inp.start_time
    return Fraction(start, 1_000_000) if start is not None and start > 0 else Fraction(0)


def assemble(src: str | os.PathLike, info: VideoInfo, segments: list[Path], dst: str | os.PathLike, fmt: StreamFormat,
             *, window: tuple[Fraction, Fraction | None] | None = None) -> list[str]:
    """Write `dst`: the segments' video plus every other stream of `src` copied packet for
    packet (payloads untouched; only packets of size 0 are skipped), container and stream
    metadata, dispositions, attachments and chapters. Streams the output container cannot
    hold are left out with a warning; the returned list names them.

    Timestamps: every stream is shifted by the same amount, so the output starts at 0
    (`start_shift`). window: (t0, t1) in seconds of the source's timeline, for a part of
    the video (`--start`/`--duration`): t0 is subtracted from every stream and the other
    streams' packets that begin outside [t0, t1) are left out (t1 None: to the end)."""
    with open_input(src) as inp:
        t0, t1 = window if window is not None else (start_shift(inp), None)
        try:
            o = _start_output(inp, info, fmt, str(dst), str(dst), warn=False)
        except OSError as exc:
            raise OutputError(f"cannot write {dst}: {exc.strerror}") from exc
        out, video_out, copies, dropped, encodes = o.container, o.video, o.copies, o.dropped, o.encodes
        shift = t0 / fmt.time_base  # in the video's ticks

        def video_packets() -> Iterator[tuple[float, int, av.Packet, av.stream.Stream]]:
            last_dts = None
            for seg in segments:
                for pts, dts, dur, key, data in read_segment(seg):
                    pts, dts = _shifted(pts, shift), _shifted(dts, shift)
                    if dts is not None and last_dts is not None and dts <= last_dts:
                        dts = last_dts + 1  # joins of B-frame segments; dts stays <= pts
                    pkt = av.Packet(data)
                    pkt.pts, pkt.dts, pkt.duration = pts, dts, dur
                    pkt.time_base = fmt.time_base
                    pkt.is_keyframe = key
                    last_dts = dts if dts is not None else last_dts
                    t = dts if dts is not None else pts
                    yield (float((t or 0) * fmt.time_base), 0, pkt, video_out)

        def copied_packets() -> Iterator[tuple[float, int, av.Packet, av.stream.Stream]]:
            if not copies and not encodes:
                return
            ins = [inp.streams[i] for i in (*copies, *encodes)]
            last = 0.0
            for pkt in inp.demux(*ins):
                if pkt.stream.index in encodes:  # re-encoded (AAC into .webm): decoded, flush packets too
                    for p in _reencode(pkt, encodes[pkt.stream.index], t0, t1):
                        last = max(last, float(p.pts * p.time_base)) if p.pts is not None else last
                        yield (last, 1, p, encodes[pkt.stream.index])
                    continue
                if pkt.size == 0:  # demuxer flush packets; never test dts here (MKV)
                    continue
                tb = pkt.time_base
                if tb and (t0 or t1 is not None) and pkt.pts is not None:
                    begin = pkt.pts * tb
                    if begin < t0 or (t1 is not None and begin >= t1):
                        continue  # outside the window: as ffmpeg's stream copy after -ss, what begins before it goes
                if tb and t0:
                    k = t0 / tb
                    pkt.pts, pkt.dts = _shifted(pkt.pts, k), _shifted(pkt.dts, k)
                t = pkt.dts if pkt.dts is not None else pkt.pts
                if t is not None and tb:
                    last = float(t * tb)
                yield (last, 1, pkt, copies[pkt.stream.index])

        n = 0
        try:
            for _, _, pkt, ost in heapq.merge(video_packets(), copied_packets(), key=lambda x: (x[0], x[1])):
                pkt.stream = ost
                out.mux(pkt)
                n += 1
            out.close()  # writes the trailer (the MP4 index)
        except av.FFmpegError as exc:
            raise OutputError(f"cannot write {dst}: {reason(exc)}") from exc
        except OSError as exc:
            raise OutputError(f"cannot write {dst}: {exc.strerror} (disk full?)") from exc
        finally:
            try:
                out.close()
            except (av.FFmpegError, OSError):  # closing again after a failed trailer (disk full)
                pass
        log.debug("muxed %d packets into %s", n, dst)
    return dropped


def _reencode(pkt: av.Packet, ost: av.stream.Stream, t0: Fraction, t1: Fraction | None) -> Iterator[av.Packet]:
    """Decode one audio packet and encode its samples into `ost` (the encoder's flush after
    the stream's last packet); samples outside the window [t0, t1) are left out, and time
    starts at t0, as for the copied streams."""
    try:
        frames = pkt.decode()
    except av.FFmpegError:
        frames = []  # a damaged audio packet: skipped, as ffmpeg does
    for frame in frames:
        if frame.pts is not None and frame.time_base:
            begin = frame.pts * frame.time_base
            if (t0 or t1 is not None) and (begin < t0 or (t1 is not None and begin >= t1)):
                continue
            frame.pts = round((begin - t0) * frame.sample_rate)
            frame.time_base = Fraction(1, frame.sample_rate)
        yield from ost.encode(frame)
    if pkt.size == 0:  # the input stream ended: flush the encoder
        yield from ost.encode(None)


def _shifted(ts: int | None, shift: Fraction) -> int | None:
    """A timestamp moved back by `shift` ticks (rounded to the nearest tick)."""
    return ts if ts is None or not shift else ts - round(shift)
