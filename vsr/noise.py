"""Noise sources: the eps injected into each frame, as a function of seed and frame.

The field for a frame is drawn whole (3 x H x W at the target size) from a seeded CPU
`torch.Generator`, so it does not depend on the device, the batch size, the tiling or how
a job is split across machines (STYLE.md 7). `shared` gives every frame the same field
(a static scene gives identical output frames); `fresh` draws one per frame index (it
flickers; kept for comparison). A flow-warped source will implement the same protocol.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np
import torch


class NoiseSource(Protocol):
    """eps for one frame: (3, height, width) float32 standard normal, on the CPU."""

    def __call__(self, frame_index: int, height: int, width: int) -> torch.Tensor: ...


def gaussian_field(seed: int, height: int, width: int) -> torch.Tensor:
    """(3, height, width) float32 N(0, 1) from a CPU generator seeded with `seed`."""
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    return torch.randn((3, height, width), generator=g, dtype=torch.float32)


class SharedNoise:
    """One field per frame size for the whole stream (the last size's field is cached)."""

    def __init__(self, seed: int = 0):
        self.seed = int(seed)
        self._cache: tuple[tuple[int, int], torch.Tensor] | None = None

    def __call__(self, frame_index: int, height: int, width: int) -> torch.Tensor:
        if self._cache is None or self._cache[0] != (height, width):
            self._cache = ((height, width), gaussian_field(self.seed, height, width))
        return self._cache[1]

    def __getstate__(self) -> dict:
        return {"seed": self.seed}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["seed"])


class FreshNoise:
    """An independent field per frame, a pure function of (seed, frame_index)."""

    def __init__(self, seed: int = 0):
        self.seed = int(seed)

    def __call__(self, frame_index: int, height: int, width: int) -> torch.Tensor:
        sub = int(np.random.SeedSequence([self.seed, int(frame_index)]).generate_state(1, dtype=np.uint64)[0] >> 1)
        return gaussian_field(sub, height, width)


def make_noise(mode: str, seed: int) -> NoiseSource:
    """The source for an `EngineConfig.noise` mode."""
    if mode == "shared":
        return SharedNoise(seed)
    if mode == "fresh":
        return FreshNoise(seed)
    raise ValueError(f"unknown noise mode {mode!r}: expected 'shared' or 'fresh'")
