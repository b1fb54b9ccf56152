"""The noise predictor's training data (see `train_noise_predictor`): crops packed once
into RUN/crops.npz, degraded as real low-resolution video is (blur, downscaling, sensor
noise, then 8-bit, JPEG or single-frame H.264), in batches drawn from one generator."""
from __future__ import annotations

import io
import logging
import math

import numpy as np
import torch
import torch.nn.functional as F

from vsr.core.resample import resample
from vsr.errors import InputError

from .predictor_config import PredictorTrainConfig

log = logging.getLogger(__name__)


def pack_crops(images: list[torch.Tensor], count: int, size: int, max_downscale: float, seed: int) -> np.ndarray:
    """(count, 3, size, size) uint8: windows of size*s pixels (s log-uniform in [1,
    max_downscale], as if shot at a lower resolution) area-resized to size, cycling
    through the images so each gives about count/len(images). images: uint8 CHW."""
    gen = torch.Generator().manual_seed(seed)
    out = np.empty((count, 3, size, size), np.uint8)
    for i in range(count):
        img = images[i % len(images)]
        _, h, w = img.shape
        s_max = max(1.0, min(max_downscale, h / size, w / size))
        s = math.exp(float(torch.rand((), generator=gen)) * math.log(s_max))
        win = max(size, min(int(round(size * s)), h, w))
        y = int(torch.randint(h - win + 1, (1,), generator=gen))
        x = int(torch.randint(w - win + 1, (1,), generator=gen))
        crop = img[:, y : y + win, x : x + win].float().unsqueeze(0)
        if win != size:
            crop = F.interpolate(crop, size=(size, size), mode="area")
        out[i] = crop[0].round().clamp(0, 255).to(torch.uint8).numpy()
    return out


def jpeg_pack(crops: np.ndarray, quality: int = 98) -> dict[str, np.ndarray]:
    """Crops packed to travel (a GPU machine takes 64 MiB): each (3, S, S) uint8 crop as a
    4:4:4 JPEG at `quality` (98: about 48 dB PSNR against the crop, a third of
    `savez_compressed`'s size). Returns the arrays of an .npz: `jpeg` (the files end to
    end, uint8), `offsets` (int64, N + 1) and `shape` ((N, 3, S, S)); `crops_from_pack`
    reads it back."""
    import cv2

    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality), cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
              cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
    files = []
    for crop in crops:
        ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(crop.transpose(1, 2, 0)[:, :, ::-1]), params)
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        files.append(buf.reshape(-1))
    offsets = np.cumsum([0] + [len(f) for f in files]).astype(np.int64)
    return {"jpeg": np.concatenate(files), "offsets": offsets, "shape": np.array(crops.shape, np.int64)}


def crops_from_pack(z) -> np.ndarray:
    """(N, 3, S, S) uint8 from a packed-crops .npz: `crops` as stored, or decoded from a
    `jpeg_pack`."""
    if "crops" in z:
        return z["crops"]
    import cv2

    jpeg, offsets, shape = z["jpeg"], z["offsets"], tuple(int(v) for v in z["shape"])
    out = np.empty(shape, np.uint8)
    for i in range(shape[0]):
        bgr = cv2.imdecode(jpeg[offsets[i] : offsets[i + 1]], cv2.IMREAD_COLOR)
        if bgr is None or bgr.shape != (shape[2], shape[3], 3):
            raise ValueError(f"crop {i} of {shape[0]} does not decode to {shape[3]}x{shape[2]} (a damaged pack)")
        out[i] = bgr[:, :, ::-1].transpose(2, 0, 1)
    return out


def read_crops(path: Path, cfg: PredictorTrainConfig) -> np.ndarray:
    """A packed-crops .npz (`crops` or a `jpeg_pack`) checked against the run: (N, 3, S, S)
    uint8 with S >= crop (+ shift_max with the shift term). Raises InputError (one line)
    for a file that is not such a pack."""
    import zipfile

    if not zipfile.is_zipfile(path):
        raise InputError(f"the crops file {path} is not an .npz file")
    try:
        with np.load(path, allow_pickle=False) as z:
            crops = crops_from_pack(z)
    except Exception as exc:  # zip, key and decode errors all mean "not a pack"
        raise InputError(f"cannot read the crops file {path}: {type(exc).__name__}: {exc}") from None
    need = cfg.crop + (cfg.shift_max if cfg.shift_weight > 0 else 0)
    if (crops.dtype != np.uint8 or crops.ndim != 4 or len(crops) == 0 or crops.shape[1] != 3
            or crops.shape[2] != crops.shape[3] or crops.shape[2] < need):
        raise InputError(f"the crops file {path} holds {crops.dtype} crops of shape {crops.shape}: need uint8 "
                         f"(N, 3, S, S) with N >= 1 and S >= {need}")
    return crops


def load_or_pack_crops(cfg: PredictorTrainConfig) -> np.ndarray:
    """The run's packed crops (built from the corpus's train split on first use)."""
    from .train_prior import load_images

    path = cfg.crops_path
    if path.is_file():
        return read_crops(path, cfg)
    if cfg.crops_file:
        raise InputError(f"crops_file not found: {path} (`vsr train predictor-pack` writes one; without "
                         "crops_file a run packs RUN/crops.npz from the corpus)")
    images = load_images(cfg.corpus, "train", 1280)
    seed = cfg.seed if cfg.pack_seed is None else cfg.pack_seed
    crops = pack_crops(images, cfg.pack_count, cfg.pack_size, cfg.pack_max_downscale, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez_compressed(tmp, crops=crops)
    tmp.replace(path)
    log.info("packed %d crops of %d px from %d images into %s (%.1f MiB)", len(crops), cfg.pack_size, len(images),
             path, path.stat().st_size / 2**20)
    return crops


def _uniform(gen: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=gen))


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """(N, C, H, W) separable Gaussian blur, radius ceil(3 sigma), reflect padding."""
    r = max(1, math.ceil(3 * sigma))
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float32) / sigma) ** 2)
    k = (k / k.sum()).to(x)
    c = x.shape[1]
    x = F.pad(x, (r, r, r, r), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def jpeg_roundtrip(rgb: np.ndarray, quality: int) -> np.ndarray:
    """HxWx3 uint8 RGB through OpenCV's JPEG (4:2:0) at `quality` and back."""
    import cv2

    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1])


def h264_roundtrip(rgb: np.ndarray, crf: int) -> np.ndarray:
    """HxWx3 uint8 RGB (even H, W) as a one-frame H.264 stream (libx264, yuv420p, CRF,
    one thread: deterministic), encoded and decoded in memory."""
    import av

    h, w = rgb.shape[:2]
    buf = io.BytesIO()
    with av.open(buf, "w", format="h264") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.codec_context.thread_count = 1
        stream.options = {"crf": str(int(crf)), "preset": "veryfast", "tune": "zerolatency"}
        for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")):
            out.mux(packet)
        for packet in stream.encode():  # flush
            out.mux(packet)
    buf.seek(0)
    with av.open(buf, "r", format="h264") as inp:
        for frame in inp.decode(video=0):
            return frame.to_ndarray(format="rgb24")
    raise RuntimeError("H.264 round trip gave no frame")


def degrade(hr: torch.Tensor, size: tuple[int, int], cfg: PredictorTrainConfig, gen: torch.Generator) -> torch.Tensor:
    """One low-resolution frame as video has it: (3, H, W) float [0, 1] -> (3, *size) in
    [0, 1] on 8-bit levels. A pure function of (hr, size, cfg, generator state): optional
    blur (sigma in cfg.blur_sigma, HR pixels), area or antialiased-bicubic downscaling,
    optional Gaussian noise (std up to cfg.noise_sigma / 255), then JPEG (quality in
    cfg.jpeg_quality), H.264 (CRF in cfg.h264_crf) or plain 8-bit rounding."""
    x = hr[None].float()
    if float(torch.rand((), generator=gen)) < cfg.blur_prob:
        x = gaussian_blur(x, _uniform(gen, *cfg.blur_sigma))
    if float(torch.rand((), generator=gen)) < cfg.area_prob:
        x = F.interpolate(x, size=size, mode="area")
    else:
        x = resample(x, size)
    x = x.clamp(0, 1)
    if float(torch.rand((), generator=gen)) < cfg.noise_prob:
        sigma = _uniform(gen, 0.0, cfg.noise_sigma) / 255.0
        x = (x + sigma * torch.randn(x.shape, generator=gen)).clamp(0, 1)
    u = float(torch.rand((), generator=gen))
    rgb = (x[0] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    if u < cfg.jpeg_prob:
        q = int(torch.randint(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1, (1,), generator=gen))
        rgb = jpeg_roundtrip(rgb, q)
    elif u < cfg.jpeg_prob + cfg.h264_prob:
        crf = int(torch.randint(cfg.h264_crf[0], cfg.h264_crf[1] + 1, (1,), generator=gen))
        rgb = h264_roundtrip(rgb, crf)
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float() / 255.0


def lr_size(crop: int, scale: float) -> int:
    """The low-resolution side for a crop at a scale: even (H.264's 4:2:0), at least 8."""
    return max(8, 2 * round(crop / scale / 2))


def batch_generator(seed: int, step: int) -> torch.Generator:
    """The random stream of batch `step` when worker processes make the batches
    (`data_workers` > 0): a function of (seed, step) alone, so the batches do not depend
    on the number of workers or their timing, and a resumed run draws the same ones."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) % 2**63)


class StepBatches(torch.utils.data.Dataset):
    """Batch k (= training step k) of `make_batch`, drawn from `batch_generator(seed, k)`."""

    def __init__(self, crops: np.ndarray, cfg: PredictorTrainConfig):
        self.crops, self.cfg = crops, cfg

    def __len__(self) -> int:
        return self.cfg.steps

    def __getitem__(self, step: int):
        return make_batch(self.crops, self.cfg, batch_generator(self.cfg.seed, step))


def _one_thread(_worker_id: int) -> None:
    torch.set_num_threads(1)


def step_batches(crops: np.ndarray, cfg: PredictorTrainConfig, start: int, end: int):
    """Batches start..end-1 in order, made by cfg.data_workers processes (fork: the crops
    are shared, not copied), each with one torch thread."""
    loader = torch.utils.data.DataLoader(
        StepBatches(crops, cfg), batch_size=None, sampler=range(start, end), num_workers=cfg.data_workers,
        prefetch_factor=4 if cfg.data_workers else None, worker_init_fn=_one_thread if cfg.data_workers else None,
    )
    return iter(loader)


def _flipped(c: torch.Tensor, flips: int) -> torch.Tensor:
    """One of the 8 flips/transposes of a (C, H, W) crop: bit 0 left-right, 1 up-down, 2 transpose."""
    if flips & 1:
        c = c.flip(-1)
    if flips & 2:
        c = c.flip(-2)
    if flips & 4:
        c = c.transpose(-1, -2)
    return c


def make_batch(crops: np.ndarray, cfg: PredictorTrainConfig, gen: torch.Generator):
    """(hr, low): (B, 3, crop, crop) and (B, 3, n, n), float [0, 1]; one scale per batch
    (log-uniform in [scale_min, scale_max]), random crop offsets, flips and transposes.
    With cfg.shift_weight > 0, `shifted_batch` instead."""
    if cfg.shift_weight > 0:
        return shifted_batch(crops, cfg, gen)
    s = math.exp(_uniform(gen, math.log(cfg.scale_min), math.log(cfg.scale_max)))
    n = lr_size(cfg.crop, s)
    hr, low = [], []
    for _ in range(cfg.batch_size):
        i = int(torch.randint(len(crops), (1,), generator=gen))
        size = crops.shape[-1]
        y = int(torch.randint(size - cfg.crop + 1, (1,), generator=gen))
        x = int(torch.randint(size - cfg.crop + 1, (1,), generator=gen))
        c = torch.from_numpy(crops[i, :, y : y + cfg.crop, x : x + cfg.crop].copy()).float() / 255.0
        c = _flipped(c, int(torch.randint(8, (1,), generator=gen))).contiguous()
        hr.append(c)
        low.append(degrade(c, (n, n), cfg, gen))
    return torch.stack(hr), torch.stack(low)


def shifted_batch(crops: np.ndarray, cfg: PredictorTrainConfig, gen: torch.Generator):
    """(hr, low, (dy, dx)): 2B crops, the second B the first B's windows moved by (dy, dx)
    HR pixels (one shift per batch, each in [0, cfg.shift_max], not both 0) and degraded with
    the same random draws, as the next frame of a slow pan is: hr[B + k][..., :-dy, :-dx] ==
    hr[k][..., dy:, dx:]. What the predictor's shift-consistency term compares (`detail_loss`
    sees all 2B). Flips and transposes are applied to the packed crop before the windows are
    cut, so the shift holds in the output's coordinates."""
    s = math.exp(_uniform(gen, math.log(cfg.scale_min), math.log(cfg.scale_max)))
    n = lr_size(cfg.crop, s)
    while True:
        dy, dx = (int(v) for v in torch.randint(cfg.shift_max + 1, (2,), generator=gen))
        if dy or dx:
            break
    size = crops.shape[-1]
    first, second = [], []
    for _ in range(cfg.batch_size):
        i = int(torch.randint(len(crops), (1,), generator=gen))
        c = _flipped(torch.from_numpy(crops[i].copy()).float() / 255.0, int(torch.randint(8, (1,), generator=gen)))
        y = int(torch.randint(size - cfg.crop - dy + 1, (1,), generator=gen))
        x = int(torch.randint(size - cfg.crop - dx + 1, (1,), generator=gen))
        a = c[:, y : y + cfg.crop, x : x + cfg.crop].contiguous()
        b = c[:, y + dy : y + dy + cfg.crop, x + dx : x + dx + cfg.crop].contiguous()
        state = gen.get_state()
        low_a = degrade(a, (n, n), cfg, gen)
        low_b = degrade(b, (n, n), cfg, torch.Generator().set_state(state))
        first.append((a, low_a))
        second.append((b, low_b))
    pairs = first + second
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs]), (dy, dx)
