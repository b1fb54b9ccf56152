"""Robustness corpus entries for timestamps, alpha, damaged input and partial runs
(issue 11, items 1-4 and 15), for `benchmarks/robustness.py` to import.

`CASES` is a list of `(name, make_input, args, expected_exit, check)`:

- name: a short slug, unique in this list.
- make_input(tmpdir: Path) -> Path: writes the hostile input into `tmpdir` (PyAV only,
  milliseconds) and returns its path.
- args: the command line after `vsr upscale IN`. args[0] is OUT's file name, to be put in
  `tmpdir` (the extension picks the container, which some cases depend on: .webm, .mov);
  the rest are options. The runner appends its own engine options (model, steps, tile,
  device) after them. `run_case` below does exactly this.
- expected_exit: the exit code `vsr upscale` must return.
- check(out: Path) -> str | None: called after the run with OUT's path (which may not
  exist when the expected exit is not 0); None when the result is right, else one line
  saying what is wrong.
"""
from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import av

from tests.media import make_clip
from tests.media_streams import (
    alpha_clip,
    faststart_mp4_cut,
    late_ts,
    mkv_corrupt,
    mkv_cut,
    raw_stream,
)

Case = tuple[str, Callable[[Path], Path], list[str], int, Callable[[Path], str | None]]


def _times(path: Path) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    with av.open(str(path)) as c:
        for p in c.demux():
            if p.size and p.pts is not None:
                out.setdefault(p.stream.type, []).append(float(p.pts * p.time_base))
    return {k: sorted(v) for k, v in out.items()}


def _late_check(out: Path) -> str | None:
    t = _times(out)
    if abs(t["video"][0]) > 1e-3:
        return f"video starts at {t['video'][0]:.3f} s, not 0"
    offset = t["audio"][0] - t["video"][0]
    if not 0.02 < offset < 0.04:  # in the input: 2400 samples later, less AAC's 1024 priming samples
        return f"audio starts {offset:.3f} s after the video, not ~0.029 s as in the input"
    return None


def _frames_check(n: int, last: float | None = None) -> Callable[[Path], str | None]:
    def check(out: Path) -> str | None:
        v = _times(out)["video"]
        if len(v) != n:
            return f"{len(v)} frames, expected {n}"
        if last is not None and abs(v[-1] - last) > 2e-3:
            return f"last frame at {v[-1]:.4f} s, expected {last:.4f} s"
        if abs(v[0]) > 1e-3:
            return f"first frame at {v[0]:.4f} s, expected 0"
        return None

    return check


def _alpha_check(keep: bool) -> Callable[[Path], str | None]:
    def check(out: Path) -> str | None:
        from vsr import io

        has = io.probe(out).alpha
        if has != keep:
            return f"output {'has no' if keep else 'has an'} alpha plane ({io.probe(out).pix_fmt})"
        if keep:
            a = next(io.decode(out)).alpha
            if a.min() != 0 or a.max() < 0.99 * (255 if a.dtype.itemsize == 1 else 65535):
                return f"alpha range {a.min()}..{a.max()}: transparency was not kept"
        return None

    return check


def _partial_check(out: Path) -> str | None:
    n = len(_times(out).get("video", []))
    return None if 0 < n < 8 else f"{n} frames written from a damaged 8-frame input"


def _absent(out: Path) -> str | None:
    return None if not out.exists() else f"{out.name} was written"


def _opus_check(out: Path) -> str | None:
    with av.open(str(out)) as c:
        audio = [s.codec_context.name for s in c.streams.audio]
    return None if audio == ["opus"] else f"audio streams {audio}, expected the AAC track re-encoded to opus"


CASES: list[Case] = [
    ("late-start-ts-3600s", lambda d: late_ts(d / "in.ts", 3600), ["out.mkv"], 0, _late_check),
    ("late-start-ts-1s", lambda d: late_ts(d / "in.ts", 1), ["out.mp4"], 0, _late_check),
    ("raw-h264-no-timestamps", lambda d: raw_stream(d / "in.h264"), ["out.mkv"], 0, _frames_check(12, 11 / 30)),
    ("raw-mjpeg-no-rate-25fps",
     lambda d: raw_stream(d / "in.mjpeg", codec="mjpeg", fmt="mjpeg", pix_fmt="yuvj420p"),
     ["out.mkv"], 0, _frames_check(12, 11 / 25)),
    ("alpha-qtrle-to-ffv1", lambda d: alpha_clip(d / "in.mov"), ["out.mkv", "--codec", "ffv1"], 0, _alpha_check(True)),
    ("alpha-prores4444-to-prores", lambda d: alpha_clip(d / "in.mov", "prores_ks", "yuva444p10le"),
     ["out.mov", "--codec", "prores_ks"], 0, _alpha_check(True)),
    ("alpha-png-to-x264-dropped", lambda d: alpha_clip(d / "in.mov", "png", "rgba"), ["out.mp4"], 0,
     _alpha_check(False)),
    ("alpha-pix-fmt-on-opaque-input", lambda d: make_clip(d / "in.mkv", audio=(), frames=2),
     ["out.mkv", "--codec", "ffv1", "--pix-fmt", "yuva420p"], 2, _absent),
    ("truncated-faststart-mp4-70pct", lambda d: faststart_mp4_cut(d / "in.mp4"), ["out.mkv"], 0, _partial_check),
    ("truncated-mkv-70pct", lambda d: mkv_cut(d / "in.mkv"), ["out.mkv"], 0, _partial_check),
    ("corrupt-packets-mkv", lambda d: mkv_corrupt(d / "in.mkv"), ["out.mkv"], 0, _partial_check),
    ("truncated-mkv-strict", lambda d: mkv_cut(d / "in.mkv"), ["out.mkv", "--strict"], 3, _absent),
    ("webm-aac-to-opus", lambda d: make_clip(d / "in.mp4", audio=("aac",), frames=6),
     ["out.webm", "--codec", "libvpx-vp9"], 0, _opus_check),
    ("start-duration-frame-exact", lambda d: late_ts(d / "in.ts", 10, frames=24),
     ["out.mkv", "--start", "0.25", "--duration", "0.25"], 0, _frames_check(6, 5 / 24)),
    ("start-past-the-end", lambda d: make_clip(d / "in.mkv", audio=(), frames=4),
     ["out.mkv", "--start", "60"], 2, _absent),
]


def run_case(case: Case, tmpdir: Path, engine_args: list[str], timeout: float = 600) -> tuple[int, str | None, str]:
    """Run one case as `python -m vsr.cli upscale IN tmpdir/args[0] args[1:] engine_args`;
    returns (exit code, what is wrong or None, stderr)."""
    _, make_input, args, expected, check = case
    src = make_input(tmpdir)
    out = tmpdir / args[0]
    run = subprocess.run([sys.executable, "-m", "vsr.cli", "upscale", str(src), str(out), *args[1:], *engine_args],
                         capture_output=True, text=True, timeout=timeout, check=False)
    if run.returncode != expected:
        return run.returncode, f"exit {run.returncode}, expected {expected}", run.stderr
    try:
        return run.returncode, check(out), run.stderr
    except Exception as exc:  # noqa: BLE001 - a check that cannot read OUT is a failed case
        return run.returncode, f"check failed: {type(exc).__name__}: {exc}", run.stderr
