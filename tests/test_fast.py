"""The fast path (`vsr.core.fast`): the ladder's bottom rung, bicubic + one back-projection."""
from __future__ import annotations

import cv2
import numpy as np
import torch

from tests.media import moving_picture
from vsr.core.fast import fast_upscale
from vsr.core.resample import resample


def _back_to(image: np.ndarray, like: np.ndarray) -> np.ndarray:
    """`image` downscaled to `like`'s size with the engine's own kernel (antialiased bicubic)."""
    x = torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1)[None]
    return resample(x, like.shape[:2])[0].permute(1, 2, 0).numpy()


def test_fast_path_is_more_consistent_with_the_input_than_bicubic():
    low = moving_picture(3, 96, 64)
    up = fast_upscale(low, (192, 128))
    assert up.shape == (128, 192, 3) and up.dtype == np.uint8
    bicubic = cv2.resize(low, (192, 128), interpolation=cv2.INTER_CUBIC)
    err_fast = np.abs(_back_to(up, low) - low).mean()
    err_bicubic = np.abs(_back_to(bicubic, low) - low).mean()
    assert err_fast < 0.8 * err_bicubic, (err_fast, err_bicubic)


def test_fast_path_keeps_16_bit_and_identity_size():
    low = moving_picture(1, 48, 32, ten_bit=True)
    assert fast_upscale(low, (96, 64)).dtype == np.uint16
    same = moving_picture(1, 48, 32)
    assert np.array_equal(fast_upscale(same, (48, 32)), same)
