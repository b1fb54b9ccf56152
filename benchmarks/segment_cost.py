"""What a resumable segment costs: output size and encode time against the segment length.

    python -m benchmarks.segment_cost [--source vsr/assets/sample.mp4] [--scale 2] [--seconds 0.5 1 2 4]

Each segment is encoded by a fresh encoder (it starts with a keyframe, so it can be
redone alone) and is fsync'ed and journalled. That is the whole cost of cutting a video
finer: this measures it on the real encoder path (`vsr.io.SegmentWriter`, libx264 crf 18
preset medium, as `vsr upscale` defaults to) with the frames upscaled bicubically (the
engine's cost does not depend on segments, so it is left out). Prints one line per
segment length: segments, bytes, size over one segment for the whole clip, encode seconds.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2

from vsr import io


def measure(source: str, scale: float, seconds: list[float]) -> list[dict]:
    info = io.probe(source)
    w, h = (round(info.width * scale) // 2 * 2, round(info.height * scale) // 2 * 2)
    frames = [f.with_image(cv2.resize(f.image, (w, h), interpolation=cv2.INTER_CUBIC)) for f in io.decode(source, info)]
    fmt = io.StreamFormat(io.EncoderSettings(), w, h, info.time_base, info.rate, info.colour, None, True)
    rate = float(info.rate or 25)
    rows = []
    for s in sorted(set(seconds) | {len(frames) / rate}):
        n = max(1, round(s * rate))
        with tempfile.TemporaryDirectory() as tmp:
            t0, size = time.perf_counter(), 0
            for k in range(0, len(frames), n):
                path = Path(tmp) / f"{k:06d}.seg"
                with io.SegmentWriter(path, fmt) as writer:
                    for f in frames[k : k + n]:
                        writer.write(f)
                size += path.stat().st_size
            rows.append({"seconds": n / rate, "frames": n, "segments": -(-len(frames) // n), "bytes": size,
                         "encode_s": time.perf_counter() - t0})
    whole = rows[-1]
    for r in rows:
        r["size_vs_one"] = r["bytes"] / whole["bytes"]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", default="vsr/assets/sample.mp4")
    ap.add_argument("--scale", type=float, default=2.0)
    ap.add_argument("--seconds", type=float, nargs="+", default=[0.5, 1.0, 2.0, 4.0])
    args = ap.parse_args()
    for r in measure(args.source, args.scale, args.seconds):
        print(f"segments of {r['seconds']:.2f} s ({r['frames']} frames): {r['segments']} segments, {r['bytes']} bytes "
              f"({100 * (r['size_vs_one'] - 1):+.1f}% vs one segment), encode {r['encode_s']:.2f} s")


if __name__ == "__main__":
    main()
