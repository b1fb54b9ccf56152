"""The corpus config (`configs/corpus.yaml`): its sources, the photograph rule's
thresholds and the reviewed lists; `load_config` reads and checks it (see `corpus`)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from vsr.errors import ConfigError, InputError

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "corpus.yaml"


@dataclass(frozen=True)
class Source:
    """One package (or local folder) of candidate images.

    `globs` are matched (fnmatch, `*` crosses `/`) against paths relative to `root`
    inside the extracted package; `name_regex`, when given, names an image by the
    `-`-joined groups of its match (several files with one name are resolutions of one
    image: the largest is kept), otherwise the name is the relative path without suffix.
    """

    name: str
    kind: Literal["deb", "pypi", "dir"]
    package: str
    version: str
    licence: str
    root: str = ""
    globs: tuple[str, ...] = ("*",)
    exclude_globs: tuple[str, ...] = ()
    name_regex: str | None = None
    path: str | None = None  # kind == "dir": the folder (relative to the config file)
    wheel: str | None = None  # kind == "pypi": the exact wheel file name (pins the platform)
    # globs (relative to the extracted package) of Qt resource bundles (.rcc) to expand,
    # each into a folder `<bundle>.d/` beside it, before the candidates are listed
    qt_resources: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in ("deb", "pypi", "dir"):
            raise ConfigError(f"corpus source {self.name!r}: kind must be deb, pypi or dir, not {self.kind!r}")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.name):
            raise ConfigError(f"corpus source name {self.name!r}: use letters, digits, '.', '_' or '-'")
        if self.kind == "dir" and not self.path:
            raise ConfigError(f"corpus source {self.name!r}: kind dir needs a path")


@dataclass(frozen=True)
class FilterRule:
    """Thresholds of the photograph test (see the module docstring for the rule)."""

    min_short_side: int = 256
    max_short_side: int = 1080
    max_transparent_fraction: float = 0.001
    min_colourfulness: float = 4.0
    min_unique_ratio: float = 0.05
    flat_block_std: float = 0.6
    max_flat_fraction: float = 0.25
    edge_threshold: float = 10.0
    min_edge_fraction: float = 0.03
    duplicate_correlation: float = 0.97


@dataclass(frozen=True)
class CorpusConfig:
    sources: tuple[Source, ...]
    rule: FilterRule = field(default_factory=FilterRule)
    validation: tuple[str, ...] = ()  # "<source>__<name>" ids
    include: dict[str, str] = field(default_factory=dict)  # id -> why it is a photo
    exclude: dict[str, str] = field(default_factory=dict)  # id -> why it is not


def load_config(path: str | Path) -> CorpusConfig:
    """Read `configs/corpus.yaml`; `dir` source paths are resolved against its folder."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise InputError(f"corpus config {path} not found: pass --sources configs/corpus.yaml") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"corpus config {path} is not valid YAML: {exc}".splitlines()[0]) from None
    except (OSError, UnicodeDecodeError) as exc:  # a folder, unreadable, or not text
        raise ConfigError(f"cannot read corpus config {path}: {exc}") from None
    if not isinstance(raw, dict) or "sources" not in raw:
        raise ConfigError(f"corpus config {path}: needs a 'sources' list")
    known = {"sources", "rule", "validation", "include", "exclude", "notes"}
    if unknown := set(raw) - known:
        raise ConfigError(f"corpus config {path}: unknown keys {sorted(unknown)}; allowed {sorted(known)}")
    sources = []
    for entry in raw["sources"]:
        entry = dict(entry)
        try:
            for key in ("globs", "exclude_globs", "qt_resources"):
                if key in entry:
                    entry[key] = tuple(entry[key])
            entry["version"] = str(entry.get("version", "local"))
            entry.setdefault("package", entry.get("name"))
            if entry.get("kind") == "dir":
                entry["path"] = str((path.parent / entry["path"]).resolve())
            entry.pop("notes", None)
            sources.append(Source(**entry))
        except TypeError as exc:
            raise ConfigError(f"corpus config {path}: source {entry.get('name')!r}: {exc}") from None
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise ConfigError(f"corpus config {path}: source names must be unique, got {names}")
    try:
        rule = FilterRule(**(raw.get("rule") or {}))
    except TypeError as exc:
        raise ConfigError(f"corpus config {path}: rule: {exc}") from None
    return CorpusConfig(
        sources=tuple(sources),
        rule=rule,
        validation=tuple(raw.get("validation") or ()),
        include={str(k): str(v) for k, v in (raw.get("include") or {}).items()},
        exclude={str(k): str(v) for k, v in (raw.get("exclude") or {}).items()},
    )
