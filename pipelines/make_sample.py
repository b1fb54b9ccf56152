"""Make vsr's shipped sample clip, `vsr/assets/sample.mp4`, from a scikit-image photograph.

    python -m vsr.pipelines.make_sample [--out vsr/assets/sample.mp4]

The clip is what vsr is for: low-resolution video of natural content. A slow camera
pan (with a gentle zoom) over scikit-image's `coffee` photograph (Rachel Michetti,
CC0, shipped in `skimage/data`), rendered at 320x180 after an anti-aliased downscale,
so upscaling it 2x or 4x has real detail to restore. 4 s at 24 fps, H.264 (crf 23) plus
a stereo AAC chord, about 0.3 MB. The whole clip is a pure function of this file, so
anyone can rebuild it bit for bit on the same PyAV/FFmpeg build.

It writes the file with PyAV directly (the sample *is* the input the I/O module reads;
making it with `vsr.video` would test that module against itself).
"""
from __future__ import annotations

import argparse
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

WIDTH, HEIGHT, FPS, SECONDS = 320, 180, 24, 4
SAMPLE_RATE = 48000
OUT = Path(__file__).resolve().parents[1] / "vsr" / "assets" / "sample.mp4"


def photograph() -> np.ndarray:
    """The source photograph, HxWx3 uint8 RGB (400x600)."""
    from skimage import data

    return data.coffee()


def pan_frame(photo: np.ndarray, t: float) -> np.ndarray:
    """The camera's view at time t in [0, 1]: a 16:9 window that slides left to right and
    slightly down while zooming in by 10%, downscaled with area averaging to 320x180."""
    h, w = photo.shape[:2]
    zoom = 1.0 - 0.1 * t  # window width as a fraction of the largest 16:9 window
    win_w = min(w, h * 16 / 9) * 0.78 * zoom
    win_h = win_w * 9 / 16
    ease = 0.5 - 0.5 * np.cos(np.pi * t)  # starts and stops smoothly
    x0 = (w - win_w) * (0.05 + 0.9 * ease)
    y0 = (h - win_h) * (0.3 + 0.4 * ease)
    # supersample the window at 4x the output size (bicubic), then area-downscale:
    # sub-pixel motion without the aliasing of sampling the photo directly
    ss = 4
    m = np.array([[ss * WIDTH / win_w, 0, -x0 * ss * WIDTH / win_w], [0, ss * HEIGHT / win_h, -y0 * ss * HEIGHT / win_h]])
    big = cv2.warpAffine(photo, m, (ss * WIDTH, ss * HEIGHT), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    return cv2.resize(big, (WIDTH, HEIGHT), interpolation=cv2.INTER_AREA)


def chord(seconds: float) -> np.ndarray:
    """A soft A-minor chord with 0.5 s fades, 2 x N float32 in [-1, 1]."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    wave = sum(np.sin(2 * np.pi * f * t) for f in (220.0, 261.63, 329.63)) / 3
    fade = np.clip(np.minimum(t, seconds - t) / 0.5, 0, 1)
    left = 0.25 * wave * fade
    right = 0.25 * np.roll(wave, 240) * fade  # 5 ms apart: a little width
    return np.stack([left, right]).astype(np.float32)


def make_sample(out: Path = OUT) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    photo = photograph()
    frames = FPS * SECONDS
    with av.open(str(out), "w") as container:
        container.metadata["title"] = "vsr sample: a slow pan over coffee (scikit-image, CC0)"
        vs = container.add_stream("libx264", rate=FPS)
        vs.width, vs.height, vs.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        cc = vs.codec_context
        cc.options = {"crf": "23", "preset": "slow"}
        cc.color_primaries, cc.color_trc, cc.colorspace, cc.color_range = 1, 1, 1, 1  # BT.709, limited
        vs.time_base = Fraction(1, 12288)
        audio = container.add_stream("aac", rate=SAMPLE_RATE)
        audio.layout = "stereo"
        audio.metadata["language"] = "und"
        for i in range(frames):
            rgb = pan_frame(photo, i / (frames - 1))
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame = frame.reformat(format="yuv420p", dst_colorspace="ITU709", dst_color_range="MPEG")
            frame.pts = i
            frame.time_base = Fraction(1, FPS)
            container.mux(vs.encode(frame))
        container.mux(vs.encode(None))
        samples = chord(SECONDS)
        for start in range(0, samples.shape[1], 1024):
            chunk = np.ascontiguousarray(samples[:, start : start + 1024])
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="stereo")
            frame.sample_rate = SAMPLE_RATE
            frame.pts = start
            frame.time_base = Fraction(1, SAMPLE_RATE)
            container.mux(audio.encode(frame))
        container.mux(audio.encode(None))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    path = make_sample(args.out)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
