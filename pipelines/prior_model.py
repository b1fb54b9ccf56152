"""The prior's training config (`TrainConfig`), its UNet and DDPM scheduler, the UNet's
forward in pixel space and its MAC count (see `train_prior`)."""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
import yaml

from vsr.config import is_int, is_number
from vsr.errors import ConfigError
from vsr.models.macs import count_macs as _count_macs


def read_training_yaml(path: str | Path, overrides: dict) -> dict:
    """A training config file as a dict, with the non-None `overrides` (command-line
    flags) applied; a missing, unreadable or non-mapping file is a one-line ConfigError."""
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"training config not found: {path}") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read training config {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"training config {path} must be a mapping of key: value, got {type(data).__name__}")
    data.update({k: v for k, v in overrides.items() if v is not None})
    return data


def add_training_args(p, config_help: str) -> None:
    """The flags every `vsr train` trainer takes (prior and noise predictor alike)."""
    p.add_argument("--config", required=True, help=config_help)
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/last.pt if it exists")
    p.add_argument("--steps", type=int, help="override the total number of steps")
    p.add_argument("--corpus", help="override the corpus folder")
    p.add_argument("--run-dir", help="override the run folder")
    p.add_argument("--device", help="auto | cpu | cuda")
    p.add_argument("--threads", type=int, help="CPU threads for torch (0 = torch's default)")
    p.add_argument("--max-minutes", type=float, help="stop (with a checkpoint) after this long")
    p.add_argument("--stop-at", type=int, help="stop (with a checkpoint) at this step; the LR schedule still spans --steps")
    p.add_argument("--quiet", action="store_true")


def run_training(args, config_cls, train) -> int:
    """Read `args.config` into `config_cls` with the flags of `add_training_args` applied,
    run `train(cfg, resume=, progress=, max_seconds=, stop_at=)`, print where it stopped."""
    cfg = config_cls.from_yaml(
        args.config, steps=args.steps, corpus=args.corpus, run_dir=args.run_dir, device=args.device,
        num_threads=args.threads,
    )
    trainer = train(cfg, resume=args.resume, progress=not args.quiet,
                    max_seconds=args.max_minutes * 60 if args.max_minutes else None, stop_at=args.stop_at)
    print(f"step {trainer.step}, checkpoint {Path(cfg.run_dir) / 'last.pt'}")
    return 0


def _fits(value, tp) -> bool:
    """Whether a YAML value has the annotated type (int, float, bool, str, None, unions,
    Literal, tuple[X, ...] and fixed tuples; bool is not an int here)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return is_int(value)
    if tp is float:
        return is_number(value)
    if tp is str:
        return isinstance(value, str)
    if tp is type(None):
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if origin is Literal:
        return value in args
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_fits(v, args[0]) for v in value)
        return len(value) == len(args) and all(_fits(v, a) for v, a in zip(value, args))
    return True


def _as_float_if_text(value, tp):
    """`value` as a float where tp is float (or float | None) and value is text that parses."""
    if isinstance(value, str) and (tp is float or float in typing.get_args(tp)):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _describe(tp) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return "a list of " + {int: "integers", float: "numbers", str: "texts"}.get(args[0], _describe(args[0]))
        return f"a list of {len(args)} ({', '.join(_describe(a) for a in args)})"
    return {bool: "true or false", int: "an integer", float: "a number", str: "text", type(None): "null"}.get(tp, str(tp))


# What a resumed run may change: where and how it runs, what it reads from where, how often
# it checkpoints and validates, and how long it goes on (the LR schedule then spans the new
# `steps`). Every other field changes what a step computes, so the run would no longer be the
# one its checkpoint continues.
RESUMABLE_FIELDS = frozenset({
    "device", "num_threads", "data_workers", "corpus", "run_dir", "crops_file", "init_from", "init_checkpoint",
    "checkpoint_every", "checkpoint_minutes", "val_every", "val_crop", "val_max_images", "val_scales", "val_t",
    "val_steps", "steps",
})


class YamlConfig:
    """from_yaml/from_dict/to_dict for the frozen training-config dataclasses: unknown
    keys are a one-line ConfigError, YAML lists become tuples (and back)."""

    def check_resume(self, saved: dict, checkpoint: str | Path, step: int, restart: str) -> None:
        """Refuse to continue `checkpoint` (at `step`, trained with the config `saved`, its
        to_dict) under this config when a field outside RESUMABLE_FIELDS differs, or when
        `steps` ends before `step`: a one-line ConfigError naming the first such field (and
        how many more), ending in `restart` (how to start a new run from its weights). A
        field the checkpoint predates counts as its default; one this version no longer has
        is ignored. A new `steps` that passes is logged as a warning (the LR re-spans)."""
        import json
        import logging

        def norm(v):
            return json.loads(json.dumps(v))  # tuples and lists alike

        now = self.to_dict()
        changed = []
        for f in dataclasses.fields(self):
            if f.name in RESUMABLE_FIELDS:
                continue
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
            old = saved.get(f.name, list(default) if isinstance(default, tuple) else default)
            if norm(old) != norm(now[f.name]):
                changed.append((f.name, old, now[f.name]))
        if changed:
            name, old, new = changed[0]
            more = f" (and {len(changed) - 1} more: {', '.join(c[0] for c in changed[1:])})" if len(changed) > 1 else ""
            raise ConfigError(f"--resume: {checkpoint} was trained with {name}={old!r}, the config now says "
                              f"{new!r}{more}: put it back, or {restart}")
        if now["steps"] < step:
            raise ConfigError(f"--resume: {checkpoint} is at step {step}, past the config's steps {now['steps']}: "
                              f"give steps >= {step}, or {restart}")
        if "steps" in saved and saved["steps"] != now["steps"]:
            logging.getLogger(__name__).warning("--resume: %s was scheduled for %s steps, now %s: the learning rate "
                                                "follows the new schedule from here", checkpoint, saved["steps"],
                                                now["steps"])

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides):
        return cls.from_dict(read_training_yaml(path, overrides))

    @classmethod
    def from_dict(cls, data: dict):
        """Unknown keys and values of the wrong type (checked against the field's annotation)
        are a one-line ConfigError naming the key; a float field also takes a number YAML read
        as text (`1e9`, which YAML 1.1 needs written `1.0e+9`)."""
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ConfigError(f"unknown training config keys: {', '.join(unknown)}")
        hints = typing.get_type_hints(cls)
        values = {}
        for key, value in data.items():
            value = _as_float_if_text(value, hints[key])
            if not _fits(value, hints[key]):
                raise ConfigError(f"training config {key}: expected {_describe(hints[key])}, got {value!r}")
            values[key] = tuple(value) if isinstance(value, list) else value
        return cls(**values)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


@dataclass(frozen=True)
class TrainConfig(YamlConfig):
    """Everything that determines a training run; saved into every checkpoint."""

    corpus: str = "data/corpus"
    run_dir: str = "runs/vsr-prior-s"
    # model
    block_out_channels: tuple[int, ...] = (64, 128, 256)
    layers_per_block: int = 1
    pixel_unshuffle: int = 4
    norm_num_groups: int = 32
    # diffusion
    num_train_timesteps: int = 1000
    beta_schedule: Literal["linear", "squaredcos_cap_v2"] = "squaredcos_cap_v2"
    prediction_type: Literal["epsilon", "v_prediction", "sample"] = "v_prediction"
    t_max_fraction: float = 0.7
    min_snr_gamma: float | None = 5.0
    # data
    crop: int = 128
    max_downscale: float = 3.0
    hflip: bool = True
    max_image_side: int = 1280
    # optimisation
    batch_size: int = 16
    steps: int = 20000
    lr: float = 4e-4
    warmup_steps: int = 200
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    bf16: bool = True
    seed: int = 0
    device: str = "auto"
    num_threads: int = 0  # 0 = torch's default
    init_from: str | None = None  # a diffusers model folder (unet/) to start from, e.g. an earlier export
    # bookkeeping
    checkpoint_every: int = 250
    val_every: int = 500
    val_crop: int = 256

    def __post_init__(self) -> None:
        if self.beta_schedule not in ("linear", "squaredcos_cap_v2"):
            raise ConfigError(f"beta_schedule: got {self.beta_schedule!r}, allowed: linear, squaredcos_cap_v2")
        if self.prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ConfigError(
                f"prediction_type: got {self.prediction_type!r}, allowed: epsilon, v_prediction, sample"
            )
        if not 0.0 < self.t_max_fraction <= 1.0:
            raise ConfigError(f"t_max_fraction: got {self.t_max_fraction}, must be in (0, 1]")
        factor = self.pixel_unshuffle * 2 ** (len(self.block_out_channels) - 1)
        if self.crop % factor or self.val_crop % factor:
            raise ConfigError(f"crop/val_crop must be multiples of {factor} for this architecture")
        if self.batch_size < 1 or self.steps < 0:
            raise ConfigError("batch_size must be >= 1 and steps >= 0")


def build_unet(cfg: TrainConfig):
    """The prior's UNet: no attention (cost and CPU speed), pixel-unshuffled input."""
    from diffusers import UNet2DModel

    ch = 3 * cfg.pixel_unshuffle**2
    n = len(cfg.block_out_channels)
    return UNet2DModel(
        sample_size=cfg.val_crop // cfg.pixel_unshuffle,
        in_channels=ch,
        out_channels=ch,
        block_out_channels=cfg.block_out_channels,
        layers_per_block=cfg.layers_per_block,
        down_block_types=("DownBlock2D",) * n,
        up_block_types=("UpBlock2D",) * n,
        add_attention=False,
        norm_num_groups=cfg.norm_num_groups,
    )


def build_scheduler(cfg: TrainConfig):
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_schedule=cfg.beta_schedule,
        prediction_type=cfg.prediction_type,
        clip_sample=False,
    )


def model_output(unet, x: torch.Tensor, t: torch.Tensor, r: int) -> torch.Tensor:
    """Run the UNet in its unshuffled space and bring the output back to pixels."""
    out = unet(F.pixel_unshuffle(x, r) if r > 1 else x, t).sample
    return F.pixel_shuffle(out, r) if r > 1 else out


def count_macs(unet, cfg: TrainConfig, size: int = 256) -> int:
    """Multiply-accumulates of one forward at size x size (convolutions and linears)."""
    t = torch.tensor([10], device=next(unet.parameters()).device)
    return _count_macs(unet, lambda x: model_output(unet, x, t, cfg.pixel_unshuffle), size)
