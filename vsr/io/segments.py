"""vsr's private segment file: the encoded packets of a run of frames, timestamps exact.

Why not .mkv/.mp4 pieces: containers rewrite timestamps (Matroska rounds to milliseconds
and drops the first packets' dts, NUT and MP4 shift them to avoid negative dts), and vsr
promises each frame's exact original pts. A segment file is `MAGIC` followed by records
`<qqqBI` (pts, dts, duration, flags, size) and the packet bytes, in the encoder's time
base (the source video stream's). Each segment is encoded by a fresh encoder, so it starts
with a keyframe, can be redone on its own, and `mux.assemble` joins segments as they are.
"""
from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import av

from vsr.errors import CodecError, OutputError
from vsr.frame import Frame
from vsr.io.encoder import StreamFormat, open_encoder, to_av_frame
from vsr.io.source import reason

MAGIC = b"VSRSEG1\n"
_RECORD = struct.Struct("<qqqBI")
_NONE = -(2**63)
_KEY = 1

class SegmentWriter:
    """Encode Frames into one segment file (see the module doc), as a context manager.

    Each segment is encoded by a fresh encoder, so it starts with a keyframe and can be
    redone on its own. The file appears under `path` only when complete (written to
    `path.part`, fsync'ed, renamed); `close()` returns its sha256.
    """

    def __init__(self, path: str | os.PathLike, fmt: StreamFormat):
        self.path = Path(path)
        self.fmt = fmt
        self.frames = 0
        self._part = self.path.with_name(self.path.name + ".part")
        self._cc = open_encoder(fmt, global_header=fmt.global_header)
        try:  # a fresh file, never through a symlink planted at its name
            if os.path.lexists(self._part):
                os.unlink(self._part)
            fd = os.open(self._part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
            self._file = os.fdopen(fd, "wb")
        except OSError as exc:
            raise OutputError(f"cannot write {self._part}: {exc.strerror}") from exc
        self._file.write(MAGIC)
        self._hash = hashlib.sha256(MAGIC)

    def _write_packets(self, packets: list[av.Packet]) -> None:
        for p in packets:
            data = bytes(p)
            if not data:
                continue
            rec = _RECORD.pack(
                _NONE if p.pts is None else p.pts,
                _NONE if p.dts is None else p.dts,
                p.duration or 0,
                _KEY if p.is_keyframe else 0,
                len(data),
            )
            self._file.write(rec)
            self._file.write(data)
            self._hash.update(rec)
            self._hash.update(data)

    def write(self, frame: Frame) -> None:
        if frame.width != self.fmt.width or frame.height != self.fmt.height:
            raise ValueError(f"frame is {frame.width}x{frame.height}, the encoder {self.fmt.width}x{self.fmt.height}")
        try:
            self._write_packets(self._cc.encode(to_av_frame(frame, self.fmt)))
        except av.FFmpegError as exc:
            raise CodecError(f"{self.fmt.settings.codec} failed on frame {frame.index}: {reason(exc)}") from exc
        except OSError as exc:
            raise OutputError(f"cannot write {self._part}: {exc.strerror} (disk full?)") from exc
        self.frames += 1

    def close(self) -> str:
        """Flush the encoder, make the file durable, return its sha256 hex digest."""
        try:
            self._write_packets(self._cc.encode(None))
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self._part, self.path)
        except OSError as exc:
            raise OutputError(f"cannot write {self.path}: {exc.strerror} (disk full?)") from exc
        return self._hash.hexdigest()

    def abort(self) -> None:
        """Drop an unfinished segment (interrupted run, disk full): nothing appears under
        `path`, and no `.part` stays behind."""
        try:
            self._file.close()  # may fail again on a full disk (its buffer): the file goes anyway
        except OSError:
            pass
        self._part.unlink(missing_ok=True)

    def __enter__(self) -> SegmentWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 hex digest of a file, read in 1 MiB pieces."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_segment(path: str | os.PathLike) -> Iterator[tuple[int | None, int | None, int, bool, bytes]]:
    """(pts, dts, duration, keyframe, data) of every packet of a segment file."""
    with open(path, "rb") as f:
        if f.read(len(MAGIC)) != MAGIC:
            raise OutputError(f"{path} is not a vsr segment file")
        while head := f.read(_RECORD.size):
            pts, dts, dur, flags, size = _RECORD.unpack(head)
            yield (None if pts == _NONE else pts, None if dts == _NONE else dts, dur, bool(flags & _KEY), f.read(size))
