"""InvSR's noise predictor in pixel space: f(x_up, t) -> eps_hat (METHOD.md section 2).

InvSR (Yue et al. 2024, arXiv 2412.09013, "partial noise prediction") starts the reverse
process at an intermediate timestep t from

    x_t = sqrt(abar_t) x_up + sqrt(1 - abar_t) eps_hat,      eps_hat = f(x_up, t)

(its eq. 7 with the encoder dropped: vsr's prior works on pixels), instead of a Gaussian
eps, and trains f end to end through the frozen sampler against the high-resolution
image. This module is f; `vsr.noise.predicted.PredictedNoise` plugs it into the noise
seam and `pipelines/train_noise_predictor.py` trains it.

Parametrisation. The network predicts a *detail image* d (N, 3, H, W) in [-1, 1] units
and eps_hat is the noise that makes the start exactly x_up + d:

    eps_hat = ((1 - sqrt(abar_t)) x_up + d) / sqrt(1 - abar_t)
    =>  x_t = sqrt(abar_t) x_up + sqrt(1 - abar_t) eps_hat = x_up + d.

So the network's output has the same range at every t (at t/T = 0.01 eps_hat is ~35x
larger than d), and a zero-initialised last layer starts training from "feed the
bicubic frame to the prior as if it were x_t", the Diff-SR start without noise.

Architecture: pixel_unshuffle(r) of x_up (3 r^2 channels at H/r), a 3x3 conv to C
channels, `num_blocks` residual blocks (conv-SiLU-conv, FiLM by the timestep after the
first conv), a 3x3 conv back to 3 r^2 channels, pixel_shuffle(r). Everything runs at H/r,
except an optional coarse branch (`deep_blocks` > 0): after the blocks, pixel_unshuffle(2)
and a 1x1 conv to `deep_channels` at H/2r, `deep_blocks` more residual blocks there, a 1x1
conv and pixel_shuffle(2) back, added to the H/r features before the last conv (a U-Net of
two levels). A block of 2C channels at H/2r costs the MACs of one of C channels at H/r and
has four times its weights and twice its reach; inputs must then be multiples of 2r
(`size_multiple`).
The shipped predictor (fourth version) has r = 2, C = 32, 1 block and a coarse branch of
3 blocks of 64 channels: 1.39 GMACs per 256x256 tile (the issue's budget is 1.5), a
receptive field of about 68 output pixels, and scale anchors 2, 4, 8 (1.18M parameters; the
third version, the same network blind to the scale, had 297k). The second (r = 2, C = 32, 4
blocks: 1.32 GMACs, 102k parameters, 42 pixels) learnt faster on the CPU but less with a
GPU's compute; the first (r = 4, C = 64: 1.43 GMACs, 388k parameters) learnt more slowly at
the same compute, most at 4x (benchmarks/RESULTS.md). No normalisation layers: the output of a
sample never depends on the other samples of its batch.

Conditioning. On t always (what the frozen prior's response depends on), through FiLM
in every block. On the nominal upscaling factor s (the geometric mean of the two axes', as
`Engine.scale_for`; the engine passes it) in either or both of two ways, each starting from
zero so a network warm-started from a blind one gives exactly its output:
- `scale_features` > 0: Fourier features of log2 s (`scale_features_of`) through a linear
  layer added to the timestep embedding (FiLM by the scale: cheap, few weights);
- `scale_anchors` (e.g. [2, 4, 8]): every weight of the convolutional path gets an offset
  per anchor factor, blended by hat functions piecewise linear in log2 s
  (`anchor_weights`): the weights at s are w + sum_k a_k(s) offset_k, so each factor gets
  its own network for the same MACs (and 1 + K times the weights; a kernel mixture, as
  CondConv, Yang et al. 2019, arXiv 1904.04971, with the routing fixed by the scale).
A blind network must guess the scale from the picture and hedges between scales; the blind
third version trained at 2x alone gained 0.12 dB there with the degradation mix and 0.23 dB
on clean input, and lost 0.3-0.6 dB at 4x (benchmarks/RESULTS.md). The picture still decides
the rest: real video is often blurred, upscaled or compressed before it reaches vsr, and
the training degradations cover that.
"""
from __future__ import annotations

import math
import threading
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config

SUBFOLDER = "noise_predictor"  # inside a model folder, beside unet/ and scheduler/
_SWAP = threading.RLock()  # anchored predictors swap their convolutions' weights in for a call: one at a time


def _alphas_cumprod(num_train_timesteps: int, beta_schedule: str) -> torch.Tensor:
    """(T,) float64 alpha_bar of diffusers' DDPMScheduler for this schedule."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule).alphas_cumprod.double()


def timestep_features(t: torch.Tensor, num_train_timesteps: int, dim: int) -> torch.Tensor:
    """(N, dim) sinusoidal features of t (Vaswani et al. 2017; DDPM's embedding): angles
    t * w_i with w_i from 1 down to 1/T geometrically, so neighbouring timesteps get
    neighbouring features (no wrap-around within [0, T))."""
    half = dim // 2
    freqs = torch.exp(-math.log(num_train_timesteps) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    ang = t.float()[:, None] * freqs[None]
    return torch.cat([ang.sin(), ang.cos()], dim=1)


def scale_features_of(scale: torch.Tensor, dim: int) -> torch.Tensor:
    """(N, dim) Fourier features of l = log2(scale) for an (N,) tensor of upscaling factors
    > 1: sin and cos of k pi l / 4 for k = 1..dim/2, so factors 1-16 (l in 0-4) span at most
    half a period of the slowest pair (no two factors share features) and neighbouring
    factors get neighbouring features."""
    half = dim // 2
    l = torch.log2(scale.float().clamp_min(1.0))
    ang = l[:, None] * (math.pi / 4) * torch.arange(1, half + 1, device=scale.device, dtype=torch.float32)[None]
    return torch.cat([ang.sin(), ang.cos()], dim=1)


def anchor_weights(scale: float, anchors: Sequence[float]) -> list[float]:
    """The weight of each anchor factor at `scale` (> 1): hat functions, piecewise linear in
    log2(scale) between neighbouring anchors (sorted, distinct), clamped to the first and
    last anchor outside them; they sum to 1. E.g. anchors (2, 4, 8): 2 -> [1, 0, 0], 2.83 ->
    [0.5, 0.5, 0], 16 -> [0, 0, 1]."""
    a = [math.log2(v) for v in anchors]
    l = min(max(math.log2(scale), a[0]), a[-1])
    w = [0.0] * len(a)
    for i in range(len(a) - 1):
        if l <= a[i + 1]:
            lam = (l - a[i]) / (a[i + 1] - a[i])
            w[i], w[i + 1] = 1.0 - lam, lam
            return w
    w[-1] = 1.0
    return w


def size_multiple(pixel_unshuffle: int, deep_blocks: int) -> int:
    """What H and W of a NoisePredictor's input must be multiples of: pixel_unshuffle,
    twice it with a coarse branch."""
    return int(pixel_unshuffle) * (2 if deep_blocks else 1)


class _ResBlock(torch.nn.Module):
    def __init__(self, channels: int, emb_dim: int):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(channels, channels, 3, padding=1)
        self.film = torch.nn.Linear(emb_dim, 2 * channels)
        torch.nn.init.zeros_(self.film.weight)  # FiLM starts as the identity; t's effect is learnt
        torch.nn.init.zeros_(self.film.bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(x)
        scale, shift = self.film(emb)[:, :, None, None].chunk(2, dim=1)
        h = F.silu(h * (1 + scale) + shift)
        return x + self.conv2(h)


class _Body(torch.nn.Module):
    """The convolutional path of a NoisePredictor (its own modules, shared, not copied): x_up
    and the embedding -> d. A separate module so an anchored predictor can run it with
    blended weights (torch.func.functional_call) while the state-dict names stay the same."""

    def __init__(self, owner: "NoisePredictor"):
        super().__init__()
        self.r, self.coarse = owner.config.pixel_unshuffle, bool(owner.config.deep_blocks)
        self.head, self.blocks, self.tail = owner.head, owner.blocks, owner.tail
        if self.coarse:
            self.down, self.deep, self.up = owner.down, owner.deep, owner.up

    def forward(self, x_up: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        r = self.r
        x = F.pixel_unshuffle(x_up, r) if r > 1 else x_up
        h = self.head(x)
        for block in self.blocks:
            h = block(h, emb)
        if self.coarse:
            g = self.down(F.pixel_unshuffle(h, 2))
            for block in self.deep:
                g = block(g, emb)
            h = h + F.pixel_shuffle(self.up(g), 2)
        out = self.tail(h)
        return F.pixel_shuffle(out, r) if r > 1 else out


class NoisePredictor(ModelMixin, ConfigMixin):
    """f(x_up, t) -> eps_hat, (N, 3, H, W) float32; see the module docstring.

    x_up: (N, 3, H, W) in [-1, 1], the input resized to the target (vsr.core.resample);
    H and W must be multiples of `size_multiple` (`PredictedNoise` pads). t: an int or
    an (N,) integer tensor in [1, T). scale: the upscaling factor (a float or an (N,)
    tensor, > 0; below 1 it counts as 1, a pass at the input's size), required when `scale_features` > 0 (ValueError without it), ignored
    otherwise. The schedule (num_train_timesteps, beta_schedule)
    must be the prior's; `alphas_cumprod` is rebuilt from it, not stored.
    """

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        channels: int = 64,
        num_blocks: int = 4,
        pixel_unshuffle: int = 4,
        emb_dim: int = 64,
        num_train_timesteps: int = 1000,
        beta_schedule: str = "squaredcos_cap_v2",
        deep_blocks: int = 0,
        deep_channels: int = 64,
        scale_features: int = 0,
        scale_anchors: Sequence[float] | None = None,
    ):
        super().__init__()
        if pixel_unshuffle < 1 or channels < 1 or num_blocks < 0 or emb_dim % 2 or deep_blocks < 0 or deep_channels < 1 \
                or scale_features < 0 or scale_features % 2:
            raise ValueError("NoisePredictor: pixel_unshuffle, channels, deep_channels >= 1, num_blocks, deep_blocks"
                             " >= 0, emb_dim and scale_features even")
        anchors = [float(a) for a in scale_anchors or ()]
        if anchors and (len(anchors) < 2 or any(not (math.isfinite(a) and a > 1) for a in anchors)
                        or any(b <= a for a, b in zip(anchors, anchors[1:]))):
            raise ValueError(f"NoisePredictor: scale_anchors must be 2 or more increasing factors > 1, got {anchors}")
        r2 = 3 * pixel_unshuffle**2
        self.emb = torch.nn.Sequential(torch.nn.Linear(emb_dim, emb_dim), torch.nn.SiLU())
        self.head = torch.nn.Conv2d(r2, channels, 3, padding=1)
        self.blocks = torch.nn.ModuleList(_ResBlock(channels, emb_dim) for _ in range(num_blocks))
        if deep_blocks:  # the coarse branch at H/2r: wider and reaching further for the same MACs as a block at H/r
            self.down = torch.nn.Conv2d(4 * channels, deep_channels, 1)
            self.deep = torch.nn.ModuleList(_ResBlock(deep_channels, emb_dim) for _ in range(deep_blocks))
            self.up = torch.nn.Conv2d(deep_channels, 4 * channels, 1)
        self.tail = torch.nn.Conv2d(channels, r2, 3, padding=1)
        torch.nn.init.zeros_(self.tail.weight)  # d = 0 at the start: x_t = x_up
        torch.nn.init.zeros_(self.tail.bias)
        if scale_features:  # registered last: a blind network's parameters keep their order (warm starts)
            self.scale_emb = torch.nn.Linear(scale_features, emb_dim)
            torch.nn.init.zeros_(self.scale_emb.weight)  # starts as the blind network; the scale's effect is learnt
            torch.nn.init.zeros_(self.scale_emb.bias)
        body = _Body(self)
        object.__setattr__(self, "_body", body)  # not registered: its modules are this one's
        if anchors:  # per-anchor offsets of every weight of the path, zero: it starts as the plain network
            self.anchor_offsets = torch.nn.ModuleList(
                torch.nn.ParameterDict({n.replace(".", "-"): torch.nn.Parameter(torch.zeros_like(p))
                                        for n, p in body.named_parameters()})
                for _ in anchors)
        self.register_buffer("alphas_cumprod", _alphas_cumprod(num_train_timesteps, beta_schedule), persistent=False)

    @property
    def size_multiple(self) -> int:
        """H and W of an input must be multiples of this (`size_multiple`)."""
        return size_multiple(self.config.pixel_unshuffle, self.config.deep_blocks)

    def _timesteps(self, t: int | torch.Tensor, n: int, device: torch.device) -> torch.Tensor:
        t = torch.as_tensor(t, device=device).long().reshape(-1)
        if t.numel() == 1:
            t = t.expand(n)
        if t.numel() != n:
            raise ValueError(f"NoisePredictor: got {t.numel()} timesteps for a batch of {n}")
        if bool((t < 1).any()) or bool((t >= self.config.num_train_timesteps).any()):
            raise ValueError(f"NoisePredictor: timesteps must be in [1, {self.config.num_train_timesteps})")
        return t

    def _scales(self, scale: float | torch.Tensor | None, n: int, device: torch.device) -> torch.Tensor:
        if scale is None:
            raise ValueError("NoisePredictor: this predictor is conditioned on the upscaling factor: pass scale")
        s = torch.as_tensor(scale, device=device, dtype=torch.float32).reshape(-1)
        if s.numel() == 1:
            s = s.expand(n)
        if s.numel() != n:
            raise ValueError(f"NoisePredictor: got {s.numel()} scales for a batch of {n}")
        if not bool(torch.isfinite(s).all()) or bool((s <= 0).any()):
            raise ValueError("NoisePredictor: scales must be finite and > 0")
        return s.clamp_min(1.0)  # a pass at the input's size (or below it) is treated as 1x

    @property
    def needs_scale(self) -> bool:
        """Whether calls must pass the upscaling factor (scale_features or scale_anchors)."""
        return bool(self.config.scale_features or self.config.scale_anchors)

    def _blended(self, factor: float) -> dict[str, torch.Tensor]:
        """The path's weights at an upscaling factor: w + sum_k a_k(factor) offset_k."""
        a = anchor_weights(max(float(factor), 1.0), self.config.scale_anchors)
        return {k: p + sum(ak * off[k.replace(".", "-")] for ak, off in zip(a, self.anchor_offsets) if ak)
                for k, p in self._body.named_parameters()}

    def at_scale(self, factor: float) -> "NoisePredictor":
        """For inference at one factor: an anchored network's blend at `factor` folded into a
        plain network (no scale_anchors; same device and dtype, the same output as
        `detail(x, t, factor)`), so the blend is made once, not per call. A network without
        anchors is returned as it is."""
        if not self.config.scale_anchors:
            return self
        factor = self._scales(factor, 1, torch.device("cpu")).item()  # float32 and checked, as `detail` has it
        config = {k: v for k, v in self.config.items() if not k.startswith("_")}
        p = next(self.parameters())
        plain = torch.nn.Module.to(NoisePredictor(**{**config, "scale_anchors": None}), p.device, p.dtype)
        with torch.no_grad():
            state = {k: v for k, v in self.state_dict().items() if not k.startswith("anchor_offsets.")}
            state.update(self._blended(factor))
            plain.load_state_dict(state)
        return plain.eval().requires_grad_(False)

    def detail(self, x_up: torch.Tensor, t: int | torch.Tensor,
               scale: float | torch.Tensor | None = None) -> torch.Tensor:
        """d: (N, 3, H, W), the image the start x_t equals minus x_up."""
        m = self.size_multiple
        n, _, h, w = x_up.shape
        if h % m or w % m:
            raise ValueError(f"NoisePredictor: H and W must be multiples of {m}, got {h}x{w}")
        t = self._timesteps(t, n, x_up.device)
        emb = self.emb(timestep_features(t, self.config.num_train_timesteps, self.config.emb_dim).to(x_up.dtype))
        if self.config.scale_features:
            feats = scale_features_of(self._scales(scale, n, x_up.device), self.config.scale_features)
            emb = emb + self.scale_emb(feats.to(x_up.dtype))
        if not self.config.scale_anchors:
            return self._body(x_up, emb)
        # anchored: the path's weights are w + sum_k a_k(scale) offset_k, one blend per distinct scale
        factors = self._scales(scale, n, x_up.device).tolist()
        out = torch.empty_like(x_up)
        for f in sorted(set(factors)):
            idx = [i for i, v in enumerate(factors) if v == f]
            with _SWAP:  # training and tests; inference runs `at_scale`'s plain network
                d = torch.func.functional_call(self._body, self._blended(f), (x_up[idx], emb[idx]))
            if len(idx) == n:
                return d
            out[idx] = d
        return out

    def forward(self, x_up: torch.Tensor, t: int | torch.Tensor,
                scale: float | torch.Tensor | None = None) -> torch.Tensor:
        """eps_hat = ((1 - sqrt(abar_t)) x_up + d) / sqrt(1 - abar_t), float32 (N, 3, H, W)."""
        d = self.detail(x_up, t, scale).float()
        t = self._timesteps(t, x_up.shape[0], x_up.device)
        a = self.alphas_cumprod.to(x_up.device)[t].view(-1, 1, 1, 1)
        sa, sb = a.sqrt().float(), (1 - a).sqrt().float()
        return ((1 - sa) * x_up.float() + d) / sb


def count_macs(net: torch.nn.Module, size: int = 256) -> int:
    """Multiply-accumulates of one forward of a size x size tile (`vsr.models.macs`)."""
    from vsr.models.macs import count_macs as _count_macs

    return _count_macs(net, lambda x: net(x, 10, 2.0), size)
