"""Upscaling methods, one module per paper, all with `diffsr.upscale`'s signature.

`METHODS` maps a model card's `method` (default "diffsr") to the function; the
`Upscaler` picks it, so a new method is a new module here plus one line below.
"""
from __future__ import annotations

from vsr.methods import diffsr

METHODS = {"diffsr": diffsr.upscale}
DEFAULT_METHOD = "diffsr"

__all__ = ["DEFAULT_METHOD", "METHODS", "diffsr"]
