"""Train a prior's noise predictor end to end through its sampler (InvSR, METHOD.md 2).

For a batch of high-resolution crops x (random crops of a packed uint8 array):
1. degrade each as real low-resolution video is (`degrade`): optional mild Gaussian blur,
   antialiased-bicubic or area downscaling by one scale in [1.5, 8] for the batch,
   optional mild sensor noise, then 8-bit quantisation, JPEG or single-frame H.264;
2. upsample it back with the engine's kernel (`vsr.core.resample`): x_up;
3. start at x_t = sqrt(abar_t) x_up + sqrt(1 - abar_t) f(x_up, t) (Yue et al. 2024,
   arXiv 2412.09013, eq. 7) for t ~ U[t_min, t_max] and run the FROZEN prior's 1-3 DDIM
   steps with back-projection (`vsr.methods.diffsr.upscale`, exactly what the engine
   runs); gradients flow through the prior into f only;
4. loss against x: Charbonnier (Lai et al. 2017) + L1 of image gradients (edges where
   the truth has them) + L1 of FFT amplitudes (Jiang et al. 2021's frequency loss, L1
   form: rewards high-frequency energy the truth has, wherever the phase lands).
   InvSR used L2 + LPIPS + GAN; LPIPS weights cannot be had here.

As in `pipelines/train_prior.py`: one frozen `PredictorTrainConfig` from YAML, every
random draw from one CPU `torch.Generator` checkpointed with the run (resume is
bit-for-bit; tested), EMA of the weights via diffusers, `--device cuda` for a GPU. The
training crops are packed once into `RUN/crops.npz` (uint8, < 64 MiB), so a GPU machine
gets the run folder and nothing else.

CLI (wired into `vsr train`): `vsr train predictor --config configs/predictor/X.yaml
[--resume]`, `vsr train predictor-export --checkpoint RUN/last.pt --out FOLDER
[--calibrate]`. Imports PyAV (for the H.264 degradation) besides vsr.io: a training
pipeline, not the engine.
"""
from __future__ import annotations

import copy
import dataclasses
import io
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from vsr.core.resample import resample
from vsr.core.sampling import back_project
from vsr.core.schedule import timestep_set
from vsr.errors import ConfigError, InputError

log = logging.getLogger(__name__)

CALIBRATION_GRID = (0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2)
CALIBRATION_SCALES = (2.0, 3.0, 4.0, 6.0, 8.0)


@dataclass(frozen=True)
class PredictorTrainConfig:
    """Everything that determines a run; saved into every checkpoint."""

    corpus: str = "data/corpus"
    run_dir: str = "runs/noise-predictor"
    prior: str | None = None  # a model folder or name; None = the shipped prior
    prior_dtype: str = "auto"  # auto | float32 | bfloat16: what the engine will run the prior in
    # packed crops (RUN/crops.npz unless given)
    crops_file: str | None = None
    pack_count: int = 640
    pack_size: int = 160
    pack_max_downscale: float = 2.0
    # model
    channels: int = 64
    num_blocks: int = 4
    pixel_unshuffle: int = 4
    emb_dim: int = 64
    # sampler
    crop: int = 128
    scale_min: float = 1.5
    scale_max: float = 8.0
    t_min: int = 10
    t_max: int = 250
    steps_choices: tuple[int, ...] = (1, 2, 3)
    consistency: int = 1
    direct_steps: int = 0  # warm start: the first steps skip the prior (x0 = x_t), see `PredictorTrainer.loss`
    # degradations
    blur_prob: float = 0.4
    blur_sigma: tuple[float, float] = (0.3, 1.2)
    area_prob: float = 0.4
    noise_prob: float = 0.3
    noise_sigma: float = 3.0  # max, in 8-bit units
    jpeg_prob: float = 0.3
    jpeg_quality: tuple[int, int] = (50, 95)
    h264_prob: float = 0.3
    h264_crf: tuple[int, int] = (18, 32)
    # loss
    charbonnier_eps: float = 1e-3
    grad_weight: float = 0.5
    fft_weight: float = 0.05
    # optimisation
    batch_size: int = 8
    steps: int = 20000
    lr: float = 3e-4
    warmup_steps: int = 100
    grad_clip: float = 1.0
    ema_decay: float = 0.995
    seed: int = 0
    device: str = "auto"
    num_threads: int = 0
    # bookkeeping
    checkpoint_every: int = 200
    checkpoint_minutes: float = 3.0
    val_every: int = 250
    val_crop: int = 256
    val_max_images: int = 16
    val_scales: tuple[float, ...] = (2.0, 4.0)
    val_t: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2)
    val_steps: int = 2

    def __post_init__(self) -> None:
        if not 1.0 < self.scale_min <= self.scale_max:
            raise ConfigError(f"scale_min/scale_max: got {self.scale_min}/{self.scale_max}, need 1 < min <= max")
        if not 1 <= self.t_min <= self.t_max:
            raise ConfigError(f"t_min/t_max: got {self.t_min}/{self.t_max}, need 1 <= t_min <= t_max")
        if not self.steps_choices or min(self.steps_choices) < 1:
            raise ConfigError("steps_choices: a non-empty list of step counts >= 1")
        if self.prior_dtype not in ("auto", "float32", "bfloat16"):
            raise ConfigError(f"prior_dtype: got {self.prior_dtype!r}, allowed: auto, float32, bfloat16")
        if self.crop % self.pixel_unshuffle or self.val_crop % self.pixel_unshuffle or self.crop > self.pack_size:
            raise ConfigError(f"crop/val_crop must be multiples of {self.pixel_unshuffle} and crop <= pack_size")
        if self.batch_size < 1 or self.steps < 0:
            raise ConfigError("batch_size must be >= 1 and steps >= 0")

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides) -> "PredictorTrainConfig":
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"training config not found: {path}") from None
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read training config {path}: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"training config {path} must be a mapping of key: value")
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: dict) -> "PredictorTrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown training config keys: {', '.join(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @property
    def crops_path(self) -> Path:
        return Path(self.crops_file) if self.crops_file else Path(self.run_dir) / "crops.npz"


def build_predictor(cfg: PredictorTrainConfig, num_train_timesteps: int = 1000, beta_schedule: str = "squaredcos_cap_v2"):
    from vsr.models.noise_predictor import NoisePredictor

    return NoisePredictor(
        channels=cfg.channels, num_blocks=cfg.num_blocks, pixel_unshuffle=cfg.pixel_unshuffle, emb_dim=cfg.emb_dim,
        num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule,
    )


# ----------------------------------------------------------------------------- data


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


def load_or_pack_crops(cfg: PredictorTrainConfig) -> np.ndarray:
    """The run's packed crops (built from the corpus's train split on first use)."""
    from .train_prior import load_images

    path = cfg.crops_path
    if path.is_file():
        with np.load(path) as z:
            return z["crops"]
    images = load_images(cfg.corpus, "train", 1280)
    crops = pack_crops(images, cfg.pack_count, cfg.pack_size, cfg.pack_max_downscale, cfg.seed)
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


def make_batch(crops: np.ndarray, cfg: PredictorTrainConfig, gen: torch.Generator):
    """(hr, low): (B, 3, crop, crop) and (B, 3, n, n), float [0, 1]; one scale per batch
    (log-uniform in [scale_min, scale_max]), random crop offsets, flips and transposes."""
    s = math.exp(_uniform(gen, math.log(cfg.scale_min), math.log(cfg.scale_max)))
    n = lr_size(cfg.crop, s)
    hr, low = [], []
    for _ in range(cfg.batch_size):
        i = int(torch.randint(len(crops), (1,), generator=gen))
        size = crops.shape[-1]
        y = int(torch.randint(size - cfg.crop + 1, (1,), generator=gen))
        x = int(torch.randint(size - cfg.crop + 1, (1,), generator=gen))
        c = torch.from_numpy(crops[i, :, y : y + cfg.crop, x : x + cfg.crop].copy()).float() / 255.0
        flips = int(torch.randint(8, (1,), generator=gen))
        if flips & 1:
            c = c.flip(-1)
        if flips & 2:
            c = c.flip(-2)
        if flips & 4:
            c = c.transpose(-1, -2)
        c = c.contiguous()
        hr.append(c)
        low.append(degrade(c, (n, n), cfg, gen))
    return torch.stack(hr), torch.stack(low)


# ----------------------------------------------------------------------------- loss


def detail_loss(out: torch.Tensor, hr: torch.Tensor, cfg: PredictorTrainConfig) -> tuple[torch.Tensor, dict]:
    """Charbonnier + grad_weight * L1(image gradients) + fft_weight * L1(|FFT|), on [-1, 1]."""
    diff = out - hr
    charb = torch.sqrt(diff * diff + cfg.charbonnier_eps**2).mean()
    gx = (out[..., :, 1:] - out[..., :, :-1]) - (hr[..., :, 1:] - hr[..., :, :-1])
    gy = (out[..., 1:, :] - out[..., :-1, :]) - (hr[..., 1:, :] - hr[..., :-1, :])
    grad = 0.5 * (gx.abs().mean() + gy.abs().mean())
    fft = (torch.fft.rfft2(out, norm="ortho").abs() - torch.fft.rfft2(hr, norm="ortho").abs()).abs().mean()
    loss = charb + cfg.grad_weight * grad + cfg.fft_weight * fft
    return loss, {"charb": float(charb.detach()), "grad": float(grad.detach()), "fft": float(fft.detach())}


# ----------------------------------------------------------------------------- validation


def sharpness(test: np.ndarray, reference: np.ndarray) -> float:
    """Laplacian energy of test's luma over reference's (HxWx3 uint8); 1.0 = as sharp
    (benchmarks.prior's measure)."""
    import cv2

    from vsr import metrics

    def energy(img: np.ndarray) -> float:
        return float((cv2.Laplacian(metrics.luma(img).astype(np.float64), cv2.CV_64F, ksize=3) ** 2).mean())

    return energy(test) / max(energy(reference), 1e-12)


def band_energy(test: np.ndarray, reference: np.ndarray, scale: float) -> float:
    """Luma energy above the input's Nyquist (radial frequency > 0.5 / scale cycles per
    pixel) of test over reference's (HxWx3 uint8): what an upscaler added that the input
    could not say; bicubic's is near 0, 1.0 = as much as the truth."""
    from vsr import metrics

    def energy(img: np.ndarray) -> float:
        y = metrics.luma(img).astype(np.float64)
        f = np.fft.fft2(y - y.mean())
        fy, fx = np.meshgrid(np.fft.fftfreq(y.shape[0]), np.fft.fftfreq(y.shape[1]), indexing="ij")
        return float((np.abs(f[np.hypot(fy, fx) > 0.5 / scale]) ** 2).sum())

    return energy(test) / max(energy(reference), 1e-12)


def _u8(x: torch.Tensor) -> list[np.ndarray]:
    """[-1, 1] (N, 3, H, W) -> list of HxWx3 uint8."""
    return list(((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy())


def _scores(outs: list[np.ndarray], refs: list[np.ndarray], scale: float) -> dict[str, float]:
    """Y-PSNR (dB), GMSD, hf (Laplacian energy ratio, benchmarks.prior's sharpness) and
    band (energy above the input's Nyquist over the truth's), means over the images."""
    from vsr import metrics

    return {
        "psnr": round(float(np.mean([metrics.psnr(o, r) for o, r in zip(outs, refs)])), 3),
        "gmsd": round(float(np.mean([metrics.gmsd(o, r) for o, r in zip(outs, refs)])), 5),
        "hf": round(float(np.mean([sharpness(o, r) for o, r in zip(outs, refs)])), 4),
        "band": round(float(np.mean([band_energy(o, r, scale) for o, r in zip(outs, refs)])), 4),
    }


def load_val_crops(corpus: str | Path, crop: int, max_images: int) -> torch.Tensor:
    """(N, 3, crop, crop) float [0, 1]: centre crops of the held-out split (benchmarks.prior's)."""
    from vsr.calibrate import load_crops

    return load_crops(Path(corpus) / "images" / "val", crop, max_images)


@torch.no_grad()
def evaluate(
    predictor, denoiser, alphas_cumprod: torch.Tensor, hr: torch.Tensor, scales, levels, steps: int,
    consistency: int = 1, baselines: bool = True,
) -> dict:
    """Y-PSNR / GMSD / HF ratio on hr (N, 3, H, W) [0, 1] downscaled by each scale
    (antialiased bicubic, as benchmarks.prior), upscaled back with the predictor at each
    start t/T in `levels` (a list, or a dict scale -> list); plus bicubic and
    bicubic + back-projection when `baselines`."""
    from vsr.methods import diffsr

    device = next(predictor.parameters()).device
    T = int(alphas_cumprod.shape[0])
    refs = _u8(hr * 2 - 1)
    result: dict = {}
    for s in scales:
        H, W = hr.shape[-2:]
        low01 = resample(hr, (round(H / s), round(W / s))).clamp(0, 1)
        low01 = (low01 * 255).round() / 255  # 8-bit input, as the engine gets it
        low = (low01 * 2 - 1).to(device)
        up = resample(low, (H, W))
        row: dict = {}
        if baselines:
            row["bicubic"] = _scores(_u8(up), refs, s)
            row["bicubic+bp"] = _scores(_u8(back_project(up, low, consistency or 1)), refs, s)
        for lv in levels[s] if isinstance(levels, dict) else levels:
            ts = timestep_set(float(lv), steps, T)
            outs = []
            for i in range(len(hr)):  # one frame at a time, as PredictedNoise runs it
                eps = predictor(up[i : i + 1], ts[0])
                outs.append(diffsr.upscale(denoiser, low[i : i + 1], up[i : i + 1], eps, ts, alphas_cumprod,
                                           consistency=consistency))
            row[f"t={lv}"] = _scores(_u8(torch.cat(outs)), refs, s)
        result[f"{s:g}x"] = row
    return result


# ----------------------------------------------------------------------------- loop


def _lr_at(step: int, cfg: PredictorTrainConfig) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _prior_dtype(name: str, device: torch.device) -> torch.dtype:
    from vsr.device import resolve_dtype

    return resolve_dtype(name, device) if name == "auto" else getattr(torch, name)


class PredictorTrainer:
    """One run's state; `state_dict` is everything needed to continue bit-for-bit.

    prior: a `vsr.models.LoadedModel` (frozen); crops: (M, 3, S, S) uint8; val: (N, 3,
    H, W) float [0, 1] or None.
    """

    def __init__(self, cfg: PredictorTrainConfig, prior, crops: np.ndarray, val: torch.Tensor | None):
        from diffusers.training_utils import EMAModel

        from .train_prior import resolve_device

        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.prior = prior
        self.alphas_cumprod = prior.alphas_cumprod
        self.denoiser = prior.make_denoiser(self.device, _prior_dtype(cfg.prior_dtype, self.device))
        sched = _schedule_of(prior)
        torch.manual_seed(cfg.seed)
        self.net = build_predictor(cfg, *sched).to(self.device)
        if not torch.allclose(self.net.alphas_cumprod.cpu(), self.alphas_cumprod.cpu(), rtol=1e-6, atol=1e-9):
            raise ConfigError("the prior's noise schedule is not one NoisePredictor can rebuild (DDPM betas)")
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=cfg.lr, weight_decay=0.0)
        self.ema = EMAModel(self.net.parameters(), decay=cfg.ema_decay)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.step = 0
        self.wall_s = 0.0
        self.history: list[dict] = []
        self.crops = crops
        self.val = val

    def state_dict(self) -> dict:
        return {
            "config": self.cfg.to_dict(), "step": self.step, "wall_s": self.wall_s,
            "net": self.net.state_dict(), "opt": self.opt.state_dict(), "ema": self.ema.state_dict(),
            "gen": self.gen.get_state(), "history": self.history,
            "schedule": list(_schedule_of(self.prior)),
        }

    def load_state_dict(self, state: dict) -> None:
        self.step = state["step"]
        self.wall_s = state.get("wall_s", 0.0)
        self.net.load_state_dict(state["net"])
        self.opt.load_state_dict(state["opt"])
        self.ema.load_state_dict(state["ema"])
        self.gen.set_state(state["gen"])
        self.history = list(state.get("history", []))

    def loss(
        self, hr: torch.Tensor, low: torch.Tensor, t: int, steps: int, direct: bool = False
    ) -> tuple[torch.Tensor, dict]:
        """The end-to-end loss of one batch (hr, low in [0, 1]) from start t with `steps` DDIM steps.

        direct: the warm-up objective instead: the prior is taken as the identity (x0 =
        x_t = x_up + d), so only the back-projected start is scored; five times cheaper on
        a CPU, it teaches the predictor the detail before the sampler is in the loop.
        """
        from vsr.core.schedule import add_noise
        from vsr.methods import diffsr

        hr, low = hr.to(self.device) * 2 - 1, low.to(self.device) * 2 - 1
        up = resample(low, tuple(hr.shape[-2:]))
        eps = self.net(up, t)
        if direct:
            x_t = add_noise(up, eps, t, self.alphas_cumprod)
            out = back_project(x_t, low, self.cfg.consistency) if self.cfg.consistency else x_t
            return detail_loss(out, hr, self.cfg)
        ts = timestep_set(t / self.alphas_cumprod.shape[0], steps, self.alphas_cumprod.shape[0])
        out = diffsr.upscale(self.denoiser, low, up, eps, ts, self.alphas_cumprod, consistency=self.cfg.consistency)
        return detail_loss(out, hr, self.cfg)

    def train_step(self) -> dict:
        lr = _lr_at(self.step, self.cfg)
        for group in self.opt.param_groups:
            group["lr"] = lr
        hr, low = make_batch(self.crops, self.cfg, self.gen)
        t = int(torch.randint(self.cfg.t_min, self.cfg.t_max + 1, (1,), generator=self.gen))
        steps = self.cfg.steps_choices[int(torch.randint(len(self.cfg.steps_choices), (1,), generator=self.gen))]
        self.net.train()
        direct = self.step < self.cfg.direct_steps
        loss, parts = self.loss(hr, low, t, steps, direct)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.cfg.grad_clip)
        self.opt.step()
        self.ema.step(self.net.parameters())
        self.step += 1
        return {"loss": float(loss.detach()), **parts, "t": t, "steps": 0 if direct else steps,
                "scale": round(hr.shape[-1] / low.shape[-1], 2)}

    def ema_net(self) -> torch.nn.Module:
        """A copy of the predictor with the EMA weights (what gets exported)."""
        net = copy.deepcopy(self.net)
        self.ema.copy_to(net.parameters())
        return net.eval()

    def validate(self, baselines: bool = False) -> dict:
        return evaluate(self.ema_net(), self.denoiser, self.alphas_cumprod, self.val, self.cfg.val_scales,
                        self.cfg.val_t, self.cfg.val_steps, self.cfg.consistency, baselines=baselines)


def _schedule_of(prior) -> tuple[int, str]:
    """(num_train_timesteps, beta_schedule) of a LoadedModel, read off its scheduler config."""
    T = int(prior.alphas_cumprod.shape[0])
    beta = "squaredcos_cap_v2"
    if prior.source:
        p = Path(prior.source) / "scheduler" / "scheduler_config.json"
        if p.is_file():
            beta = json.loads(p.read_text()).get("beta_schedule", beta)
    return T, beta


def save_checkpoint(trainer: PredictorTrainer, path: Path) -> None:
    """Atomically: a kill mid-write never leaves a broken `last.pt`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(trainer.state_dict(), tmp)
    tmp.replace(path)


def _log_record(run: Path, record: dict) -> None:
    with open(run / "history.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


def train(
    cfg: PredictorTrainConfig, *, resume: bool = False, progress: bool = True, max_seconds: float | None = None,
    stop_at: int | None = None, prior=None, crops: np.ndarray | None = None, val: torch.Tensor | None = None,
) -> PredictorTrainer:
    """Run (or continue) training to cfg.steps (or stop_at); checkpoints to RUN/last.pt.

    prior/crops/val default to the config's (the shipped prior, RUN/crops.npz, the
    corpus's val split); tests pass tiny ones.
    """
    from tqdm import tqdm

    from vsr.models import load_model

    run = Path(cfg.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    prior = prior if prior is not None else load_model(cfg.prior)
    crops = crops if crops is not None else load_or_pack_crops(cfg)
    if val is None and (Path(cfg.corpus) / "images" / "val").is_dir():
        val = load_val_crops(cfg.corpus, cfg.val_crop, cfg.val_max_images)
    trainer = PredictorTrainer(cfg, prior, crops, val)
    ckpt = run / "last.pt"
    if resume and ckpt.exists():
        trainer.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True))
        log.info("resumed from %s at step %d", ckpt, trainer.step)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    if trainer.val is not None and trainer.step == 0 and cfg.val_every:
        record = {"step": 0, "wall_s": 0.0, **trainer.validate(baselines=True)}
        trainer.history.append(record)
        _log_record(run, record)
        log.info("%s", json.dumps(record))
    bar = tqdm(total=cfg.steps, initial=trainer.step, disable=not progress, desc="train predictor", unit="step")
    started = last_ckpt = t_last = time.time()
    end = cfg.steps if stop_at is None else min(cfg.steps, stop_at)
    try:
        while trainer.step < end:
            info = trainer.train_step()
            now = time.time()
            trainer.wall_s += now - t_last
            bar.update(1)
            bar.set_postfix(loss=f"{info['loss']:.4f}")
            if trainer.step % 25 == 0:
                _log_record(run, {"step": trainer.step, "wall_s": round(trainer.wall_s, 1), **info})
            if trainer.val is not None and cfg.val_every and trainer.step % cfg.val_every == 0:
                record = {"step": trainer.step, "wall_s": round(trainer.wall_s, 1), **trainer.validate()}
                trainer.history.append(record)
                _log_record(run, record)
                bar.write(json.dumps(record))
            stop = bool(max_seconds and now - started > max_seconds)
            if (trainer.step % cfg.checkpoint_every == 0 or trainer.step == end or stop
                    or now - last_ckpt > 60 * cfg.checkpoint_minutes):
                save_checkpoint(trainer, ckpt)
                last_ckpt = time.time()
            if stop:
                break
            t_last = time.time()
    finally:
        bar.close()
    return trainer


# ----------------------------------------------------------------------------- export


def _checkpoint_net(checkpoint: str | Path):
    """The EMA predictor of a checkpoint, float32 CPU, and the checkpoint's state."""
    from diffusers.training_utils import EMAModel

    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/zip errors vary by torch version; all mean "not a checkpoint"
        raise InputError(f"cannot read checkpoint {checkpoint}: {type(exc).__name__}: {exc}") from None
    if not isinstance(state, dict) or not {"config", "net", "ema"} <= set(state):
        raise InputError(f"{checkpoint} is not a noise predictor checkpoint (expected config, net and ema)")
    cfg = PredictorTrainConfig.from_dict(state["config"])
    net = build_predictor(cfg, *state.get("schedule", (1000, "squaredcos_cap_v2")))
    net.load_state_dict(state["net"])
    ema = EMAModel(net.parameters(), decay=cfg.ema_decay)
    ema.load_state_dict(state["ema"])
    ema.copy_to(net.parameters())
    return net.eval(), state, cfg


def calibrate(
    net, prior, hr: torch.Tensor, *, scales=CALIBRATION_SCALES, grid=CALIBRATION_GRID, steps: int = 2,
    consistency: int = 1, device: str = "auto", dtype: str = "auto", tolerance_db: float = 0.1,
) -> tuple[dict, dict]:
    """The start t/T per scale: on hr (the held-out crops), among the grid points whose
    Y-PSNR is within `tolerance_db` of the best, the one with the lowest GMSD (fidelity
    first, then the least distorted structure). Returns ({scales, t}, all scores)."""
    from .train_prior import resolve_device

    dev = resolve_device(device)
    den = prior.make_denoiser(dev, _prior_dtype(dtype, dev))
    scores = evaluate(net.to(dev), den, prior.alphas_cumprod, hr, scales, grid, steps, consistency)
    chosen = []
    for s in scales:
        row = {k: v for k, v in scores[f"{s:g}x"].items() if k.startswith("t=")}
        best = max(v["psnr"] for v in row.values())
        ok = {k: v for k, v in row.items() if v["psnr"] >= best - tolerance_db}
        chosen.append(float(min(ok, key=lambda k: ok[k]["gmsd"])[2:]))
    return {"scales": [float(s) for s in scales], "t": chosen}, scores


def export(
    checkpoint: str | Path, out_dir: str | Path, *, prior: str | None = None, do_calibrate: bool = False,
    corpus: str | None = None, mix: float = 0.0, val_max_images: int = 16,
    scales: tuple[float, ...] = CALIBRATION_SCALES, grid: tuple[float, ...] = CALIBRATION_GRID,
) -> Path:
    """Write a model folder: the prior (unet/, scheduler/, copied from `prior`, default
    the run's) plus `noise_predictor/` (EMA weights, fp32 safetensors) and a
    model_card.yaml with the `noise_predictor:` key (scales, t, mix, provenance). With
    do_calibrate the start t per scale is measured on the corpus's held-out crops
    (`calibrate`); otherwise the key has no scales/t and the PRF decides."""
    from vsr.models import load_model, resolve_model
    from vsr.models.card import ModelCard
    from vsr.models.noise_predictor import SUBFOLDER, count_macs

    net, state, cfg = _checkpoint_net(checkpoint)
    prior_name = prior if prior is not None else cfg.prior
    _, location, card_path = resolve_model(prior_name)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for sub in ("unet", "scheduler"):
        if Path(location, sub).is_dir() and Path(location).resolve() != out.resolve():
            shutil.copytree(Path(location, sub), out / sub, dirs_exist_ok=True)
    for extra in ("training.json", "training_corpus_manifest.json"):
        if Path(location, extra).is_file() and Path(location).resolve() != out.resolve():
            shutil.copyfile(Path(location, extra), out / extra)
    net.save_pretrained(out / SUBFOLDER, safe_serialization=True)
    card = ModelCard.from_yaml(card_path, Path(location).name) if card_path else ModelCard(name=Path(location).name)
    entry: dict = {"mix": float(mix)}
    if do_calibrate:
        hr = load_val_crops(corpus or cfg.corpus, cfg.val_crop, val_max_images)
        cal, scores = calibrate(net, load_model(str(out)), hr, scales=scales, grid=grid, steps=cfg.val_steps,
                                consistency=cfg.consistency, device=cfg.device)
        entry.update(cal)
        entry["calibration"] = {"steps": cfg.val_steps, "images": int(len(hr)), "crop": cfg.val_crop,
                                "grid": [float(g) for g in grid], "scores": scores,
                                "rule": "lowest GMSD within 0.1 dB of the best Y-PSNR (held-out crops, 8-bit "
                                        "antialiased-bicubic input)"}
    entry["architecture"] = {
        "class": "vsr.models.noise_predictor.NoisePredictor", "channels": cfg.channels, "num_blocks": cfg.num_blocks,
        "pixel_unshuffle": cfg.pixel_unshuffle, "parameters": sum(p.numel() for p in net.parameters()),
        "gmacs_per_256x256_forward": round(count_macs(net) / 1e9, 3),
    }
    entry["training"] = {
        "steps": state["step"], "wall_s": round(state.get("wall_s", 0.0), 1), "config": state["config"],
        "last_validation": state["history"][-1] if state.get("history") else None,
    }
    extra = dict(card.extra)
    extra["noise_predictor"] = entry
    card = dataclasses.replace(card, extra=extra)
    card.save(out / "model_card.yaml", header=f"{card.name} with a noise predictor ({checkpoint}, step {state['step']})")
    return out


# ----------------------------------------------------------------------------- CLI


def add_cli(sub) -> None:
    """Add `predictor` and `predictor-export` to `vsr train`'s subparsers."""
    p = sub.add_parser("predictor", help="train (or resume) a prior's noise predictor (InvSR)")
    p.add_argument("--config", required=True, help="a YAML file of PredictorTrainConfig fields (configs/predictor/*.yaml)")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/last.pt if it exists")
    p.add_argument("--steps", type=int, help="override the total number of steps")
    p.add_argument("--corpus", help="override the corpus folder")
    p.add_argument("--run-dir", help="override the run folder")
    p.add_argument("--device", help="auto | cpu | cuda")
    p.add_argument("--threads", type=int, help="CPU threads for torch (0 = torch's default)")
    p.add_argument("--max-minutes", type=float, help="stop (with a checkpoint) after this long")
    p.add_argument("--stop-at", type=int, help="stop at this step; the LR schedule still spans --steps")
    p.add_argument("--quiet", action="store_true")
    e = sub.add_parser("predictor-export", help="write a model folder: the prior plus the predictor's EMA weights")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--out", required=True)
    e.add_argument("--prior", help="the prior to copy (default: the run's)")
    e.add_argument("--calibrate", action="store_true", help="measure the start t per scale on the held-out crops")
    e.add_argument("--corpus", help="corpus for --calibrate (default: the run's)")
    e.add_argument("--mix", type=float, default=0.0, help="std of the Gaussian field added to the prediction")
    e.add_argument("--scales", type=float, nargs="+", default=list(CALIBRATION_SCALES), help="scales to calibrate")
    e.add_argument("--grid", type=float, nargs="+", default=list(CALIBRATION_GRID), help="start t/T to try")
    e.add_argument("--max-images", type=int, default=16, help="held-out images to calibrate on")


def run_cli(args) -> int:
    if args.train_command == "predictor-export":
        if not Path(args.checkpoint).exists():
            raise InputError(f"checkpoint not found: {args.checkpoint}")
        print(export(args.checkpoint, args.out, prior=args.prior, do_calibrate=args.calibrate, corpus=args.corpus,
                     mix=args.mix, val_max_images=args.max_images, scales=tuple(args.scales), grid=tuple(args.grid)))
        return 0
    cfg = PredictorTrainConfig.from_yaml(
        args.config, steps=args.steps, corpus=args.corpus, run_dir=args.run_dir, device=args.device,
        num_threads=args.threads,
    )
    trainer = train(cfg, resume=args.resume, progress=not args.quiet,
                    max_seconds=args.max_minutes * 60 if args.max_minutes else None, stop_at=args.stop_at)
    print(f"step {trainer.step}, checkpoint {Path(cfg.run_dir) / 'last.pt'}")
    return 0
