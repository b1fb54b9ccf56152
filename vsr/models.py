"""Models: cards, loading (shipped prior, local diffusers folders, hub ids) and the one
denoiser adapter.

A model is a diffusers folder, `unet/` (a UNet2DModel) + `scheduler/` (the training DDPM
schedule), plus a model card (docs/ARCHITECTURE.md "Models"). Hub DDPM checkpoints with
the UNet and `scheduler_config.json` at the root load too. Everything model-specific
(eps / v / sample parametrisation, the pixel-unshuffle stem, dtype, clipping x0) lives in
`ModelDenoiser`; the sampler and the tiler only see (x_t, t) -> (x0, eps) in float32.
A latent backend (VAE + UNet) would be another `LoadedModel.make_denoiser`.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml

from vsr.config import configs_dir
from vsr.errors import ConfigError, ModelError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "vsr-prior-s"
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


# -- model cards ------------------------------------------------------------------
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


# -- where models live ------------------------------------------------------------
def shipped_card_path(name: str) -> Path:
    return configs_dir() / "models" / f"{name}.yaml"


def shipped_weights_dir(name: str) -> Path:
    return Path(__file__).resolve().parent / "weights" / name


def shipped_names() -> list[str]:
    """The default prior plus any other card in configs/models."""
    folder = configs_dir() / "models"
    return sorted({DEFAULT_MODEL, *(p.stem for p in folder.glob("*.yaml"))} if folder.is_dir() else {DEFAULT_MODEL})


def user_models_dir() -> Path | None:
    d = os.environ.get("VSR_MODELS_DIR")
    return Path(d) if d else None


def _is_model_folder(p: Path) -> bool:
    return p.is_dir() and ((p / "unet" / "config.json").is_file() or (p / "config.json").is_file())


def resolve_model(model: str | os.PathLike | None) -> tuple[str, Path | str, Path | None]:
    """(kind, location, card path): kind is "local" (a folder) or "hub" (an id).

    Order: None -> the shipped prior; an existing folder; a shipped name; a folder in
    $VSR_MODELS_DIR; anything with a "/" -> a hub id.
    """
    name = DEFAULT_MODEL if model is None else str(model)
    path = Path(name).expanduser()
    if path.is_dir():
        card = path / "model_card.yaml"
        return "local", path.resolve(), card if card.is_file() else None
    if shipped_card_path(name).is_file() or name == DEFAULT_MODEL:
        weights = shipped_weights_dir(name)
        if not _is_model_folder(weights):
            raise ModelError(
                f"the weights of the shipped model '{name}' are missing (expected {weights}/unet and "
                f"{weights}/scheduler): train them with 'vsr train prior' or pass --model FOLDER"
            )
        card = next((c for c in (shipped_card_path(name), weights / "model_card.yaml") if c.is_file()), None)
        return "local", weights, card
    user_dir = user_models_dir()
    if user_dir is not None and (user_dir / name).is_dir():
        folder = user_dir / name
        card = folder / "model_card.yaml"
        return "local", folder.resolve(), card if card.is_file() else None
    if "/" in name and not path.exists() and not name.startswith((".", "/", "~")):
        return "hub", name, None
    raise ModelError(
        f"model '{name}' not found: pass a local diffusers folder (unet/ + scheduler/), "
        f"a hub id (owner/name), or one of: {', '.join(list_models()) or 'no installed models'}"
    )


def list_models() -> list[str]:
    names = list(shipped_names())
    user_dir = user_models_dir()
    if user_dir is not None and user_dir.is_dir():
        names += sorted(p.name for p in user_dir.iterdir() if _is_model_folder(p))
    return names


# -- loading ----------------------------------------------------------------------
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
    try:
        net = UNet2DModel.from_pretrained(str(unet_dir), low_cpu_mem_usage=False).float()  # shipped weights may be stored fp16
    except Exception as exc:  # corrupt / incompatible weights: the user must fix the folder
        raise ModelError(f"cannot load the UNet from {unet_dir}: {exc}") from None
    card = ModelCard.from_yaml(card_path, folder.name) if card_path else _default_card(folder.name, net)
    return _finish(net, json.loads(sched_file.read_text()), card, str(folder))


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


# -- device / dtype ---------------------------------------------------------------
def cpu_supports_bf16() -> bool:
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_device(device: str) -> torch.device:
    """'auto' -> cuda if available, else mps, else cpu; explicit devices are checked."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device '{device}' requested but CUDA is not available: use --device cpu or auto")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("device 'mps' requested but MPS is not available: use --device cpu or auto")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """'auto': fp16 on CUDA/MPS; bf16 on a CPU with native bf16 support, else fp32."""
    if dtype != "auto":
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    if device.type in ("cuda", "mps"):
        return torch.float16
    return torch.bfloat16 if cpu_supports_bf16() else torch.float32


def prepare_net(net: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """The net on device/dtype (a copy unless it is already there); channels_last off fp32-CPU."""
    p = next(iter(net.parameters()), None)
    if p is not None and p.device == device and p.dtype == dtype:
        return net
    # nn.Module.to, not diffusers' override, which warns on every cast of a model without fp32-only modules
    out = torch.nn.Module.to(copy.deepcopy(net), device=device, dtype=dtype)
    if not (device.type == "cpu" and dtype == torch.float32):
        out = out.to(memory_format=torch.channels_last)
    return out.eval().requires_grad_(False)


# -- the one denoiser adapter -----------------------------------------------------
class ModelDenoiser:
    """(x_t, t) -> (x0_pred, eps_pred): float32 (N, 3, H, W) in [-1, 1] space in and out.

    The only place that knows the model's parametrisation (epsilon, v_prediction,
    sample), its dtype and its pixel-unshuffle stem (the UNet runs on
    pixel_unshuffle(x_t, r); its output is pixel_shuffled back). With clip_x0 the x0
    prediction is clamped to [-1, 1] (eps kept as predicted, as diffusers' DDIM does).
    """

    def __init__(
        self,
        net: torch.nn.Module,
        alphas_cumprod: torch.Tensor,
        prediction_type: str,
        *,
        pixel_unshuffle: int = 1,
        clip_x0: bool = True,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        if prediction_type not in PREDICTION_TYPES:
            raise ModelError(f"unsupported prediction_type {prediction_type!r}")
        self.net = net
        self.alphas_cumprod = alphas_cumprod.detach().to("cpu", torch.float64)
        self.prediction_type = prediction_type
        self.r = pixel_unshuffle
        self.clip_x0 = clip_x0
        self.device = torch.device(device)
        self.dtype = dtype
        self.channels_last = not (self.device.type == "cpu" and dtype == torch.float32)

    def model_output(self, x_t: torch.Tensor, t: int) -> torch.Tensor:
        """The raw network output in pixel space (N, 3, H, W), in the model's dtype."""
        x = x_t.to(device=self.device, dtype=self.dtype)
        if self.r > 1:
            x = F.pixel_unshuffle(x, self.r)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        ts = torch.full((x.shape[0],), int(t), device=self.device, dtype=torch.long)
        out = self.net(x, ts)
        out = getattr(out, "sample", out)
        if self.r > 1:
            out = F.pixel_shuffle(out, self.r)
        return out.to(device=x_t.device)

    def _coefs(self, t: int) -> tuple[float, float]:
        a = float(self.alphas_cumprod[int(t)])
        return a**0.5, (1.0 - a) ** 0.5

    def predict_x0(self, x_t: torch.Tensor, t: int) -> torch.Tensor:
        """x0 prediction only, float32 (what the tiled engine blends); clipped per the card."""
        sa, sb = self._coefs(t)
        out = self.model_output(x_t, t)
        x_t = x_t.float()  # mixed fp32/low-precision arithmetic promotes to fp32
        if self.prediction_type == "epsilon":
            x0 = torch.sub(x_t, out, alpha=sb).div_(sa)
        elif self.prediction_type == "v_prediction":
            x0 = torch.sub(x_t * sa, out, alpha=sb)
        else:  # "sample"
            x0 = out.float()
        return x0.clamp_(-1.0, 1.0) if self.clip_x0 else x0

    def __call__(self, x_t: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        sa, sb = self._coefs(t)
        out = self.model_output(x_t, t)
        x_t = x_t.float()
        if self.prediction_type == "epsilon":
            eps, x0 = out.float(), torch.sub(x_t, out, alpha=sb).div_(sa)
        elif self.prediction_type == "v_prediction":
            x0, eps = torch.sub(x_t * sa, out, alpha=sb), torch.add(out * sa, x_t, alpha=sb)
        else:  # "sample"
            x0, eps = out.float(), torch.sub(x_t, out, alpha=sa).div_(max(sb, 1e-8))
        if self.clip_x0:
            x0 = x0.clamp(-1.0, 1.0)
        return x0, eps


# -- `vsr models` -----------------------------------------------------------------
def add_cli(parser) -> None:
    sub = parser.add_subparsers(dest="models_command", metavar="ACTION")
    sub.add_parser("list", help="list the shipped models and folders in $VSR_MODELS_DIR")
    info = sub.add_parser("info", help="print a model's card")
    info.add_argument("name", help="a model name, a local folder or a hub id")


def _card_for_info(name: str) -> tuple[ModelCard, str]:
    """The card `load_model(name)` would use, without loading weights; plus where it lives."""
    if name in shipped_names() and not _is_model_folder(shipped_weights_dir(name)):
        path = shipped_card_path(name)
        card = ModelCard.from_yaml(path, name) if path.is_file() else ModelCard(name=name)
        return card, f"{shipped_weights_dir(name)} (weights missing)"
    kind, location, card_path = resolve_model(name)
    if kind == "hub":
        return ModelCard(name=name.split("/")[-1]), f"hub id {location} (default card)"
    folder = Path(location)
    if card_path:
        return ModelCard.from_yaml(card_path, folder.name), f"{folder} (card {card_path})"
    unet_cfg = folder / "unet" / "config.json"
    unet_cfg = unet_cfg if unet_cfg.is_file() else folder / "config.json"
    if not unet_cfg.is_file():
        raise ModelError(f"{folder} is not a diffusers model folder: expected unet/config.json (or config.json)")
    in_ch = json.loads(unet_cfg.read_text()).get("in_channels", 3)
    return _default_card(folder.name, None, in_ch), f"{folder} (no model card: defaults)"


def run_cli(args) -> int:
    action = getattr(args, "models_command", None)
    if action in (None, "list"):
        names = list_models()
        if not names:
            print("no models installed")
        for name in names:
            if name in shipped_names():
                ok = _is_model_folder(shipped_weights_dir(name))
                print(f"{name}\tshipped\t{'ready' if ok else 'weights missing'}")
            else:
                print(f"{name}\t{user_models_dir() / name}")
        return 0
    card, where = _card_for_info(args.name)
    print(f"# {card.name}: {where}")
    print(yaml.safe_dump(card.to_dict(), sort_keys=False), end="")
    return 0
