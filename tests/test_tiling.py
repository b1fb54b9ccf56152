import pytest
import torch

from vsr.tiling import apply_tiled, blend_weights, pad_to_min, plan_tiles, tile_window

SIZES = [(32, 32), (33, 47), (64, 100), (101, 77), (255, 257), (1080 // 4, 1920 // 4)]


@pytest.mark.parametrize("h,w", SIZES)
@pytest.mark.parametrize("tile,overlap", [(32, 8), (32, 16), (16, 0), (32, 0)])
def test_tile_grid_covers_every_pixel_with_the_overlap(h, w, tile, overlap):
    tiles = plan_tiles(h, w, tile, overlap)
    cover = torch.zeros(h, w, dtype=torch.int32)
    for y, x in tiles:
        assert 0 <= y <= h - tile and 0 <= x <= w - tile
        cover[y:y + tile, x:x + tile] += 1
    assert int(cover.min()) >= 1
    ys = sorted({y for y, _ in tiles})
    xs = sorted({x for _, x in tiles})
    for starts in (ys, xs):
        assert starts[0] == 0
        assert all(tile - (b - a) >= overlap for a, b in zip(starts, starts[1:]))  # neighbours overlap enough
    assert ys[-1] == h - tile and xs[-1] == w - tile


@pytest.mark.parametrize("h,w", SIZES)
def test_blend_weights_sum_to_one_everywhere(h, w):
    tile, overlap = 32, 12
    tiles = plan_tiles(h, w, tile, overlap)
    win = tile_window(tile, overlap)
    assert float(win.min()) > 0 and float(win.max()) == 1.0
    norm = blend_weights(h, w, tiles, win)
    total = torch.zeros(h, w, dtype=torch.float64)
    for y, x in tiles:
        total[y:y + tile, x:x + tile] += (win / norm[y:y + tile, x:x + tile]).double()
    torch.testing.assert_close(total, torch.ones(h, w, dtype=torch.float64), rtol=0, atol=1e-6)


def test_window_is_smooth_and_symmetric():
    win = tile_window(64, 16)
    torch.testing.assert_close(win, win.flip(0).flip(1))
    torch.testing.assert_close(win, win.T)
    row = win[32]
    assert (row[1:17] - row[:16] >= 0).all() and float((row[1:] - row[:-1]).abs().max()) < 0.1


@pytest.mark.parametrize("batch", [1, 3, 64])
def test_apply_tiled_of_a_pixelwise_function_equals_untiled(batch):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 71, 90, generator=g)
    f = lambda c: (torch.tanh(3 * c) - c**2, c * 2)  # noqa: E731 - any pixel-wise function
    a, b = apply_tiled(f, x, 32, 8, batch)
    ra, rb = f(x)
    torch.testing.assert_close(a, ra, rtol=0, atol=1e-6)
    torch.testing.assert_close(b, rb, rtol=0, atol=1e-6)


def test_pad_to_min_reflects_and_crops_back():
    x = torch.arange(2 * 3 * 5 * 7, dtype=torch.float32).reshape(2, 3, 5, 7)
    p, (h, w) = pad_to_min(x, 8, 8)
    assert p.shape == (2, 3, 8, 8) and (h, w) == (5, 7)
    assert torch.equal(p[..., :h, :w], x)
    tiny, _ = pad_to_min(x[..., :2, :3], 32, 32)  # too small to reflect that far: replicate
    assert tiny.shape[-2:] == (32, 32)
    same, hw = pad_to_min(x, 4, 4)
    assert same is x and hw == (5, 7)
    with pytest.raises(ValueError):
        plan_tiles(20, 40, 32, 8)
