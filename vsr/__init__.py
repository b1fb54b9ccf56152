"""vsr: video super-resolution with pre-trained diffusion models.

`from vsr import Upscaler, EngineConfig` is the library entry point; the imports are
lazy so `vsr --help` and light modules do not pay for torch/diffusers.
"""
from __future__ import annotations

__all__ = ["EncodeOptions", "EngineConfig", "Upscaler", "__version__", "upscale_video"]


def __getattr__(name: str):
    if name == "__version__":  # the installed package's (pyproject.toml is the one place it is written)
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("vsr")
        except PackageNotFoundError:
            return "unknown (not installed)"
    if name == "Upscaler":
        from vsr.engine import Upscaler

        return Upscaler
    if name == "EngineConfig":
        from vsr.config import EngineConfig

        return EngineConfig
    if name in ("upscale_video", "EncodeOptions"):
        from vsr.pipelines import transcode

        return getattr(transcode, name)
    raise AttributeError(f"module 'vsr' has no attribute {name!r}")
