"""`Upscaler`: frames in, upscaled frames out (METHOD.md sections 1 and 3).

Per batch of same-size frames, top to bottom:
1. convert to float [0, 1] once, at the edge, and resize to the target (bicubic, antialiased);
2. inject noise to t_start (`add_noise`), eps drawn per frame by the noise source;
3. DDIM from t_start to 0, where each step's denoiser runs the model on all tiles of the
   full frame(s) and blends the predictions with a smooth window before the step, and
   (config.consistency) back-projects that estimate onto the input's low band;
4. convert back to the caller's type (numpy, torch, av.VideoFrame, Frame).
The noise level comes from the model card's PRF curve at the frame's scale unless the
config says otherwise. Device and dtype are resolved once, on first use.
"""
from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch

from vsr.config import OVERLAP_AUTO, EngineConfig, check_overlap, check_tile_multiple
from vsr.errors import ConfigError, InputError, ResourceError
from vsr.frame import Frame
from vsr.core.resample import resize
from vsr.core.schedule import prf_noise_level, timestep_set
from vsr.core.tiling import TiledDenoiser, plan_tiles
from vsr.device import is_out_of_memory, release_memory, resolve_device, resolve_dtype
from vsr.methods import DEFAULT_METHOD, METHODS
from vsr.models import LoadedModel, ModelDenoiser, load_model
from vsr.noise import NoiseContext, NoiseSource, NoiseState, make_noise

log = logging.getLogger(__name__)

DEFAULT_SCALE = 2.0
DEFAULT_STEPS = 2  # DDIM steps of plain Diff-SR under `steps: auto` (the PRF is calibrated at 2)
DEFAULT_CONSISTENCY = 1  # back-projection passes of plain Diff-SR under `consistency: auto` (the PRF's)
GROUP_PIXELS = 3840 * 2160  # output pixels `stream` holds per group (memory bound)


class Upscaler:
    """A loaded model plus an `EngineConfig`; call it on a frame or stream frames through it.

    Build with `Upscaler.from_pretrained(model, config=..., **overrides)`; derive variants
    sharing the weights with `with_config(...)`. Pickling keeps the config and the model's
    name/location (the weights reload lazily), or the weights themselves for a model
    that was built in memory.
    """

    def __init__(self, model: LoadedModel | None, config: EngineConfig, *, noise: NoiseSource | None = None):
        self.config = config
        self._model = model
        self._reloadable = False  # True when the weights can be reloaded from config.model
        self._noise = noise  # None: built on first use from the config and the model (`noise`)
        self._denoiser: ModelDenoiser | None = None  # built on first use (device, dtype on it)
        self._fewer_steps_said: set[float] = set()  # scales whose --steps did not fit below the start t (warned)
        if model is not None:
            self._check_tile(model)

    # -- construction ----------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls, model: str | os.PathLike | None = None, config: EngineConfig | None = None, **overrides: Any
    ) -> "Upscaler":
        """Load `model` (None: config.model, else the shipped prior) with config + overrides."""
        config = config or EngineConfig()
        if model is not None:
            overrides["model"] = str(model)
        config = config.replace(**overrides)
        up = cls(load_model(config.model), config)
        up._reloadable = True
        return up

    def with_config(self, **overrides: Any) -> "Upscaler":
        """Same weights, new config (e.g. another output size); a new model reloads."""
        config = self.config.replace(**overrides)
        if config.model != self.config.model:
            return Upscaler.from_pretrained(config=config)
        new = Upscaler(self._model, config)
        new._reloadable = self._reloadable
        if self._denoiser is not None and (config.device, config.dtype) == (self.config.device, self.config.dtype):
            new._denoiser = self._denoiser
        keys = ("noise", "seed", "noise_predictor")
        if all(getattr(config, k) == getattr(self.config, k) for k in keys):
            new._noise = self._noise
        return new

    def __getstate__(self) -> dict:
        state = {"config": self.config, "noise": self._noise, "reloadable": self._reloadable}
        state["model"] = None if self._reloadable else self._model
        return state

    def __setstate__(self, state: dict) -> None:
        self.config = state["config"]
        self._model = state["model"]
        self._reloadable = state["reloadable"]
        self._noise = state["noise"]
        self._denoiser = None
        self._fewer_steps_said = set()

    # -- resolved pieces -------------------------------------------------------------
    @property
    def model(self) -> LoadedModel:
        if self._model is None:
            self._model = load_model(self.config.model)
            self._check_tile(self._model)
        return self._model

    @property
    def noise(self) -> NoiseSource:
        """The noise source: the model's noise predictor (InvSR) when it has one and
        config.noise_predictor is "auto", over the config's Gaussian source; else that
        Gaussian source (shared or fresh)."""
        if self._noise is None:
            gaussian = make_noise(self.config.noise, self.config.seed)
            predicted = None
            if self.config.noise_predictor == "auto":
                from vsr.noise.predicted import load_noise_predictor

                predicted = load_noise_predictor(self.model, base=gaussian)
            self._noise = predicted if predicted is not None else gaussian
            log.info("noise: %s", type(self._noise).__name__)
        return self._noise

    @property
    def tile(self) -> int:
        return self.config.tile or self.model.card.crop

    def _check_tile(self, model: LoadedModel) -> None:
        tile = self.config.tile or model.card.crop
        check_tile_multiple(tile, model.down_factor)
        if self.config.overlap != "auto":
            check_overlap(self.config.overlap, tile, "the model's crop" if self.config.tile is None else "tile")

    @property
    def overlap(self) -> int:
        """Pixels neighbouring tiles share: config.overlap, or for "auto" 32 capped at half
        the tile (a small-crop model)."""
        if self.config.overlap == "auto":
            return min(OVERLAP_AUTO, self.tile // 2)
        return self.config.overlap

    def denoiser(self) -> ModelDenoiser:
        """The model on the resolved device/dtype (resolved once, on first use)."""
        if self._denoiser is None:
            device = resolve_device(self.config.device)
            dtype = resolve_dtype(self.config.dtype, device)
            self._denoiser = self.model.make_denoiser(device, dtype)
            log.info("engine on %s, %s", device, dtype)
        return self._denoiser

    @property
    def device(self) -> torch.device:
        return self.denoiser().device

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """(out_h, out_w) for an input of height x width: config.size, else round(scale * dims)."""
        if self.config.size is not None:
            return int(self.config.size[1]), int(self.config.size[0])
        s = self.config.scale if self.config.scale is not None else DEFAULT_SCALE
        return max(1, round(height * s)), max(1, round(width * s))

    def scale_for(self, height: int, width: int) -> float:
        """The upscaling factor of a height x width input (the geometric mean of the two
        axes' factors): what the noise level, timesteps and calibration are read at."""
        H, W = self.output_size(height, width)
        return math.sqrt((H / height) * (W / width))

    def timesteps_for(self, scale: float) -> tuple[int, ...]:
        """The DDIM timestep set for an upscaling factor (explicit, or from the noise level)."""
        T = self.model.num_train_timesteps
        if self.config.timesteps is not None:
            if self.config.timesteps[0] >= T:
                raise ConfigError(
                    f"config field 'timesteps' = {list(self.config.timesteps)} is invalid: "
                    f"expected values below the model's T = {T}"
                )
            return self.config.timesteps
        ts = timestep_set(self.noise_level_for(scale), self.steps, T)
        if len(ts) < self.steps and self.config.steps != "auto" and scale not in self._fewer_steps_said:
            self._fewer_steps_said.add(scale)  # once per scale, not per frame
            n = len(ts)
            log.warning("steps %d: the start t = %d at %gx leaves room for %d DDIM step%s, so %d run%s", self.steps,
                        ts[0], scale, n, "" if n == 1 else "s", n, "s" if n == 1 else "")
        return ts

    def noise_level_for(self, scale: float) -> float:
        """The start t/T at an upscaling factor: the config's, or under "auto" the noise
        source's own calibration (a predictor), else the model card's PRF curve."""
        level = self.config.noise_level
        if level == "auto":
            level = self.noise.noise_level(scale)
        if level is None:
            card = self.model.card
            level = prf_noise_level(scale, card.prf_scales, card.prf_t)
        return float(level)

    @property
    def steps(self) -> int:
        """DDIM steps per frame: the config's, or under "auto" the count the noise source
        was calibrated for (a noise predictor's card), else DEFAULT_STEPS."""
        if self.config.steps != "auto":
            return int(self.config.steps)
        calibrated = getattr(self.noise, "calibrated_steps", None)  # optional for third-party sources
        return int((calibrated() if calibrated else None) or DEFAULT_STEPS)

    @property
    def consistency(self) -> int:
        """Back-projection passes per step: the config's, or under "auto" the count the
        noise source was calibrated with (a noise predictor's card), else DEFAULT_CONSISTENCY."""
        if self.config.consistency != "auto":
            return int(self.config.consistency)
        calibrated = getattr(self.noise, "calibrated_consistency", None)  # optional for third-party sources
        n = calibrated() if calibrated else None
        return DEFAULT_CONSISTENCY if n is None else int(n)

    # -- the maths on tensors -----------------------------------------------------
    @property
    def method(self):
        """The upscaling method named by the model card (`vsr.methods.METHODS`)."""
        name = self.model.card.extra.get("method", DEFAULT_METHOD)
        if name not in METHODS:
            raise ConfigError(f"model card 'method' = {name!r} is unknown: expected one of {', '.join(METHODS)}")
        return METHODS[name]

    def upscale_tensor(self, x: torch.Tensor, indices: list[int] | None = None, callback=None) -> torch.Tensor:
        """(N, 3, h, w) float [0, 1] -> (N, 3, H, W) float32 [0, 1] on the engine's device.

        indices: each frame's index for the noise source (default 0..N-1); callback gets
        the sampler's per-step dict.
        """
        return self._upscale(x, indices, None, callback)[0]

    @torch.inference_mode()
    def _upscale(
        self, x: torch.Tensor, indices: list[int] | None, previous: NoiseState | None, callback=None
    ) -> tuple[torch.Tensor, NoiseState]:
        """`upscale_tensor`, given the state of the frame before this batch (for a temporal
        noise source) and returning the state of the batch's last frame."""
        den = self.denoiser()
        ac = self.model.alphas_cumprod
        n, _, h, w = x.shape
        H, W = self.output_size(h, w)
        indices = list(range(n)) if indices is None else list(indices)
        scale = self.scale_for(h, w)
        ts = self.timesteps_for(scale)
        # 1. the input and its resize to the target, in [-1, 1]
        x = x.to(den.device, torch.float32)
        low, upsampled = x * 2.0 - 1.0, resize(x, H, W) * 2.0 - 1.0
        # 2. the noise to inject at the start timestep, from the noise source
        ctx = NoiseContext(tuple(indices), low, upsampled, ts[0], ac, previous, dtype=den.dtype, scale=scale)
        eps = self.noise(ctx).to(den.device)
        # 3. the method (Diff-SR: noise injection, DDIM, back-projection) on whole frames;
        #    the denoiser runs the model on tiles and blends their x0 at every step
        tiled = TiledDenoiser(den.predict_x0, ac, self.tile, self.overlap, self.config.batch)
        out = self.method(
            tiled, low, upsampled, eps, ts, ac, consistency=self.consistency, min_size=self.tile, callback=callback
        )
        state = NoiseState(indices[-1], upsampled[-1], eps[-1])
        return ((out + 1.0) / 2.0).clamp(0.0, 1.0), state

    def frames_per_group(self, height: int, width: int) -> int:
        """How many output frames of height x width `stream` upscales together: enough for
        their tiles to fill whole model calls of `config.batch` (batch / gcd(tiles, batch)),
        capped at GROUP_PIXELS of output so memory stays bounded (at least one frame)."""
        tiles, batch = self.tiles_per_frame(height, width), self.config.batch
        fill = batch // math.gcd(tiles, batch)
        return max(1, min(fill, GROUP_PIXELS // max(1, height * width)))

    def tiles_per_frame(self, height: int, width: int) -> int:
        """How many model tiles one output frame of height x width needs (per step)."""
        t = self.tile
        return len(plan_tiles(max(height, t), max(width, t), t, self.overlap))

    # -- frames of every type ----------------------------------------------------------
    def __call__(self, frame: Any) -> Any:
        """Upscale one frame, returned as the same type.

        numpy HxWx3 uint8/uint16 RGB; torch CHW or NCHW, uint8 or float in [0, 1], any
        device; av.VideoFrame (pts and time_base kept; returned as RGB, rgb24 or rgb48le
        above 8 bits, whatever its pixel format: `reformat` it for an encoder); vsr.frame.Frame.
        """
        if isinstance(frame, torch.Tensor):
            return self._call_tensor(frame)
        if isinstance(frame, Frame):
            out = self._call_numpy(frame.image, frame.index)
            return frame.with_image(out, resize_alpha(frame.alpha, *out.shape[:2]))
        if isinstance(frame, np.ndarray):
            return self._call_numpy(frame, 0)
        if hasattr(frame, "to_ndarray") and hasattr(frame, "pts"):
            return self._call_av(frame)
        raise InputError(
            f"cannot upscale a {type(frame).__name__}: pass a numpy HxWx3 array, a torch tensor, "
            "an av.VideoFrame or a vsr Frame"
        )

    def _call_numpy(self, image: np.ndarray, index: int) -> np.ndarray:
        return self._upscale_arrays([image], [index])[0][0]

    def _upscale_arrays(
        self, images: list[np.ndarray], indices: list[int], callback=None, previous: NoiseState | None = None
    ) -> tuple[list[np.ndarray], NoiseState]:
        """Same-size, same-dtype HxWx3 uint8/uint16 arrays -> upscaled arrays of that dtype,
        and the noise state of the last one."""
        img = images[0]
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype not in (np.uint8, np.uint16) or 0 in img.shape:
            raise InputError(f"expected an HxWx3 uint8 or uint16 RGB array (H, W >= 1), got shape {img.shape} {img.dtype}")
        peak = 255.0 if img.dtype == np.uint8 else 65535.0
        x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / peak
        try:
            y, state = self._upscale(x, indices, previous, callback)
        except Exception as exc:  # noqa: BLE001 - only out-of-memory errors are handled here
            if not is_out_of_memory(exc):
                raise
            y, state = self._upscale_smaller(x, indices, previous, callback)
        y = (y * peak).round_().clamp_(0, peak).permute(0, 2, 3, 1).cpu().numpy().astype(img.dtype)
        return list(y), state

    def _upscale_smaller(self, x: torch.Tensor, indices: list[int], previous: NoiseState | None, callback=None):
        """After running out of memory: free what is cached and retry once with half the
        batch (kept for the frames that follow); ResourceError, naming what to lower, if
        that fails too."""
        device = self.denoiser().device
        n, _, h, w = x.shape
        H, W = self.output_size(h, w)
        half = max(1, self.config.batch // 2)
        release_memory(device)
        hint = (f"out of memory upscaling {n} frame(s) of {w}x{h} to {W}x{H} on {device} even with --batch {half}: "
                f"lower --batch, --tile (now {self.tile}) or the output size (--target, --scale, --size)")
        if half == self.config.batch:
            raise ResourceError(hint) from None
        log.warning("out of memory with --batch %d; retrying with --batch %d", self.config.batch, half)
        self.config = self.config.replace(batch=half)
        try:
            return self._upscale(x, indices, previous, callback)
        except Exception as exc:  # noqa: BLE001
            if not is_out_of_memory(exc):
                raise
            release_memory(device)
            raise ResourceError(hint) from None

    def _call_tensor(self, t: torch.Tensor) -> torch.Tensor:
        if t.ndim not in (3, 4) or t.shape[-3] != 3:
            raise InputError(f"expected a CHW or NCHW tensor with 3 channels, got shape {tuple(t.shape)}")
        x = t[None] if t.ndim == 3 else t
        if x.dtype == torch.uint8:
            xf = x.float() / 255.0
        elif x.is_floating_point():
            xf = x.float()
        else:
            raise InputError(f"expected a uint8 or float tensor, got {x.dtype}")
        y = self.upscale_tensor(xf).to(t.device)
        y = (y * 255.0).round().clamp(0, 255).to(torch.uint8) if t.dtype == torch.uint8 else y.to(t.dtype)
        return y[0] if t.ndim == 3 else y

    def _call_av(self, frame: Any) -> Any:
        return _to_av(frame, self._call_numpy(_from_av(frame), getattr(frame, "index", 0) or 0))

    # -- streams ---------------------------------------------------------------------
    def stream(
        self, frames: Iterable[Any], *, callback: Callable[[dict], None] | None = None
    ) -> Iterator[Any]:
        """Upscale a stream lazily: same order and count, each frame returned as its type
        (vsr Frame: timing and an upscaled alpha plane kept; av.VideoFrame: pts and
        time_base kept, RGB out; numpy HxWx3 array).

        Consecutive frames of one size are grouped so that a group's tiles fill whole
        model calls (`frames_per_group`); at most one group is held, so memory is bounded
        by GROUP_PIXELS, not the frame count. Every model call has the same batch size,
        so how frames are grouped never changes a pixel (a resumed or chunked job gives
        the same frames as one run). callback gets {"frames_done", "index", "seconds"} per group.
        """
        group: list[Any] = []  # the frames as given (Frame, array or av.VideoFrame)
        arrays: list[np.ndarray] = []  # their pictures
        key: tuple | None = None
        per_group = 1
        done = 0
        state: NoiseState | None = None  # the last frame's, handed to the next group's noise source
        t0 = time.perf_counter()

        def flush() -> Iterator[Frame | np.ndarray]:
            nonlocal done, state
            indices = [f.index if isinstance(f, Frame) else done + k for k, f in enumerate(group)]
            size = self.output_size(*arrays[0].shape[:2])
            follows = state is not None and state.frame_index == indices[0] - 1 and tuple(state.eps.shape[-2:]) == size
            outs, state = self._upscale_arrays(arrays, indices, previous=state if follows else None)
            for f, img in zip(group, outs):
                done += 1
                if isinstance(f, Frame):
                    yield f.with_image(img, resize_alpha(f.alpha, *size))
                elif isinstance(f, np.ndarray):
                    yield img
                else:
                    yield _to_av(f, img)
            if callback is not None:
                callback({"frames_done": done, "index": indices[-1], "seconds": time.perf_counter() - t0})

        for f in frames:
            if isinstance(f, Frame):
                img = f.image
            elif isinstance(f, np.ndarray):
                img = f
            elif hasattr(f, "to_ndarray") and hasattr(f, "pts"):
                img = _from_av(f)
            else:
                raise InputError(f"stream() takes vsr Frames, numpy arrays or av.VideoFrames, got {type(f).__name__}")
            k = (img.shape, img.dtype)
            if group and (k != key or len(group) >= per_group):
                yield from flush()
                group, arrays = [], []
            if not group:
                key = k
                H, W = self.output_size(img.shape[0], img.shape[1])
                per_group = self.frames_per_group(H, W)
            group.append(f)
            arrays.append(img)
        if group:
            yield from flush()


def resize_alpha(alpha: np.ndarray | None, height: int, width: int) -> np.ndarray | None:
    """An HxW uint8/uint16 alpha plane resized to height x width with the engine's one
    bicubic (`vsr.core.resample.resize`); transparency needs no diffusion prior."""
    if alpha is None or alpha.shape == (height, width):
        return alpha
    peak = float(np.iinfo(alpha.dtype).max)
    x = torch.from_numpy(alpha.astype(np.float32) / peak)[None, None]
    y = resize(x, height, width)[0, 0].numpy()
    return np.round(y * peak).astype(alpha.dtype)


def _from_av(frame: Any) -> np.ndarray:
    """An av.VideoFrame's picture as HxWx3 RGB, uint16 above 8 bits."""
    deep = any(b in frame.format.name for b in ("10", "12", "16", "48", "64"))
    return frame.to_ndarray(format="rgb48le" if deep else "rgb24")


def _to_av(frame: Any, image: np.ndarray) -> Any:
    """An upscaled picture as an av.VideoFrame of the same class, with `frame`'s pts and
    time base where it has them (a frame from `from_ndarray` has neither)."""
    out = type(frame).from_ndarray(image, format="rgb48le" if image.dtype == np.uint16 else "rgb24")
    out.pts = frame.pts
    if frame.time_base is not None:
        out.time_base = frame.time_base
    return out
