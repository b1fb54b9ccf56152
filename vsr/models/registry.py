"""Where models live: the shipped prior, $VSR_MODELS_DIR, local folders, hub ids."""
from __future__ import annotations

import os
from pathlib import Path

from vsr.config import configs_dir
from vsr.errors import ModelError

DEFAULT_MODEL = "vsr-prior-s"


def shipped_card_path(name: str) -> Path:
    return configs_dir() / "models" / f"{name}.yaml"


def shipped_weights_dir(name: str) -> Path:
    return Path(__file__).resolve().parent.parent / "weights" / name


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
        if not card.is_file() and path.resolve() == shipped_weights_dir(path.name).resolve():
            card = shipped_card_path(path.name)  # a shipped model's folder: its card lives in configs/models/
        return "local", path.resolve(), card if card.is_file() else None
    if shipped_card_path(name).is_file() or name == DEFAULT_MODEL:
        weights = shipped_weights_dir(name)
        if not _is_model_folder(weights):
            raise ModelError(
                f"the weights of the shipped model '{name}' are missing (expected {weights}/unet and "
                f"{weights}/scheduler): train them with 'vsr train prior' or pass --model FOLDER"
            )
        card = next((c for c in (shipped_card_path(name), weights / "model_card.yaml") if c.is_file()), None)
        if card is None:  # without it the engine would run the paper's PRF, far off this model's
            raise ModelError(f"the card of the shipped model '{name}' is missing (expected {shipped_card_path(name)})")
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
