"""`vsr models list | info NAME`."""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from vsr.errors import ModelError
from vsr.models.card import ModelCard
from vsr.models.loading import _default_card
from vsr.models.registry import (
    _is_model_folder,
    list_models,
    resolve_model,
    shipped_card_path,
    shipped_names,
    shipped_weights_dir,
    user_models_dir,
)


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
