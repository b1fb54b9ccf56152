"""Picture-blind Gaussian sources: a function of (seed, frame index, size) only.

The field for a frame is drawn whole (3 x H x W at the target size) from a seeded CPU
`torch.Generator`, so it does not depend on the device, the batch size, the tiling or how
a job is split across machines (STYLE.md 7). `shared` gives every frame the same field
(a static scene gives identical output frames); `fresh` draws one per frame index (it
flickers; kept for comparison).
"""
from __future__ import annotations

import numpy as np
import torch

from vsr.noise.base import NoiseContext


def gaussian_field(seed: int, height: int, width: int) -> torch.Tensor:
    """(3, height, width) float32 N(0, 1) from a CPU generator seeded with `seed`."""
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    return torch.randn((3, height, width), generator=g, dtype=torch.float32)


def frame_seed(seed: int, frame_index: int) -> int:
    """A 63-bit seed for (seed, frame_index), independent across indices (NumPy's SeedSequence)."""
    return int(np.random.SeedSequence([int(seed), int(frame_index)]).generate_state(1, dtype=np.uint64)[0] >> 1)


class SharedNoise:
    """One field per frame size for the whole stream (the last size's field is cached)."""

    def __init__(self, seed: int = 0):
        self.seed = int(seed)
        self._cache: tuple[tuple[int, int], torch.Tensor] | None = None

    def field(self, height: int, width: int) -> torch.Tensor:
        """(3, height, width): the one field of this seed and size."""
        if self._cache is None or self._cache[0] != (height, width):
            self._cache = ((height, width), gaussian_field(self.seed, height, width))
        return self._cache[1]

    def __call__(self, ctx: NoiseContext) -> torch.Tensor:
        """(1, 3, H, W): broadcast over the batch."""
        return self.field(*ctx.size)[None]

    def noise_level(self, scale: float) -> float | None:
        return None

    def calibrated_steps(self) -> int | None:
        return None

    def __getstate__(self) -> dict:
        return {"seed": self.seed}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["seed"])


class FreshNoise:
    """An independent field per frame, a pure function of (seed, frame_index)."""

    def __init__(self, seed: int = 0):
        self.seed = int(seed)

    def field(self, frame_index: int, height: int, width: int) -> torch.Tensor:
        """(3, height, width): the field of one frame."""
        return gaussian_field(frame_seed(self.seed, frame_index), height, width)

    def __call__(self, ctx: NoiseContext) -> torch.Tensor:
        """(N, 3, H, W): one field per frame index."""
        return torch.stack([self.field(i, *ctx.size) for i in ctx.frame_indices])

    def noise_level(self, scale: float) -> float | None:
        return None

    def calibrated_steps(self) -> int | None:
        return None
