"""The InternVL 2.5 tile rule (InternVL 2.5, sec. 3.1) on several aspect ratios."""

import pytest

from packing.tiles import candidate_grids, choose_grid, per_image_n_max, split_into_tiles, tile_count


@pytest.mark.parametrize("w,h,n_max,grid,tiles", [
    (448, 448, 12, (1, 1), 1),       # square and small: 2x2 would blow it up (area < half of 4 tiles)
    (800, 800, 12, (2, 2), 5),       # square, area > half of 2x2 (401k px) but < half of 3x3 (903k px)
    (1400, 1400, 12, (3, 3), 10),    # large square: 3x3 + thumbnail
    (1600, 400, 12, (4, 1), 5),      # 4:1 exact
    (400, 1600, 12, (1, 4), 5),      # 1:4 exact
    (1024, 768, 12, (4, 3), 13),     # 4:3 exact needs 12 tiles
    (1024, 768, 6, (3, 2), 7),       # ... capped at 6: 3:2 is the closest ratio
    (2000, 1000, 12, (4, 2), 9),     # 2:1 ties 2x1 / 4x2; 2 Mpx > half of 4x2 area (803k) -> larger grid
    (900, 450, 12, (2, 1), 3),       # 2:1 small: 405k px < half of 4x2 -> stays 2x1
    (300, 200, 12, (3, 2), 7),       # 3:2 exact, first hit (a small image still matches ratio)
    (1000, 100, 12, (10, 1), 11),    # 10:1 panorama
    (448, 448, 1, (1, 1), 1),        # video frames: n_max 1
])
def test_tile_rule(w, h, n_max, grid, tiles):
    assert choose_grid(w, h, n_max) == grid
    assert tile_count(w, h, n_max) == tiles


def test_candidates_respect_bounds_and_multi_image_share():
    grids = candidate_grids(1, 12)
    assert all(1 <= c * r <= 12 for c, r in grids) and (12, 1) in grids and (4, 4) not in grids
    assert per_image_n_max(24, 5) == 4 and per_image_n_max(6, 10) == 1


def test_split_into_tiles_sizes():
    from PIL import Image

    tiles = split_into_tiles(Image.new("RGB", (1600, 400)), 4, 1)
    assert len(tiles) == 5 and all(t.size == (448, 448) for t in tiles)
    assert len(split_into_tiles(Image.new("RGB", (448, 448)), 1, 1)) == 1


def test_bad_sizes_raise():
    with pytest.raises(ValueError):
        choose_grid(0, 10, 12)
    with pytest.raises(ValueError):
        choose_grid(10, 10, 2, n_min=3)
