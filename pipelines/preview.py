"""`vsr upscale --preview N`: side-by-side PNGs (bicubic | vsr) instead of a video
(`vsr.pipelines.transcode.upscale_video`'s `preview`)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from vsr import io
from vsr.errors import OutputError, UsageError
from vsr.frame import Frame
from vsr.jobs import write_new_file
from vsr.jobs.chunk import crop_frame, pad_image
from vsr.targets import Plan


def _preview(
    src: str, dst: Path, count: int, info: io.VideoInfo, plan: Plan, up: Any, overwrite: bool, deinterlace: str = "auto",
    span: tuple[int, int | None] = (0, None),
) -> list[Path]:
    """Write `count` frames, evenly spread over the video (over `span`'s frames), as
    side-by-side PNGs beside `dst` (`<stem>.preview-NN.png`): left the input resized
    bicubically to the output size, labelled "bicubic", right vsr's output, labelled "vsr".
    10-bit sources give 16-bit PNGs."""
    import cv2

    if count < 1:
        raise UsageError(f"--preview needs at least 1 frame, got {count}")
    if not dst.parent.is_dir() or not os.access(dst.parent, os.W_OK):
        raise OutputError(f"output folder {dst.parent} does not exist or is not writable")
    paths = [dst.with_name(f"{dst.stem}.preview-{k:02d}.png") for k in range(count)]
    for p in paths:
        if os.path.lexists(p) and not overwrite:
            raise OutputError(f"{p} exists: add --overwrite to replace it")
    first, stop = span
    stop = stop if stop is not None else (info.frames or count)
    wanted = sorted({int(round(x)) for x in np.linspace(first, max(stop - 1, first), count)})
    picked: list[Frame] = []
    for f in io.decode(src, info, start=first, stop=span[1], deinterlace=deinterlace):
        if f.index in wanted:
            picked.append(crop_frame(f, plan.crop))
        if len(picked) == len(wanted):
            break
    written = []
    for f, out, path in zip(picked, up.stream(picked), paths):
        left = cv2.resize(f.image, plan.scaled, interpolation=cv2.INTER_CUBIC)
        pair = np.concatenate([_label(pad_image(left, plan.pad), "bicubic"), _label(pad_image(out.image, plan.pad), "vsr")],
                              axis=1)
        ok, png = cv2.imencode(".png", np.ascontiguousarray(pair[..., ::-1]))
        if not ok:
            raise OutputError(f"cannot encode {path}")
        write_new_file(path, png.tobytes(), replace=overwrite)
        written.append(path)
    return written


def _label(image: np.ndarray, text: str) -> np.ndarray:
    """`image` with `text` in its top-left corner: white on a black outline, sized to the picture."""
    import cv2

    image = np.ascontiguousarray(image)
    peak = int(np.iinfo(image.dtype).max)
    scale = max(0.3, image.shape[0] / 400)
    at = (max(2, round(6 * scale)), max(10, round(22 * scale)))
    thin = max(1, round(scale))
    for colour, thickness in (((0, 0, 0), thin + 2), ((peak, peak, peak), thin)):
        cv2.putText(image, text, at, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, thickness, cv2.LINE_AA)
    return image
