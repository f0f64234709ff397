"""Tiles: optimizing an image too large for memory one overlapping piece at a time.

A scale whose longest side exceeds ``Options.tile`` is cut into a grid of the fewest overlapping tiles
of at most ``tile`` px a side, each as small as that allows. Each tile is optimized in turn, in raster
order, against the *global* style targets (the whole style image's Gram matrices, which are
per-position averages and so mean the same for a tile as for the whole image) and its own piece of the
content, starting from the current canvas — so that its overlap with the tiles above and to the left
starts from their results. It is written back with weights that rise smoothly from 0 to 1 across those
overlaps — first into its row's band, across its left overlap, then the band into the canvas, across
its top overlap — which makes the canvas continuous at every tile edge: no seams. The coarser pyramid
scales, optimized whole, give the tiles a common starting image.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Tile:
    """One tile: its box in the image and the widths of its overlaps with earlier tiles (above, left)."""

    top: int
    left: int
    height: int
    width: int
    blend_top: int = 0
    blend_left: int = 0

    @property
    def box(self) -> tuple[slice, slice]:
        return slice(self.top, self.top + self.height), slice(self.left, self.left + self.width)


def _split(length: int, tile: int, overlap: int) -> tuple[int, list[int]]:
    """(size, starts) of the fewest tiles of at most ``tile`` px that cover ``length`` px overlapping by
    at least ``overlap``: as small as that allows (less work than ``tile``-sized ones overlapping by
    more), evenly spaced."""
    if length <= tile:
        return length, [0]
    n = math.ceil((length - overlap) / (tile - overlap))
    size = math.ceil((length + (n - 1) * overlap) / n)  # n·size ≥ length + (n−1)·overlap
    return size, [round(i * (length - size) / (n - 1)) for i in range(n)]


def tile_grid(height: int, width: int, tile: int, overlap: int) -> list[Tile]:
    """The tiles of a ``height``×``width`` image in raster order (one tile when it fits in ``tile``);
    all of one size, so that a compiled network sees one shape."""
    if tile < 1 or not 0 <= 2 * overlap < tile:
        raise ValueError(f"need tile > 2 × overlap ≥ 0, got tile {tile} and overlap {overlap}")
    (th, ys), (tw, xs) = _split(height, tile, overlap), _split(width, tile, overlap)
    return [
        Tile(y, x, th, tw, ys[i - 1] + th - y if i else 0, xs[j - 1] + tw - x if j else 0)
        for i, y in enumerate(ys)
        for j, x in enumerate(xs)
    ]


def _ramp(length: int, rise: int, device: torch.device) -> torch.Tensor:
    """1 everywhere except the first ``rise`` entries, which rise smoothly (smoothstep) from near 0."""
    ramp = torch.ones(length, device=device)
    if rise:
        t = (torch.arange(rise, device=device, dtype=torch.float32) + 0.5) / rise
        ramp[:rise] = t * t * (3 - 2 * t)
    return ramp


def blend_weights(tile: Tile, device: torch.device | str = "cpu") -> torch.Tensor:
    """1×1×h×w weights of a tile's pixels against the canvas when it is written back."""
    rows = _ramp(tile.height, tile.blend_top, torch.device(device))
    cols = _ramp(tile.width, tile.blend_left, torch.device(device))
    return (rows[:, None] * cols[None, :])[None, None]


def paste(canvas: torch.Tensor, tile: Tile, pixels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Blend ``pixels`` into ``canvas`` (in place) at ``tile``'s box; returns ``canvas``."""
    region = canvas[(..., *tile.box)]
    region.mul_(1 - weights).add_(pixels.to(region.dtype) * weights)
    return canvas


Work = Callable[[Tile, torch.Tensor, Callable[[torch.Tensor], torch.Tensor]], torch.Tensor]


def optimize_tiles(canvas: torch.Tensor, tiles: list[Tile], work: Work) -> torch.Tensor:
    """Run ``work(tile, start, preview)`` for each tile and blend its result into ``canvas`` (in place).

    ``start`` is the tile's starting pixels; ``preview(pixels)`` returns the whole canvas as it would
    be with ``pixels`` as the tile's result (for callbacks). Blending is in two stages, so that both are
    one-dimensional: the tiles of a row go into a copy of the row's band with weights rising across
    their left overlaps only, and the band goes into the canvas with weights rising across its top
    overlap only. (One stage with the product of the two ramps leaves a step where a tile's right edge
    meets the row above inside the top overlap.)
    """
    for row in _rows(tiles):
        first = row[0]
        band = Tile(first.top, 0, first.height, canvas.shape[-1], blend_top=first.blend_top)
        band_weights = blend_weights(band, canvas.device)
        strip = canvas[(..., *band.box)].clone()
        for tile in row:
            local = Tile(0, tile.left, tile.height, tile.width, blend_left=tile.blend_left)
            weights = blend_weights(local, canvas.device)

            def preview(pixels: torch.Tensor, local=local, weights=weights) -> torch.Tensor:
                band_now = paste(strip.clone(), local, pixels.detach().clamp(0, 1), weights)
                return paste(canvas.clone(), band, band_now, band_weights)

            pixels = work(tile, strip[(..., *local.box)].clone(), preview)
            paste(strip, local, pixels, weights)
        paste(canvas, band, strip, band_weights)
    return canvas


def _rows(tiles: list[Tile]) -> list[list[Tile]]:
    rows: dict[int, list[Tile]] = {}
    for tile in tiles:
        rows.setdefault(tile.top, []).append(tile)
    return [rows[top] for top in sorted(rows)]
