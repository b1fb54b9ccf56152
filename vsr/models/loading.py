"""Loading a model: a diffusers folder (`unet/` + `scheduler/`), a hub DDPM checkpoint, or
the shipped prior, into a `LoadedModel` (float32 CPU weights, schedule, card).

A latent backend (VAE + UNet) would be another `LoadedModel.make_denoiser`.
"""
from __future__ import annotations

import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vsr.device import prepare_net
from vsr.errors import ModelError
from vsr.models.adapter import ModelDenoiser
from vsr.models.card import PREDICTION_TYPES, ModelCard
from vsr.models.registry import resolve_model

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """Weights (float32, CPU, as loaded) plus what the sampler needs to use them.

    net(x, t) -> tensor in the UNet's space (3*r*r channels at H/r x W/r);
    alphas_cumprod: (T,) float64; source: where to reload it from (None = in memory only).
    """

    net: torch.nn.Module
    card: ModelCard
    alphas_cumprod: torch.Tensor
    prediction_type: str
    source: str | None = None
    down_factor: int = 1  # tile sizes must be multiples of this

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    def make_denoiser(self, device: torch.device, dtype: torch.dtype) -> "ModelDenoiser":
        return ModelDenoiser(
            prepare_net(self.net, device, dtype),
            self.alphas_cumprod,
            self.prediction_type,
            pixel_unshuffle=self.card.pixel_unshuffle,
            clip_x0=self.card.clip_x0,
            device=device,
            dtype=dtype,
        )


def _alphas_cumprod(sched_cfg: dict) -> tuple[torch.Tensor, str]:
    from diffusers import DDPMScheduler

    try:
        sched = DDPMScheduler.from_config(sched_cfg)
    except Exception as exc:  # diffusers raises several types for a bad config
        raise ModelError(f"bad scheduler config: {exc}") from None
    return sched.alphas_cumprod.to(torch.float64), str(sched.config.prediction_type)


def _unet_down_factor(net: torch.nn.Module, r: int) -> int:
    blocks = getattr(getattr(net, "config", None), "down_block_types", None)
    return r * 2 ** (len(blocks) - 1) if blocks else r


def _finish(net: torch.nn.Module, sched_cfg: dict, card: ModelCard, source: str | None) -> LoadedModel:
    ac, pred = _alphas_cumprod(sched_cfg)
    pred = card.prediction_type or pred
    if pred not in PREDICTION_TYPES:
        raise ModelError(f"model '{card.name}': unsupported prediction_type {pred!r} ({', '.join(PREDICTION_TYPES)})")
    r = card.pixel_unshuffle
    in_ch = getattr(getattr(net, "config", None), "in_channels", 3 * r * r)
    if in_ch != 3 * r * r:
        raise ModelError(
            f"model '{card.name}': its UNet takes {in_ch} channels but the card's pixel_unshuffle {r} "
            f"gives {3 * r * r}: fix pixel_unshuffle in the model card"
        )
    net.eval().requires_grad_(False)
    return LoadedModel(net, card, ac, pred, source, _unet_down_factor(net, r))


def _load_local(folder: Path, card_path: Path | None) -> LoadedModel:
    from diffusers import UNet2DModel

    unet_dir = folder / "unet" if (folder / "unet" / "config.json").is_file() else folder
    sched_file = next(
        (p for p in (folder / "scheduler" / "scheduler_config.json", folder / "scheduler_config.json") if p.is_file()),
        None,
    )
    if not (unet_dir / "config.json").is_file():
        raise ModelError(f"{folder} is not a diffusers model folder: expected unet/config.json (or config.json)")
    if sched_file is None:
        raise ModelError(f"{folder} has no scheduler config: expected scheduler/scheduler_config.json")
    for part in (unet_dir, folder / "noise_predictor"):
        check_weights_format(part)
    try:
        safe = any(unet_dir.glob("*.safetensors"))  # else pickle weights the user allowed (check_weights_format)
        net = UNet2DModel.from_pretrained(str(unet_dir), low_cpu_mem_usage=False, use_safetensors=safe).float()  # shipped weights may be stored fp16
    except Exception as exc:  # corrupt / incompatible weights: the user must fix the folder
        raise ModelError(f"cannot load the UNet from {unet_dir}: {exc}") from None
    card = ModelCard.from_yaml(card_path, folder.name) if card_path else _default_card(folder.name, net)
    return _finish(net, json.loads(sched_file.read_text()), card, str(folder))


PICKLE_ENV = "VSR_ALLOW_PICKLE"


def pickle_allowed() -> bool:
    """Whether the user opted in to pickle weights (`--allow-pickle` / VSR_ALLOW_PICKLE=1)."""
    return os.environ.get(PICKLE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def check_weights_format(folder: Path) -> None:
    """ModelError unless `folder`'s weights are safetensors: pickle weights (`.bin`, `.pt`,
    `.ckpt`) can run code when loaded, so a folder holding only those is refused unless the
    user opts in (`--allow-pickle` or VSR_ALLOW_PICKLE=1; torch then still loads them with
    weights_only=True). A folder without weights files is left to the loader to report."""
    if not folder.is_dir():
        return
    names = [p.name for p in folder.iterdir() if p.is_file()]
    if any(n.endswith(".safetensors") for n in names):
        return
    pickles = sorted(n for n in names if n.endswith((".bin", ".pt", ".pth", ".ckpt", ".pkl")))
    if pickles and not pickle_allowed():
        raise ModelError(
            f"{folder} holds only pickle weights ({', '.join(pickles)}), which can run code when loaded: convert them "
            f"to safetensors, or pass --allow-pickle (or set {PICKLE_ENV}=1) if you trust where they came from"
        )


def _default_card(name: str, net: torch.nn.Module | None, in_channels: int | None = None) -> ModelCard:
    """The card of a model without one: the paper's PRF, pixel_unshuffle read off the UNet."""
    in_ch = in_channels or int(getattr(getattr(net, "config", None), "in_channels", 3))
    r = round((in_ch / 3) ** 0.5)
    return ModelCard(name=name, pixel_unshuffle=r if 3 * r * r == in_ch else 1)


def _hub_reachable() -> bool:
    """Whether the hub's host name resolves: offline, fail at once with the hint instead
    of after huggingface_hub's retries (about 25 s of warnings per file)."""
    import socket
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return False
    return True


def _load_hub(repo_id: str) -> LoadedModel:
    hint = f"cannot load hub model '{repo_id}' (offline or not found): download it elsewhere and pass its local folder path"
    try:  # already in the local hub cache: no network needed
        with warnings.catch_warnings():  # huggingface_hub deprecation noise on a cache miss
            warnings.simplefilter("ignore")
            return _hub_model(repo_id, local_files_only=True)
    except Exception:  # noqa: BLE001 - not cached (or incomplete): try the network below
        pass
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on") or not _hub_reachable():
        raise ModelError(hint)
    try:
        return _hub_model(repo_id, local_files_only=False)
    except Exception:  # connection errors, repo not found, gated: all need a local folder here
        raise ModelError(hint) from None


def _hub_model(repo_id: str, *, local_files_only: bool) -> LoadedModel:
    """A hub model's UNet (in `unet/` or at the top) and DDPM schedule, via diffusers."""
    from diffusers import DDPMScheduler, UNet2DModel

    kw: dict[str, Any] = {"local_files_only": local_files_only}
    try:
        net = UNet2DModel.from_pretrained(repo_id, subfolder="unet", low_cpu_mem_usage=False, **kw)
    except (OSError, ValueError):
        net = UNet2DModel.from_pretrained(repo_id, low_cpu_mem_usage=False, **kw)
    net = net.float()
    try:
        sched_cfg = DDPMScheduler.load_config(repo_id, subfolder="scheduler", **kw)
    except (OSError, ValueError):
        sched_cfg = DDPMScheduler.load_config(repo_id, **kw)
    return _finish(net, dict(sched_cfg), _default_card(repo_id.split("/")[-1], net), repo_id)


def load_model(model: str | os.PathLike | None = None) -> LoadedModel:
    """Load a model by name, folder or hub id (None = the shipped prior), weights on CPU fp32."""
    kind, location, card_path = resolve_model(model)
    if kind == "hub":
        return _load_hub(str(location))
    lm = _load_local(Path(location), card_path)
    log.info("loaded model %s from %s (%s, T=%d)", lm.card.name, location, lm.prediction_type, lm.num_train_timesteps)
    return lm
