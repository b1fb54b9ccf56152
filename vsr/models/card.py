"""Model cards: what the engine needs to know about a model beyond its weights
(docs/ARCHITECTURE.md "Models")."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vsr.errors import ModelError

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


@dataclass(frozen=True)
class ModelCard:
    """What the engine needs to know about a model beyond its weights.

    crop: the tile size it was trained on; pixel_unshuffle: r, the UNet sees
    pixel_unshuffle(x, r); prf_scales/prf_t: the calibrated PRF curve t*/T per scale;
    prediction_type: None = take the scheduler config's.
    """

    name: str = "model"
    crop: int = 256
    pixel_unshuffle: int = 1
    value_range: tuple[float, float] = (-1.0, 1.0)
    clip_x0: bool = True
    prediction_type: str | None = None
    prf_scales: tuple[float, ...] = (2.0, 4.0, 8.0)
    prf_t: tuple[float, ...] = (0.2, 0.4, 0.55)
    extra: dict = field(default_factory=dict, compare=False)  # other keys, kept on save

    def __post_init__(self) -> None:
        if not isinstance(self.crop, int) or self.crop < 8:
            raise ModelError(f"model card '{self.name}': crop must be an integer >= 8, got {self.crop!r}")
        if not isinstance(self.pixel_unshuffle, int) or self.pixel_unshuffle < 1:
            raise ModelError(f"model card '{self.name}': pixel_unshuffle must be an integer >= 1")
        if tuple(float(v) for v in self.value_range) != (-1.0, 1.0):
            raise ModelError(f"model card '{self.name}': only value_range [-1, 1] is supported")
        if self.prediction_type is not None and self.prediction_type not in PREDICTION_TYPES:
            raise ModelError(
                f"model card '{self.name}': prediction_type must be one of {', '.join(PREDICTION_TYPES)}"
            )
        if len(self.prf_scales) != len(self.prf_t) or not self.prf_scales:
            raise ModelError(f"model card '{self.name}': prf.scales and prf.t must be non-empty and of equal length")
        if not all(0 < t < 1 for t in self.prf_t):
            raise ModelError(f"model card '{self.name}': prf.t values must be in (0, 1)")

    @classmethod
    def from_dict(cls, d: dict, default_name: str = "model") -> "ModelCard":
        d = dict(d or {})
        prf = d.pop("prf", None) or {}
        known = {"name", "crop", "pixel_unshuffle", "value_range", "clip_x0", "prediction_type"}
        kwargs: dict[str, Any] = {k: d.pop(k) for k in list(d) if k in known}
        kwargs.setdefault("name", default_name)
        if "value_range" in kwargs:
            kwargs["value_range"] = tuple(kwargs["value_range"])
        if prf:
            kwargs["prf_scales"] = tuple(float(s) for s in prf.get("scales", ()))
            kwargs["prf_t"] = tuple(float(t) for t in prf.get("t", ()))
        return cls(**kwargs, extra=d)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, default_name: str = "model") -> "ModelCard":
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ModelError(f"cannot read model card {path}: {exc}") from None
        if not isinstance(data, dict):
            raise ModelError(f"model card {path} must be a YAML mapping")
        return cls.from_dict(data, default_name)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "crop": self.crop,
            "pixel_unshuffle": self.pixel_unshuffle,
            "value_range": list(self.value_range),
            "clip_x0": self.clip_x0,
        }
        if self.prediction_type is not None:
            out["prediction_type"] = self.prediction_type
        out["prf"] = {"scales": list(self.prf_scales), "t": list(self.prf_t)}
        out.update(self.extra)
        return out

    def save(self, path: str | os.PathLike, header: str | None = None) -> None:
        """Write the card as YAML, with an optional comment header (e.g. provenance)."""
        head = "".join(f"# {line}\n" for line in header.splitlines()) if header else ""
        Path(path).write_text(head + yaml.safe_dump(self.to_dict(), sort_keys=False))

    def with_prf(self, scales: tuple[float, ...], levels: tuple[float, ...], **extra: Any) -> "ModelCard":
        return dataclasses.replace(self, prf_scales=tuple(scales), prf_t=tuple(levels), extra={**self.extra, **extra})
