"""Models: cards, where they live, loading, and the one denoiser adapter.

A model is a diffusers folder, `unet/` (a UNet2DModel) + `scheduler/` (the training DDPM
schedule), plus a model card (docs/ARCHITECTURE.md "Models"); hub DDPM checkpoints with
the UNet and `scheduler_config.json` at the root load too. Everything model-specific
(eps / v / sample parametrisation, the pixel-unshuffle stem, dtype, clipping x0) lives in
`adapter.py`; the sampler and the tiler only see (x_t, t) -> (x0, eps) in float32.
"""
from __future__ import annotations

from vsr.device import cpu_supports_bf16, prepare_net, resolve_device, resolve_dtype
from vsr.models.adapter import ModelDenoiser, to_x0_eps
from vsr.models.card import PREDICTION_TYPES, ModelCard
from vsr.models.cli import add_cli, run_cli
from vsr.models.loading import LoadedModel, load_model
from vsr.models.registry import (
    DEFAULT_MODEL,
    list_models,
    resolve_model,
    shipped_card_path,
    shipped_names,
    shipped_weights_dir,
    user_models_dir,
)

__all__ = [
    "DEFAULT_MODEL",
    "PREDICTION_TYPES",
    "LoadedModel",
    "ModelCard",
    "ModelDenoiser",
    "add_cli",
    "cpu_supports_bf16",
    "list_models",
    "load_model",
    "prepare_net",
    "resolve_device",
    "resolve_dtype",
    "resolve_model",
    "run_cli",
    "shipped_card_path",
    "shipped_names",
    "shipped_weights_dir",
    "to_x0_eps",
    "user_models_dir",
]
