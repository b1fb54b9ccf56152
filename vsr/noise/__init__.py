"""Noise sources behind one seam (`NoiseContext` -> eps); see `vsr.noise.base`.

`make_noise(mode, seed)` builds a source by name from `SOURCES`; a new source is a new
module here plus one line in that table.
"""
from __future__ import annotations

from collections.abc import Callable

from vsr.noise.base import NoiseContext, NoiseSource, NoiseState
from vsr.noise.gaussian import FreshNoise, SharedNoise, frame_seed, gaussian_field

SOURCES: dict[str, Callable[[int], NoiseSource]] = {
    "shared": SharedNoise,
    "fresh": FreshNoise,
}


def make_noise(mode: str, seed: int) -> NoiseSource:
    """The source for an `EngineConfig.noise` mode."""
    try:
        return SOURCES[mode](seed)
    except KeyError:
        raise ValueError(f"unknown noise mode {mode!r}: expected one of {', '.join(SOURCES)}") from None


__all__ = [
    "SOURCES",
    "FreshNoise",
    "NoiseContext",
    "NoiseSource",
    "NoiseState",
    "SharedNoise",
    "frame_seed",
    "gaussian_field",
    "make_noise",
]
