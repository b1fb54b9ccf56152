"""The noise predictor's training config (`vsr train predictor`, see
`train_noise_predictor`): one frozen `PredictorTrainConfig` from YAML, saved into every
checkpoint, and the predictor it describes."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vsr.errors import ConfigError

from .prior_model import YamlConfig


@dataclass(frozen=True)
class PredictorTrainConfig(YamlConfig):
    """Everything that determines a run; saved into every checkpoint."""

    corpus: str = "data/corpus"
    run_dir: str = "runs/noise-predictor"
    prior: str | None = None  # a model folder or name; None = the shipped prior
    prior_dtype: str = "auto"  # auto | float32 | bfloat16: what the engine will run the prior in
    # packed crops (RUN/crops.npz unless given)
    crops_file: str | None = None
    init_checkpoint: str | None = None  # start a new run from another run's EMA weights (not its optimiser)
    # train only the parameters whose names start with one of these (none: all); e.g.
    # "anchor_offsets.0." fine-tunes the first scale anchor and leaves every other factor's weights as they are
    trainable: tuple[str, ...] = ()
    pack_count: int = 640
    pack_size: int = 160
    pack_max_downscale: float = 2.0
    pack_seed: int | None = None  # the packing's random stream (None: `seed`)
    # batches made in this many worker processes (0: in the training process, from the run's
    # one generator); with workers, batch k is drawn from its own generator seeded by (seed, k)
    data_workers: int = 0
    # model
    channels: int = 64
    num_blocks: int = 4
    pixel_unshuffle: int = 4
    emb_dim: int = 64
    deep_blocks: int = 0  # blocks of the coarse branch at H/(2 pixel_unshuffle) (0: none)
    deep_channels: int = 64
    scale_features: int = 0  # Fourier features of log2(scale) the predictor is conditioned on (0: blind to the scale)
    scale_anchors: tuple[float, ...] = ()  # factors with their own weight offsets, blended in log2(scale) (none: one set)
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
    shift_weight: float = 0.0  # weight of the shift-consistency term (0: off; see `shifted_batch`)
    shift_max: int = 2  # HR pixels
    shift_block: int = 1  # compare block averages of this size (8: what the flicker metric sees)
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
        self._check_ranges()
        if not 1.0 < self.scale_min <= self.scale_max:
            raise ConfigError(f"scale_min/scale_max: got {self.scale_min}/{self.scale_max}, need 1 < min <= max")
        if not 1 <= self.t_min <= self.t_max:
            raise ConfigError(f"t_min/t_max: got {self.t_min}/{self.t_max}, need 1 <= t_min <= t_max")
        if not self.steps_choices or min(self.steps_choices) < 1:
            raise ConfigError("steps_choices: a non-empty list of step counts >= 1")
        if self.prior_dtype not in ("auto", "float32", "bfloat16"):
            raise ConfigError(f"prior_dtype: got {self.prior_dtype!r}, allowed: auto, float32, bfloat16")
        from vsr.models.noise_predictor import size_multiple

        m = size_multiple(self.pixel_unshuffle, self.deep_blocks)
        if self.crop % m or self.val_crop % m or self.crop > self.pack_size:
            raise ConfigError(f"crop/val_crop must be multiples of {m} and crop <= pack_size")
        if self.shift_weight < 0:
            raise ConfigError(f"shift_weight: got {self.shift_weight}, need >= 0")
        if self.shift_weight > 0 and not 1 <= self.shift_max <= self.pack_size - self.crop:
            raise ConfigError(f"shift_max: got {self.shift_max}, need 1..{self.pack_size - self.crop} "
                              f"(pack_size - crop: the room to move a window)")
        if self.shift_weight > 0 and not 1 <= self.shift_block <= self.crop - self.shift_max - 16:
            raise ConfigError(f"shift_block: got {self.shift_block}, need 1..{self.crop - self.shift_max - 16} "
                              f"(the overlap of a window and its shifted copy, 8 pixels in from each edge)")
        if any(not prefix for prefix in self.trainable):
            raise ConfigError("trainable: an empty prefix names every parameter; leave trainable out to train them all")
        if self.data_workers < 0:
            raise ConfigError(f"data_workers: got {self.data_workers}, need >= 0")
        if self.batch_size < 1 or self.steps < 0:
            raise ConfigError("batch_size must be >= 1 and steps >= 0")

    def _check_ranges(self) -> None:
        """Values of the right type but outside what the trainer can run: one line naming the key."""
        import math

        checks = [
            ("lr", math.isfinite(self.lr) and self.lr > 0, "> 0"),
            ("ema_decay", 0 <= self.ema_decay < 1, "in [0, 1)"),
            ("checkpoint_every", self.checkpoint_every >= 1, ">= 1"),
            ("num_threads", self.num_threads >= 0, ">= 0 (0: torch's default)"),
            ("warmup_steps", self.warmup_steps >= 0, ">= 0"),
            ("val_every", self.val_every >= 0, ">= 0"),
            ("pixel_unshuffle", self.pixel_unshuffle >= 1, ">= 1"),
            ("channels", self.channels >= 1, ">= 1"),
            ("num_blocks", self.num_blocks >= 1, ">= 1"),
            ("emb_dim", self.emb_dim >= 2 and self.emb_dim % 2 == 0, "an even number >= 2"),
            ("scale_features", self.scale_features >= 0 and self.scale_features % 2 == 0, "an even number >= 0"),
            ("crop", self.crop >= 16, ">= 16"),
            ("consistency", self.consistency >= 0, ">= 0"),
            ("jpeg_quality", 1 <= self.jpeg_quality[0] <= self.jpeg_quality[1] <= 100, "[low, high] within 1..100"),
            ("h264_crf", 0 <= self.h264_crf[0] <= self.h264_crf[1] <= 51, "[low, high] within 0..51 (libx264)"),
            ("blur_sigma", 0 < self.blur_sigma[0] <= self.blur_sigma[1], "[low, high] with 0 < low <= high"),
            ("noise_sigma", self.noise_sigma >= 0, ">= 0"),
        ]
        for name, ok, need in checks:
            if not ok:
                raise ConfigError(f"{name}: got {getattr(self, name)!r}, need {need}")
        for name in ("blur_prob", "area_prob", "noise_prob", "jpeg_prob", "h264_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"{name}: got {getattr(self, name)!r}, need a probability in [0, 1]")
        if self.jpeg_prob + self.h264_prob > 1:
            raise ConfigError(f"jpeg_prob + h264_prob: got {self.jpeg_prob + self.h264_prob:g}, need <= 1")

    @property
    def crops_path(self) -> Path:
        return Path(self.crops_file) if self.crops_file else Path(self.run_dir) / "crops.npz"


def build_predictor(cfg: PredictorTrainConfig, num_train_timesteps: int = 1000, beta_schedule: str = "squaredcos_cap_v2"):
    from vsr.models.noise_predictor import NoisePredictor

    return NoisePredictor(
        channels=cfg.channels, num_blocks=cfg.num_blocks, pixel_unshuffle=cfg.pixel_unshuffle, emb_dim=cfg.emb_dim,
        deep_blocks=cfg.deep_blocks, deep_channels=cfg.deep_channels, scale_features=cfg.scale_features,
        scale_anchors=list(cfg.scale_anchors) or None,
        num_train_timesteps=num_train_timesteps,
        beta_schedule=beta_schedule,
    )
