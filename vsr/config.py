"""The engine's configuration: one frozen, validated dataclass.

Loaded once (a YAML preset from `configs/presets/` or a file), overridden from code or
the CLI with `replace`, validated in `__post_init__` so a bad value fails where it is
set, with a `ConfigError` naming the field and the allowed values. The resolved config
is plain data (`to_dict`), so it can be saved next to outputs and pickled.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import yaml

from vsr.errors import ConfigError

NOISE_MODES = ("shared", "fresh")
DTYPES = ("auto", "float32", "bfloat16", "float16")
MAX_STEPS = 50
MAX_CONSISTENCY = 10  # back-projection passes per step


def configs_dir() -> Path:
    """The shipped `configs/` folder: the installed `vsr.configs` package, else the checkout's."""
    try:
        import vsr.configs
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / "configs"
    # the package's folder on disk (not str() of importlib's Traversable: for a namespace
    # package that is "MultiplexedPath('...')", and every shipped card went missing)
    return Path(next(iter(vsr.configs.__path__))).resolve()


def preset_names() -> list[str]:
    folder = configs_dir() / "presets"
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def _overridden(data: dict, changes: dict) -> dict:
    """`data` with `changes` on top; a new steps or noise_level also drops an exact
    `timesteps` set (a preset's, `invsr3`), which would otherwise win over them unseen."""
    out = {**data, **changes}
    if ("steps" in changes or "noise_level" in changes) and "timesteps" not in changes:
        out["timesteps"] = None
    return out


def _fail(name: str, value: Any, allowed: str) -> None:
    raise ConfigError(f"config field '{name}' = {value!r} is invalid: expected {allowed}", field=name, allowed=allowed)


OVERLAP_AUTO = 32  # overlap "auto": this many pixels, at most half the tile (a small-crop model)


def check_tile_multiple(tile: int, factor: int) -> None:
    """ConfigError when `tile` is not a multiple of the model's downsampling `factor`
    (checked when the engine loads the model)."""
    if tile % factor:
        _fail("tile", tile, f"a multiple of {factor} (the model's downsampling factor)")


def check_overlap(overlap: int, tile: int, whose: str) -> None:
    """ConfigError when an explicit `overlap` is above half the `tile` (tiles would
    overlap three deep, and at the tile itself never move on): checked for a tile given
    in the config here, and for the model card's crop (`whose` names it) when the engine
    loads the model and the tile size is known."""
    if overlap * 2 > tile:
        _fail("overlap", overlap, f"'auto' or at most half the tile ({whose} {tile}), e.g. --overlap {tile // 4}")


def is_int(v: Any) -> bool:
    """An int that is not a bool (YAML's true is not a count); the training configs use it too."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    """A finite int or float that is not a bool."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class EngineConfig:
    """What the engine does to each frame (see METHOD.md sections 1 and 3).

    size is the output (width, height) and is exclusive with scale; noise_level is t/T
    of the injected noise ("auto" reads the model card's PRF curve at the frame's
    scale); timesteps, when given, is the exact descending DDIM set (0 <= t < T) and
    overrides steps and noise_level. consistency is the number of back-projection
    passes applied to every step's x0 estimate so the output downscales back to the
    input (`vsr.sampling.back_project`); 0 is plain noise injection as in Diff-SR;
    "auto" is the count the noise predictor was calibrated with (its card), else 1.
    noise picks the Gaussian noise (one field shared by all frames, or fresh per frame);
    noise_predictor "auto" predicts the noise from the frame with the model's
    `noise_predictor/` when it has one (InvSR; the Gaussian field is its `mix` part),
    "off" gives plain Diff-SR.
    """

    model: str | None = None
    size: tuple[int, int] | None = None
    scale: float | None = None
    steps: int | Literal["auto"] = "auto"
    timesteps: tuple[int, ...] | None = None
    noise_level: float | Literal["auto"] = "auto"
    consistency: int | Literal["auto"] = "auto"
    tile: int | None = None
    overlap: int | Literal["auto"] = "auto"
    batch: int = 8
    seed: int = 0
    noise: Literal["shared", "fresh"] = "shared"
    noise_predictor: Literal["auto", "off"] = "auto"
    device: str = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # normalise list -> tuple etc. on the frozen instance
        if self.model is not None:
            if not isinstance(self.model, (str, os.PathLike)) or not str(self.model):
                _fail("model", self.model, "a model name, a local folder or a hub id (or null for the shipped prior)")
            set_(self, "model", str(self.model))
        if self.size is not None:
            size = self.size
            if isinstance(size, str) and "x" in size.lower():
                size = size.lower().split("x")
            try:
                size = tuple(int(v) for v in size)
            except (TypeError, ValueError):
                _fail("size", self.size, "[width, height] of positive integers")
            if len(size) != 2 or min(size) < 1:
                _fail("size", self.size, "[width, height] of positive integers")
            set_(self, "size", size)
        if self.scale is not None:
            if not is_number(self.scale) or not 0 < self.scale <= 64:
                _fail("scale", self.scale, "a number in (0, 64], e.g. 2 or 2.7")
            set_(self, "scale", float(self.scale))
        if self.size is not None and self.scale is not None:
            raise ConfigError("config fields 'size' and 'scale' are exclusive: give one of them")
        if self.steps != "auto" and (not is_int(self.steps) or not 1 <= self.steps <= MAX_STEPS):
            _fail("steps", self.steps, f"'auto' or an integer in 1..{MAX_STEPS}")
        if self.timesteps is not None:
            ts = self.timesteps
            if is_int(ts):
                ts = (ts,)
            if (
                not isinstance(ts, (list, tuple))
                or not ts
                or not all(is_int(t) and t >= 0 for t in ts)
                or any(a <= b for a, b in zip(ts, ts[1:]))
            ):
                _fail("timesteps", self.timesteps, "a strictly descending list of integers >= 0, e.g. [200, 100, 50]")
            set_(self, "timesteps", tuple(int(t) for t in ts))
        if self.noise_level != "auto":
            if not is_number(self.noise_level) or not 0 < self.noise_level < 1:
                _fail("noise_level", self.noise_level, "'auto' or a number t/T in (0, 1), e.g. 0.3")
            set_(self, "noise_level", float(self.noise_level))
        if self.consistency != "auto" and (not is_int(self.consistency) or not 0 <= self.consistency <= MAX_CONSISTENCY):
            _fail("consistency", self.consistency,
                  f"'auto' or an integer in 0..{MAX_CONSISTENCY} (back-projection passes per step; 0 = off)")
        if self.tile is not None and (not is_int(self.tile) or not 8 <= self.tile <= 4096):
            _fail("tile", self.tile, "an integer in 8..4096 (unset or null: the model card's crop)")
        if self.overlap != "auto":
            if not is_int(self.overlap) or not 0 <= self.overlap <= 2048:
                _fail("overlap", self.overlap, "'auto' or an integer in 0..2048 (32-64 is typical)")
            if self.tile is not None:
                check_overlap(self.overlap, self.tile, "tile")
        if not is_int(self.batch) or not 1 <= self.batch <= 4096:
            _fail("batch", self.batch, "an integer in 1..4096 (tiles per model call)")
        if not is_int(self.seed) or not 0 <= self.seed < 2**63:
            _fail("seed", self.seed, "an integer in 0..2**63-1")
        if self.noise not in NOISE_MODES:
            _fail("noise", self.noise, " or ".join(repr(m) for m in NOISE_MODES))
        if self.noise_predictor not in ("auto", "off"):
            _fail("noise_predictor", self.noise_predictor, "'auto' (use the model's noise_predictor/ when it has one) or 'off'")
        dev = self.device
        if not isinstance(dev, str) or not (
            dev in ("auto", "cpu", "cuda", "mps") or (dev.startswith("cuda:") and dev[5:].isdigit())
        ):
            _fail("device", dev, "auto, cpu, cuda, cuda:N or mps")
        if self.dtype not in DTYPES:
            _fail("dtype", self.dtype, ", ".join(DTYPES))

    # -- construction -------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict) -> "EngineConfig":
        """Build from plain data (YAML, JSON, CLI); unknown keys are an error, not ignored."""
        if not isinstance(d, dict):
            raise ConfigError(f"engine config must be a mapping of field: value, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown config key(s) {', '.join(unknown)}: allowed keys are {', '.join(sorted(known))}")
        return cls(**d)

    @classmethod
    def from_yaml(cls, path_or_preset: str | os.PathLike, **overrides: Any) -> "EngineConfig":
        """A YAML file path, or a preset name (`configs/presets/<name>.yaml`); `overrides`
        (None: keep the file's) replace the file's values before anything is validated, so
        a command-line option overrides a file's value even where that value alone is
        invalid (`overlap: 40` beside `tile: 64`, run with `--tile 256`)."""
        data = cls.read_yaml(path_or_preset)
        if isinstance(data, dict):
            data = _overridden(data, {k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(data)

    @staticmethod
    def read_yaml(path_or_preset: str | os.PathLike) -> Any:
        """The plain data of a config file or preset (ConfigError if unreadable)."""
        path = Path(path_or_preset)
        if not path.is_file():
            preset = configs_dir() / "presets" / f"{path_or_preset}.yaml"
            if not preset.is_file():
                raise ConfigError(
                    f"config '{path_or_preset}' is neither a YAML file nor a preset "
                    f"(presets: {', '.join(preset_names()) or 'none'})"
                )
            path = preset
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from None
        if isinstance(data, dict) and "engine" in data and len(data) == 1:
            data = data["engine"]  # allow a file that nests the engine section
        elif isinstance(data, dict) and isinstance(data.get("engine"), dict):
            raise ConfigError(f"config {path} has an 'engine:' section beside top-level keys "
                              f"({', '.join(sorted(k for k in data if k != 'engine'))}): put them all under it, or none")
        return data

    def replace(self, **overrides: Any) -> "EngineConfig":
        """A validated copy; None values mean "keep". Setting size clears scale and vice versa."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigError(f"unknown config key(s) {', '.join(unknown)}: allowed keys are {', '.join(sorted(known))}")
        changes = _overridden({}, {k: v for k, v in overrides.items() if v is not None})
        if "size" in changes and "scale" not in changes:
            changes["scale"] = None
        if "scale" in changes and "size" not in changes:
            changes["size"] = None
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML-able data (tuples become lists); `from_dict(to_dict())` round-trips."""
        out = dataclasses.asdict(self)
        for key in ("size", "timesteps"):
            if out[key] is not None:
                out[key] = list(out[key])
        return out
