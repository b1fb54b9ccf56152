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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av

from vsr.errors import CodecError, OutputError
from vsr.io.encoder import StreamFormat, configure, output_format
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


def _start_output(inp: av.container.InputContainer, info: VideoInfo, fmt: StreamFormat, target: Any,
                  name: str, *, warn: bool) -> _Output:
    """Open `target` (a path or a file object) as the container for `name`, declare the
    new video stream and the copies of the others (metadata, dispositions, chapters) and
    write the header. Streams the container cannot hold are left out with a warning."""
    out = av.open(target, "w", format=output_format(name).name)
    dropped: list[str] = []
    copies: dict[int, av.stream.Stream] = {}
    video_out = None
    try:
        for k, v in inp.metadata.items():
            if k.lower() not in _REGENERATED:
                out.metadata[k] = v
        supported = out.supported_codecs
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
                codec = ist.codec_context.name if ist.codec_context else None
                if ist.type not in ("audio", "subtitle", "video", "data") or codec not in supported:
                    what = f"stream {ist.index} ({ist.type} {codec or '?'})"
                    if warn:
                        log.warning("%s cannot be stored in %s and is left out", what, Path(name).suffix or "this container")
                    dropped.append(what)
                    continue
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
    return _Output(out, video_out, copies, dropped)


def check_output(src: str | os.PathLike, info: VideoInfo, fmt: StreamFormat, dst: str | os.PathLike) -> list[str]:
    """Write `dst`'s header into memory, so a container that cannot take the streams fails
    before the upscaling, not after it. Warns about (and returns) the streams that would
    be left out; `assemble` then leaves them out quietly."""
    with open_input(src) as inp:
        o = _start_output(inp, info, fmt, io.BytesIO(), str(dst), warn=True)
        o.container.close()
        return o.dropped


def assemble(src: str | os.PathLike, info: VideoInfo, segments: list[Path], dst: str | os.PathLike, fmt: StreamFormat) -> list[str]:
    """Write `dst`: the segments' video plus every other stream of `src` copied packet for
    packet (payloads untouched; only packets of size 0 are skipped), container and stream
    metadata, dispositions, attachments and chapters. Streams the output container cannot
    hold are left out with a warning; the returned list names them."""
    with open_input(src) as inp:
        try:
            o = _start_output(inp, info, fmt, str(dst), str(dst), warn=False)
        except OSError as exc:
            raise OutputError(f"cannot write {dst}: {exc.strerror}") from exc
        out, video_out, copies, dropped = o.container, o.video, o.copies, o.dropped

        def video_packets() -> Iterator[tuple[float, int, av.Packet, av.stream.Stream]]:
            last_dts = None
            for seg in segments:
                for pts, dts, dur, key, data in read_segment(seg):
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
            if not copies:
                return
            ins = [inp.streams[i] for i in copies]
            last = 0.0
            for pkt in inp.demux(*ins):
                if pkt.size == 0:  # demuxer flush packets; never test dts here (MKV)
                    continue
                t = pkt.dts if pkt.dts is not None else pkt.pts
                if t is not None and pkt.time_base:
                    last = float(t * pkt.time_base)
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
            out.close()
        log.debug("muxed %d packets into %s", n, dst)
    return dropped
