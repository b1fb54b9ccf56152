"""vsr.io.decode(start=, stop=) seeks instead of decoding from frame 0, and reads URLs and pipes.

Every test compares with a full decode of the same file: same pixels, pts, time base and
frame index, frame for frame; the decoder's own output is counted to show what was skipped.
"""
from __future__ import annotations

import functools
import io as stdio
import os
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from tests.media import make_clip
from vsr import io
from vsr.errors import UsageError
from vsr.io.index import index_of


def _key(frames):
    return [(f.index, f.pts, f.time_base) for f in frames]


def assert_same_frames(got, expected):
    assert _key(got) == _key(expected)
    assert all(np.array_equal(a.image, b.image) for a, b in zip(got, expected))


@pytest.fixture
def decoded_pts(monkeypatch):
    """The pts of every frame the decoder itself produced (before any skipping)."""
    module = sys.modules["vsr.io.decoder"]
    seen: list[int] = []
    real = module._decoded_frames

    def counting(packets, *args):
        for f in real(packets, *args):
            seen.append(f.pts)
            yield f

    monkeypatch.setattr(module, "_decoded_frames", counting)
    return seen


CLIPS = {
    "vfr-bframes.mp4": dict(vfr=True, frames=30, audio=("aac",), keyint=6),
    "vfr-bframes.mkv": dict(vfr=True, frames=30, audio=("aac",), subtitles=True, keyint=6),
    "interlaced.mp4": dict(width=96, height=64, frames=30, audio=(), interlaced=True, keyint=6),
}


@pytest.mark.parametrize("name", list(CLIPS))
def test_seeked_decode_equals_the_full_decode_without_decoding_the_start(tmp_path, name, decoded_pts):
    path = make_clip(tmp_path / name, **CLIPS[name])
    info = io.probe(path)
    index = io.scan(path, info)
    full = list(io.decode(path, info))
    assert len(full) == len(index) == 30 and index.reason is None
    assert [p.frame for p in index.seek_points] == [0, 6, 12, 18, 24]
    assert list(index.pts) == [f.pts for f in full]
    for start in (1, 5, 6, 7, 12, 13, 24, 29):
        decoded_pts.clear()
        assert_same_frames(list(io.decode(path, info, start=start, index=index)), full[start:])
    # the deinterlacer needs a warm-up before `start`; a progressive stream starts on the keyframe
    decoded_pts.clear()
    list(io.decode(path, info, start=25, index=index))
    first = 18 if info.interlaced else 24
    assert min(decoded_pts) == index.pts[first] and len(decoded_pts) == 30 - first
    assert info.interlaced == (name == "interlaced.mp4")


def test_stop_ends_early_and_start_defaults_to_the_first_frame(tmp_path):
    path = make_clip(tmp_path / "a.mp4", vfr=True, frames=20, audio=(), keyint=5)
    full = list(io.decode(path))
    assert_same_frames(list(io.decode(path, start=7, stop=12)), full[7:12])
    assert_same_frames(list(io.decode(path, stop=3)), full[:3])
    assert list(io.decode(path, start=4, stop=4)) == []
    assert_same_frames(list(io.decode(path, start=15, stop=99)), full[15:])
    with pytest.raises(UsageError, match="start"):
        io.decode(path, start=5, stop=2)


def test_an_index_that_cannot_seek_decodes_from_frame_0(tmp_path, decoded_pts):
    path = make_clip(tmp_path / "a.mkv", frames=12, audio=(), keyint=4)
    full = list(io.decode(path))
    exact = io.scan(path)
    unsure = io.FrameIndex(exact.pts, (), "said so by the test")
    decoded_pts.clear()
    assert_same_frames(list(io.decode(path, start=9, index=unsure)), full[9:])
    assert len(decoded_pts) == 12


def test_index_refuses_what_it_cannot_model():
    key = lambda pts, dts=None: (pts, dts, True, None)  # noqa: E731
    frame = lambda pts, dts=None: (pts, dts, False, None)  # noqa: E731
    ok = index_of([key(0), frame(3), frame(1), frame(2), key(4), frame(6), frame(5)])
    assert ok.reason is None and ok.pts == tuple(range(7)) and [p.frame for p in ok.seek_points] == [0, 4]
    assert ok.seek_point(3) is None and ok.seek_point(6).frame == 4
    assert index_of([key(0), frame(None)]).reason == "packets without a pts"
    assert index_of([key(0), frame(0)]).reason == "two packets share a pts"
    assert "keyframe" in index_of([frame(0), key(1)]).reason
    assert "go back" in index_of([key(0), frame(1), key(10), frame(11), key(20), frame(5)]).reason  # a joined TS
    assert "shown before" in index_of([key(0), frame(1), key(10), frame(11), key(5)]).reason


class _RangeHandler(SimpleHTTPRequestHandler):
    """http.server with byte ranges (what FFmpeg's http protocol seeks with)."""

    def log_message(self, *args):
        pass

    def send_head(self):
        with open(self.translate_path(self.path), "rb") as f:
            data = f.read()
        first, last = 0, len(data) - 1
        if "Range" in self.headers:
            a, b = self.headers["Range"].split("=", 1)[1].split("-")
            first, last = int(a), int(b) if b else last
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {first}-{last}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(last + 1 - first))
        self.end_headers()
        return stdio.BytesIO(data[first : last + 1])


@pytest.fixture
def http_folder(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_RangeHandler, directory=str(tmp_path)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield tmp_path, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join(5)


@pytest.mark.parametrize("name", ["a.mkv", "a.mp4"])
def test_decode_from_an_http_url_and_seek_in_it(http_folder, name):
    folder, base = http_folder
    path = make_clip(folder / name, vfr=True, frames=20, audio=("aac",), keyint=5)
    full = list(io.decode(path))
    url = f"{base}/{name}"
    assert io.is_url(url) and not io.is_live(url)
    assert_same_frames(list(io.decode(url)), full)
    assert_same_frames(list(io.decode(url, start=11, stop=17)), full[11:17])


def test_decode_from_a_pipe_and_refuse_to_seek_in_it(tmp_path):
    path = make_clip(tmp_path / "a.mkv", vfr=True, frames=12, audio=("aac",))
    full = list(io.decode(path))
    read, write = os.pipe()

    def feed() -> None:
        with os.fdopen(write, "wb") as f:
            f.write(path.read_bytes())

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        assert_same_frames(list(io.decode(f"pipe:{read}")), full)  # probed and decoded in one read
    finally:
        feeder.join(5)
        os.close(read)
    assert io.is_live("-") and io.is_live("srt://example.com:9000") and io.is_live("rtmp://host/app/key")
    with pytest.raises(UsageError, match="cannot seek"):
        io.decode("pipe:0", start=3)
