"""Tiled optimization (nst_fast.tiling, Options.tile): the grid, the seamless blend, and tiled runs."""

from __future__ import annotations

import pytest
import torch

from nst_fast import Options, Stylizer
from nst_fast.cli import main
from nst_fast.errors import OptionsError
from nst_fast.tiling import Tile, blend_weights, paste, tile_grid


@pytest.mark.parametrize(
    ("height", "width", "tile", "overlap"),
    [(100, 300, 128, 32), (1536, 2048, 512, 64), (97, 97, 40, 8), (50, 60, 64, 16)],
)
def test_grid_covers_the_image_with_overlapping_tiles(height, width, tile, overlap):
    grid = tile_grid(height, width, tile, overlap)
    covered = torch.zeros(height, width, dtype=torch.int32)
    for t in grid:
        assert t.height <= tile and t.width <= tile
        assert t.top + t.height <= height and t.left + t.width <= width
        covered[t.box] += 1
        assert t.blend_top == 0 if t.top == 0 else t.blend_top >= overlap
        assert t.blend_left == 0 if t.left == 0 else t.blend_left >= overlap
    assert covered.min() >= 1
    if height <= tile and width <= tile:
        assert grid == [Tile(0, 0, height, width)]


def test_grid_refuses_an_overlap_of_half_a_tile():
    with pytest.raises(ValueError, match="overlap"):
        tile_grid(100, 100, 64, 32)


def test_blend_weights_rise_from_zero_across_the_overlaps_only():
    w = blend_weights(Tile(10, 20, 30, 40, blend_top=8, blend_left=6))[0, 0]
    assert w.shape == (30, 40)
    assert w[0, 0] < 0.01 and torch.all(w[8:, 6:] == 1)
    assert torch.all(w[1:8, 10] > w[:7, 10]) and torch.all(w[20, 1:6] > w[20, :5])
    assert torch.all(blend_weights(Tile(0, 0, 5, 5)) == 1)


def test_pasting_one_image_tile_by_tile_rebuilds_it():
    # Every pixel is covered, the first cover has weight 1, and blends of equal values are that value:
    # tiles that agree leave no trace of the grid.
    image = torch.rand(1, 3, 70, 90)
    canvas = torch.rand(1, 3, 70, 90) + 5
    for t in tile_grid(70, 90, 32, 8):
        paste(canvas, t, image[(..., *t.box)], blend_weights(t))
    assert torch.allclose(canvas, image, atol=1e-6)


def test_tiles_that_disagree_blend_without_steps():
    # Each tile returns a different constant: the worst case for seams. Across the canvas no step
    # between neighbouring pixels may exceed what the smooth ramps themselves make (1.5 / overlap of
    # the largest difference, 1 here), also where a tile's edge meets the row above.
    from nst_fast.tiling import optimize_tiles

    values = iter(torch.rand(100, generator=torch.Generator().manual_seed(0)).tolist())
    canvas = torch.rand(1, 3, 160, 170)
    grid = tile_grid(160, 170, 64, 24)
    assert len({t.top for t in grid}) >= 3 and len({t.left for t in grid}) >= 3
    seen = []

    def work(tile, start, preview):
        seen.append(preview(torch.zeros_like(start)).shape)
        return torch.full_like(start, next(values))

    optimize_tiles(canvas, grid, work)
    assert seen == [canvas.shape] * len(grid)
    steps = max(canvas.diff(dim=3).abs().max(), canvas.diff(dim=2).abs().max())
    assert steps <= 1.5 / 24 + 1e-6, steps


def test_tile_options_are_validated():
    assert Options(tile=512).overlap == 64 and Options(tile=128).overlap == 32 and Options(tile=64).overlap == 16
    with pytest.raises(OptionsError, match="at least"):
        Options(tile=8)
    with pytest.raises(OptionsError, match="less than half"):
        Options(tile=64, tile_overlap=32)
    with pytest.raises(OptionsError, match="tile must be zero"):
        Options(tile=-1)


def test_a_tiled_run_reports_every_tile_and_blends_without_seams(tubingen, starry_night):
    from nst_fast.image import load_image, resize_longest

    content = resize_longest(load_image(tubingen), 128)  # 128×96
    stylizer = Stylizer(starry_night, size=128, pyramid_start=64, steps=20, pyramid_steps=10, tile=64)
    plan = stylizer.plan(content)
    assert [s.size for s in plan.scales] == [64, 128] and len(plan.scales[0].tiles) == 1
    assert len(plan.scales[1].tiles) == 6 and plan.total_steps == 20 + 10 * 6
    tiles = plan.scales[1].tiles
    seen = []
    out = stylizer.stylize_tensor(content, callback=lambda it: seen.append((it.step, it.steps, it.image.shape)))
    assert [s for s, _, _ in seen] == list(range(1, 81)) and {n for _, n, _ in seen} == {80}
    assert all(shape[-2:] == (96, 128) for _, _, shape in seen[20:]), "a tile's callback sees the whole canvas"
    assert out.shape == (1, 3, 96, 128) and torch.isfinite(out).all()
    # No seams: the step between neighbouring columns (rows) at the tiles' edges is no larger than
    # elsewhere in the image.
    for dim, edges in (
        (3, {t.left for t in tiles} | {t.left + t.width for t in tiles}),
        (2, {t.top for t in tiles} | {t.top + t.height for t in tiles}),
    ):
        steps = out.diff(dim=dim).abs().mean(dim=(0, 1, 5 - dim))
        at_edges = torch.stack([steps[e - 1] for e in edges if 0 < e < out.shape[dim]])
        assert at_edges.max() < 2 * steps.median(), (dim, at_edges, steps.median())


def test_tiles_lower_the_memory_estimate_and_the_cli_suggests_them(images, tmp_path, capsys, monkeypatch):
    import nst_fast.memory

    content, style = images
    stylizer = Stylizer(style, size=256)
    tiled, whole = stylizer.plan(content, tile=64).estimate, stylizer.plan(content).estimate
    assert tiled.total - tiled.weights < (whole.total - whole.weights) / 4  # 64² of 256×192 px at a time
    whole = whole.total
    monkeypatch.setattr(nst_fast.memory, "available_bytes", lambda device: whole // 2)
    code = main([content, style, "-o", tmp_path / "out.png", "--size", "256", "--checkpoint", "off", "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "--tile" in err and "--size" in err and "MiB is free on cpu" in err, err
    assert not (tmp_path / "out.png").exists()
    code = main(
        [
            content,
            style,
            "-o",
            tmp_path / "out.png",
            "--size",
            "96",
            "--pyramid-start",
            "48",
            "--tile",
            "64",
            "--steps",
            "2",
            "-q",
        ]
    )
    assert code == 0 and (tmp_path / "out.png").is_file()
