"""Moved to `vsr.core.tiling`; this name keeps old imports working."""
from vsr.core.tiling import (  # noqa: F401
    Tile,
    TiledDenoiser,
    apply_tiled,
    blend_weights,
    pad_to_min,
    plan_tiles,
    tile_window,
)
