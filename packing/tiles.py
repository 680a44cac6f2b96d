"""InternVL 2.5 dynamic high resolution (InternVL 2.5, sec. 3.1): how many 448px tiles an image gets.

Candidate grids are all (cols, rows) with n_min <= cols*rows <= n_max. The grid whose
aspect ratio is closest to the image's wins; on a tie the larger grid wins only when the
image's area exceeds half of that grid's pixel area (so small images are not blown up).
A grid of more than one tile gets one extra thumbnail tile of the whole image.
"""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=256)
def candidate_grids(n_min: int, n_max: int) -> tuple[tuple[int, int], ...]:
    """All (cols, rows) grids with n_min <= cols*rows <= n_max, smallest tile count first."""
    grids = {(c, r) for n in range(n_min, n_max + 1) for c in range(1, n + 1) for r in range(1, n + 1)
             if n_min <= c * r <= n_max}
    return tuple(sorted(grids, key=lambda g: (g[0] * g[1], g[0])))


def choose_grid(width: int, height: int, n_max: int, n_min: int = 1, tile_size: int = 448) -> tuple[int, int]:
    """The (cols, rows) grid InternVL's rule picks for a width x height image."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if not 1 <= n_min <= n_max:
        raise ValueError(f"need 1 <= n_min <= n_max, got n_min={n_min}, n_max={n_max}")
    aspect = width / height
    area = width * height
    best, best_diff = (1, 1), float("inf")
    for cols, rows in candidate_grids(n_min, n_max):
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and area > 0.5 * tile_size * tile_size * cols * rows:
            best = (cols, rows)
    return best


def tile_count(width: int, height: int, n_max: int, n_min: int = 1, tile_size: int = 448) -> int:
    """Tiles the ViT sees for one image: cols*rows, plus a thumbnail when that is more than one."""
    cols, rows = choose_grid(width, height, n_max, n_min, tile_size)
    n = cols * rows
    return n + 1 if n > 1 else n


def per_image_n_max(n_max: int, n_images: int) -> int:
    """Multi-image samples share the budget: n_max_i = max(1, floor(n_max / N))."""
    return max(1, n_max // max(1, n_images))


def split_into_tiles(image, cols: int, rows: int, tile_size: int = 448, thumbnail: bool = True) -> list:
    """Cut a PIL image into cols x rows tiles (+ thumbnail), as the vision encoder sees it."""
    resized = image.convert("RGB").resize((tile_size * cols, tile_size * rows))
    tiles = [resized.crop((c * tile_size, r * tile_size, (c + 1) * tile_size, (r + 1) * tile_size))
             for r in range(rows) for c in range(cols)]
    if thumbnail and len(tiles) > 1:
        tiles.append(image.convert("RGB").resize((tile_size, tile_size)))
    return tiles
