"""The noise predictor's loss, validation and training state (see
`train_noise_predictor`): `PredictorTrainer.state_dict` is everything needed to continue
bit-for-bit."""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vsr.core.resample import resample
from vsr.core.sampling import back_project
from vsr.core.schedule import timestep_set
from vsr.errors import ConfigError

from .predictor_config import PredictorTrainConfig, build_predictor
from .predictor_data import make_batch


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


def shift_difference(out: torch.Tensor, dy: int, dx: int, border: int = 8, block: int = 1) -> torch.Tensor:
    """Mean |a - b| where the two halves of `out` (2B, C, H, W; the second half the first's
    windows moved by (dy, dx), `shifted_batch`) show the same pixels, `border` pixels in from
    the edges (resampling and back-projection see other surroundings there); with block > 1,
    of block x block averages of a - b (the low-frequency change a viewer sees as flicker,
    as `vsr.metrics.temporal.flicker` measures it with 8)."""
    half = out.shape[0] // 2
    h, w = out.shape[-2:]
    a = out[:half, :, dy:, dx:]
    b = out[half:, :, : h - dy, : w - dx]
    diff = (a - b)[..., border : a.shape[-2] - border, border : a.shape[-1] - border]
    return (F.avg_pool2d(diff, block) if block > 1 else diff).abs().mean()


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


def upscale_factor(hr: torch.Tensor, low: torch.Tensor) -> float:
    """The factor from low (..., h, w) to hr (..., H, W): the geometric mean of the two
    axes', as `Engine.scale_for` gives the predictor."""
    return math.sqrt(hr.shape[-2] / low.shape[-2] * hr.shape[-1] / low.shape[-1])


def ema_by_name(state: dict) -> dict[str, torch.Tensor]:
    """A checkpoint's EMA weights by parameter name (the shadow list is in parameter order,
    which is the net's state-dict order: its one buffer is not persistent)."""
    return dict(zip(state["net"], state["ema"]["shadow_params"]))


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
        factor = upscale_factor(hr, low)
        row: dict = {}
        if baselines:
            row["bicubic"] = _scores(_u8(up), refs, s)
            row["bicubic+bp"] = _scores(_u8(back_project(up, low, consistency or 1)), refs, s)
        for lv in levels[s] if isinstance(levels, dict) else levels:
            ts = timestep_set(float(lv), steps, T)
            outs = []
            for i in range(len(hr)):  # one frame at a time, as PredictedNoise runs it
                eps = predictor(up[i : i + 1], ts[0], factor)
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


def prior_fingerprint(prior) -> str:
    """sha256 of a loaded prior's weights (its net's state dict: names, shapes, dtypes and
    values, in order): which prior a run trains against, whatever folder it came from."""
    import hashlib

    h = hashlib.sha256()
    for name, t in prior.net.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


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
        if cfg.t_max >= len(self.alphas_cumprod):
            raise ConfigError(f"t_max: got {cfg.t_max}, need < {len(self.alphas_cumprod)} (the prior's timesteps)")
        if not torch.allclose(self.net.alphas_cumprod.cpu(), self.alphas_cumprod.cpu(), rtol=1e-6, atol=1e-9):
            raise ConfigError("the prior's noise schedule is not one NoisePredictor can rebuild (DDPM betas)")
        _freeze_all_but(self.net, cfg.trainable, (cfg.scale_min, cfg.scale_max))
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=cfg.lr, weight_decay=0.0)
        self.ema = EMAModel(self.net.parameters(), decay=cfg.ema_decay)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.step = 0
        self.wall_s = 0.0
        self.history: list[dict] = []
        self.crops = crops
        self.val = val
        self.prior_sha256 = prior_fingerprint(prior)  # which prior the run trains against, in every checkpoint

    def state_dict(self) -> dict:
        return {
            "config": self.cfg.to_dict(), "step": self.step, "wall_s": self.wall_s,
            "net": self.net.state_dict(), "opt": self.opt.state_dict(), "ema": self.ema.state_dict(),
            "gen": self.gen.get_state(), "history": self.history,
            "schedule": list(_schedule_of(self.prior)),
            "prior_sha256": self.prior_sha256,
        }

    def load_state_dict(self, state: dict) -> None:
        self.step = state["step"]
        self.wall_s = state.get("wall_s", 0.0)
        self.net.load_state_dict(state["net"])
        self.opt.load_state_dict(state["opt"])
        self.ema.load_state_dict(state["ema"])
        self.gen.set_state(state["gen"])
        self.history = list(state.get("history", []))

    def init_from(self, state: dict) -> None:
        """Start from another run's EMA weights (a warm start, e.g. on a larger corpus):
        the optimiser, step, LR schedule and random stream start afresh. A network blind to
        the scale may warm-start one conditioned on it: the scale layer (`scale_emb`) and the
        anchors' weight offsets (`anchor_offsets`), zero-initialised so the output starts the
        same, are the only weights it may lack."""
        try:
            missing, unexpected = self.net.load_state_dict(state["net"], strict=False)
        except RuntimeError as exc:  # torch's size mismatch: one line of it
            raise ConfigError(f"init_checkpoint: its network does not fit this config's: "
                              f"{str(exc).splitlines()[-1].strip()}") from None
        if unexpected or any(not k.startswith(("scale_emb.", "anchor_offsets.")) for k in missing):
            raise ConfigError(f"init_checkpoint: its network does not fit this config's (missing "
                              f"{', '.join(missing) or 'nothing'}; unexpected {', '.join(unexpected) or 'nothing'})")
        shadow = ema_by_name(state)
        with torch.no_grad():
            for name, p in self.net.named_parameters():
                if name in shadow:
                    p.copy_(shadow[name])
        from diffusers.training_utils import EMAModel

        self.ema = EMAModel(self.net.parameters(), decay=self.cfg.ema_decay)

    def loss(
        self, hr: torch.Tensor, low: torch.Tensor, t: int, steps: int, direct: bool = False,
        shift: tuple[int, int] | None = None,
    ) -> tuple[torch.Tensor, dict]:
        """The end-to-end loss of one batch (hr, low in [0, 1]) from start t with `steps` DDIM steps.

        direct: the warm-up objective instead: the prior is taken as the identity (x0 =
        x_t = x_up + d), so only the back-projected start is scored; five times cheaper on
        a CPU, it teaches the predictor the detail before the sampler is in the loop.
        shift: the (dy, dx) of a `shifted_batch`: adds shift_weight x `shift_difference` of
        the output, which the truth has as 0: detail that moves with the picture.
        """
        from vsr.core.schedule import add_noise
        from vsr.methods import diffsr

        hr, low = hr.to(self.device) * 2 - 1, low.to(self.device) * 2 - 1
        up = resample(low, tuple(hr.shape[-2:]))
        eps = self.net(up, t, upscale_factor(hr, low))
        if direct:
            x_t = add_noise(up, eps, t, self.alphas_cumprod)
            out = back_project(x_t, low, self.cfg.consistency) if self.cfg.consistency else x_t
        else:
            ts = timestep_set(t / self.alphas_cumprod.shape[0], steps, self.alphas_cumprod.shape[0])
            out = diffsr.upscale(self.denoiser, low, up, eps, ts, self.alphas_cumprod,
                                 consistency=self.cfg.consistency)
        loss, parts = detail_loss(out, hr, self.cfg)
        if shift is not None:
            term = shift_difference(out, *shift, block=self.cfg.shift_block)
            loss = loss + self.cfg.shift_weight * term
            parts["shift"] = float(term.detach())
        return loss, parts

    def train_step(self, batch: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict:
        """One optimiser step on `batch` (hr, low), or on one drawn from the run's generator."""
        lr = _lr_at(self.step, self.cfg)
        for group in self.opt.param_groups:
            group["lr"] = lr
        hr, low, *shift = batch if batch is not None else make_batch(self.crops, self.cfg, self.gen)
        t = int(torch.randint(self.cfg.t_min, self.cfg.t_max + 1, (1,), generator=self.gen))
        steps = self.cfg.steps_choices[int(torch.randint(len(self.cfg.steps_choices), (1,), generator=self.gen))]
        self.net.train()
        direct = self.step < self.cfg.direct_steps
        loss, parts = self.loss(hr, low, t, steps, direct, shift[0] if shift else None)
        self.opt.zero_grad(set_to_none=True)
        trained = loss.requires_grad  # False: a batch at a factor where no `trainable` weight counts
        if trained:
            loss.backward()
            if self.cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.cfg.grad_clip)
            self.opt.step()
        self.ema.step(self.net.parameters())
        self.step += 1
        return {"loss": float(loss.detach()), **parts, "t": t, "steps": 0 if direct else steps,
                "scale": round(hr.shape[-1] / low.shape[-1], 2), **({} if trained else {"skipped": True})}

    def ema_net(self) -> torch.nn.Module:
        """A copy of the predictor with the EMA weights (what gets exported)."""
        net = copy.deepcopy(self.net)
        self.ema.copy_to(net.parameters())
        return net.eval()

    def validate(self, baselines: bool = False) -> dict:
        return evaluate(self.ema_net(), self.denoiser, self.alphas_cumprod, self.val, self.cfg.val_scales,
                        self.cfg.val_t, self.cfg.val_steps, self.cfg.consistency, baselines=baselines)


def _freeze_all_but(net: torch.nn.Module, prefixes: tuple[str, ...], scale_range: tuple[float, float]) -> None:
    """Only parameters named with one of `prefixes` keep requires_grad (none given: all do).
    Frozen ones get no gradient, so AdamW leaves them and the EMA copies them unchanged.
    ConfigError when a prefix names no parameter, or when all it names are the offsets of
    scale anchors whose blend weight is 0 at every factor in `scale_range` (they would never
    train; a batch drawn where only some of them count is skipped, see `train_step`)."""
    if not prefixes:
        return
    names = [n for n, _ in net.named_parameters()]
    for prefix in prefixes:
        if not any(n.startswith(prefix) for n in names):
            sample = sorted({n.split(".")[0] for n in names})
            raise ConfigError(f"trainable: {prefix!r} names no parameter of this network "
                              f"(its top-level names: {', '.join(sample)})")
    chosen = {n for n in names if n.startswith(tuple(prefixes))}
    if not any(_counts_in(n, net, scale_range) for n in chosen):
        lo, hi = scale_range
        raise ConfigError(f"trainable: {', '.join(prefixes)} name only scale anchors whose weight is 0 at every "
                          f"factor in scale_min..scale_max ({lo:g}..{hi:g}): nothing would train")
    for name, p in net.named_parameters():
        p.requires_grad_(name in chosen)


def _counts_in(name: str, net: torch.nn.Module, scale_range: tuple[float, float]) -> bool:
    """Whether parameter `name` takes part in the output at some factor in scale_range: all
    do but an anchor's offsets (`anchor_offsets.I.`), whose blend weight (`anchor_weights`)
    is piecewise linear in log2(scale) with its corners at the anchors, so its largest value
    on the range is at an end or at an anchor inside it."""
    from vsr.models.noise_predictor import anchor_weights

    if not name.startswith("anchor_offsets."):
        return True
    i = int(name.split(".")[1])
    lo, hi = scale_range
    anchors = net.config.scale_anchors
    return any(anchor_weights(s, anchors)[i] > 0 for s in (lo, hi, *(a for a in anchors if lo <= a <= hi)))


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
