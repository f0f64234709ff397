"""The command's options for real use: pyramid, batches, intermediate saves, traces, colours, formats,
limits — each on small images."""

from __future__ import annotations

import os

import json

import numpy as np
import pytest
import torch
from PIL import Image

import nst_fast
from nst_fast import Options, Stylizer
from nst_fast.cli import main
from nst_fast.color import rgb_to_ycbcr
from nst_fast.plan import schedule

TINY = ["--size", "40", "--steps", "2", "-q"]


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_pyramid_scales_and_steps():
    assert schedule(Options(size=2048, steps=100)) == ((512, 100), (1024, 50), (2048, 50))
    assert [size for size, _ in schedule(Options(size=1500, pyramid_start=512))] == [375, 750, 1500]
    assert schedule(Options(size=512, steps=120)) == ((512, 120),) and schedule(
        Options(size=4096, pyramid_start=0)
    ) == ((4096, 120),)
    assert schedule(Options(size=2048, pyramid_steps=7))[2] == (2048, 7)
    assert schedule(Options(size=512)) == ((512, 120),) and schedule(Options(size=1024)) == ((512, 120), (1024, 60))


def test_pyramid_run_reports_every_step_and_ends_at_full_size():
    seen = []
    stylizer = Stylizer(torch.rand(3, 64, 64), size=64, pyramid_start=32, steps=4, pyramid_steps=2)
    assert sorted(stylizer.style_targets_by_size) == [32, 64]
    out = stylizer.stylize_tensor(torch.rand(3, 48, 64), callback=seen.append)
    assert out.shape == (1, 3, 48, 64)
    assert [it.step for it in seen] == [1, 2, 3, 4, 5, 6] and {it.steps for it in seen} == {6}
    assert [tuple(it.image.shape[-2:]) for it in seen] == [(24, 32)] * 4 + [(48, 64)] * 2
    assert all(seen[i].elapsed <= seen[i + 1].elapsed for i in range(5))


def test_save_every_and_log_json(images, tmp_path, capsys):
    content, style = images
    code, _, _ = run(
        [content, style, "-o", tmp_path / "out.png", "--save-every", "1", "--log-json", tmp_path / "trace.json", *TINY],
        capsys,
    )
    assert code == 0
    assert (tmp_path / "out.step00001.png").is_file() and (tmp_path / "out.step00002.png").is_file()
    trace = json.loads((tmp_path / "trace.json").read_text())["iterations"]
    assert [r["step"] for r in trace] == [1, 2]
    assert all(r["loss"] > 0 and "style" in r and "content" in r and r["elapsed"] >= 0 for r in trace)


def test_preserve_colors_keeps_the_content_chroma(tubingen, starry_night):
    content = nst_fast.image.resize_longest(nst_fast.image.load_image(tubingen), 48)
    out = Stylizer(starry_night, size=48, steps=8, preserve_colors=True).stylize_tensor(content)
    plain = Stylizer(starry_night, size=48, steps=8).stylize_tensor(content)
    chroma = rgb_to_ycbcr(content)[:, 1:]
    # Clamping to [0, 1] can move a few saturated pixels; the rest keep the content's chroma.
    assert (rgb_to_ycbcr(out)[:, 1:] - chroma).abs().median() < 0.01
    assert (rgb_to_ycbcr(plain)[:, 1:] - chroma).abs().median() > 0.03


def test_init_from_an_image_file(images, tmp_path):
    content, style = images
    seen = []
    Stylizer(style, size=40, steps=1, init=str(style)).stylize(content, callback=seen.append)
    first = seen[0].image
    assert first.shape[-2:] == (30, 40)
    with pytest.raises(nst_fast.OptionsError, match="image file"):
        Options(init=str(tmp_path / "missing.png"))


def test_deterministic_runs_repeat(images):
    content, style = images
    a = Stylizer(style, size=40, steps=3, deterministic=True, init="content+noise").stylize_tensor(content)
    b = Stylizer(style, size=40, steps=3, deterministic=True, init="content+noise").stylize_tensor(content)
    assert torch.equal(a, b) and not torch.are_deterministic_algorithms_enabled()


def test_formats_quality_and_srgb_profile(images, tmp_path, capsys):
    content, style = images
    for name, extra in (
        ("low.jpg", ["--quality", "10"]),
        ("high.jpg", ["--quality", "95"]),
        ("out.webp", []),
        ("out.tif", []),
        ("out.png", []),
    ):
        assert run([content, style, "-o", tmp_path / name, *extra, *TINY], capsys)[0] == 0
    assert (tmp_path / "low.jpg").stat().st_size < (tmp_path / "high.jpg").stat().st_size
    for name in ("high.jpg", "out.webp", "out.tif", "out.png"):
        with Image.open(tmp_path / name) as im:
            assert im.size == (40, 30) and im.info.get("icc_profile"), name
    assert run([content, style, "-o", tmp_path / "x.jpg", "--quality", "0", *TINY], capsys)[0] == 2


def test_decompression_bomb_limit_and_tiny_images(images, tmp_path, capsys):
    content, style = images
    code, _, err = run([content, style, "-o", tmp_path / "out.png", "--max-pixels", "1000", *TINY], capsys)
    assert code == 2 and "image too large" in err and "--max-pixels" in err and err.count("\n") == 1
    Image.new("RGB", (1, 1)).save(tmp_path / "dot.png")
    code, _, err = run([tmp_path / "dot.png", style, "-o", tmp_path / "out.png", *TINY], capsys)
    assert code == 2 and "too small" in err and not (tmp_path / "out.png").exists()


def test_batch_directory_reports_a_bad_file_and_does_the_rest(images, tmp_path, capsys):
    content, style = images
    photos, styled = tmp_path / "photos", tmp_path / "styled"
    photos.mkdir()
    styled.mkdir()
    for name in ("a.png", "b.jpg"):
        Image.open(content).save(photos / name)
    (photos / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (photos / "notes.txt").write_text("not an image")
    code, _, err = run([photos, style, "-o", styled, "--format", "jpg", *TINY], capsys)
    assert code == 3  # some failed, the rest written: as with --ray
    assert sorted(p.name for p in styled.iterdir()) == ["a.jpg", "b.jpg"]
    assert "broken.png" in err and err.count("error") == 1
    code, _, _ = run([str(photos / "*.jpg"), style, "-o", styled, *TINY], capsys)
    assert code == 0 and (styled / "b.png").is_file()
    (tmp_path / "a-file").write_text("")
    code, _, err = run([photos, style, "-o", tmp_path / "a-file", *TINY], capsys)
    assert code == 2 and "-o must name a directory" in err
    # -o is made where it does not exist; a batch refused before any work leaves none of it behind.
    code, _, err = run(
        [photos, style, "-o", tmp_path / "new" / "deeper", "--format", "jpg", "--bit-depth", "16"], capsys
    )
    assert code == 2 and not (tmp_path / "new").exists()
    code, _, _ = run([str(photos / "*.jpg"), style, "-o", tmp_path / "new" / "deeper", *TINY], capsys)
    assert code == 0 and (tmp_path / "new" / "deeper" / "b.png").is_file()


def test_outputs_never_replace_the_inputs(images, tmp_path, capsys, monkeypatch):
    """-o the content directory, with the outputs' default png format, replaced each photo by its stylized
    version; refused before any work, as is an output that is the style or the initial image."""
    content, style = images
    same = tmp_path / "same"
    same.mkdir()
    Image.open(content).save(same / "b.png")
    Image.open(content).save(same / "c.jpg")
    before = {p.name: p.read_bytes() for p in same.iterdir()}
    code, _, err = run([same, style, "-o", same, *TINY], capsys)
    assert code == 2 and err.count("\n") == 1 and "b.png" in err and "overwrite an input" in err, err
    assert {p.name: p.read_bytes() for p in same.iterdir()} == before
    code, _, err = run([str(same / "*.png"), style, "-o", tmp_path / "same/../same", *TINY], capsys)
    assert code == 2 and "b.png" in err and "overwrite an input" in err
    assert run([same, same / "b.png", "-o", tmp_path, "--format", "png", *TINY], capsys)[0] == 0  # no clash
    monkeypatch.chdir(tmp_path)
    for argv in ([content, style, "-o", style], [content, style, "-o", content], [content.name, style, "-o", content]):
        code, _, err = run([*argv, *TINY], capsys)
        assert code == 2 and err.count("\n") == 1 and "overwrite an input" in err, err
    code, _, err = run([content, style, "-o", same / "c.jpg", "--init", same / "c.jpg", *TINY], capsys)
    assert code == 2 and "c.jpg" in err and "overwrite an input" in err
    os.link(same / "b.png", tmp_path / "hard.png")  # another name of the same file
    code, _, err = run([same / "b.png", style, "-o", tmp_path / "hard.png", *TINY], capsys)
    assert code == 2 and "hard.png" in err and "overwrite an input" in err
    assert {p.name: p.read_bytes() for p in same.iterdir()} == before
    monkeypatch.setenv("HOME", str(tmp_path))  # a quoted ~ names the home directory, for a directory too
    (tmp_path / "out").mkdir()
    assert run(["~/same", style, "-o", tmp_path / "out", *TINY], capsys)[0] == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["b.png", "c.png"]


def test_init_from_a_file_under_the_home_directory(images, tmp_path, capsys, monkeypatch):
    """Options accepted '~/gray.png' (it expands ~) but loading it did not: "image not found"."""
    content, style = images
    monkeypatch.setenv("HOME", str(tmp_path))
    Image.new("RGB", (64, 48), (128, 128, 128)).save(tmp_path / "gray.png")
    code, _, err = run([content, style, "-o", tmp_path / "out.png", "--init", "~/gray.png", *TINY], capsys)
    assert code == 0 and err == ""
    seen = []
    Stylizer(style, size=40, steps=1, init="~/gray.png").stylize(content, callback=seen.append)
    assert seen[0].image.shape[-2:] == (30, 40)


def test_memory_that_cannot_fit_is_a_clear_error(images, tmp_path, capsys, monkeypatch):
    import nst_fast.memory

    monkeypatch.setattr(nst_fast.memory, "available_bytes", lambda device: 1024)
    content, style = images
    code, _, err = run([content, style, "-o", tmp_path / "out.png", *TINY], capsys)
    assert code == 2 and err.count("\n") == 1 and "1 KiB is free" in err and "--size" in err
    assert not (tmp_path / "out.png").exists()


def test_a_run_that_cannot_fit_is_refused_before_the_style_targets(images, tmp_path, capsys, monkeypatch):
    """A single run's plan is checked from the content's shape before the Stylizer computes the style's
    targets at every scale (a user waited 125 s, 13 GB, for a refusal at --size 6000)."""
    import nst_fast.cli.stylize
    import nst_fast.memory

    monkeypatch.setattr(nst_fast.memory, "available_bytes", lambda device: 64 * 2**20)

    def no_stylizer(*args, **kwargs):
        raise AssertionError("the Stylizer was built for a run that cannot fit")

    monkeypatch.setattr(nst_fast.cli.stylize, "Stylizer", no_stylizer)
    content, style = images
    code, _, err = run([content, style, "-o", tmp_path / "out.png", "--size", "2048", "--steps", "1"], capsys)
    assert code == 2 and err.count("\n") == 1 and "64 MiB is free" in err and "--size" in err


def test_a_batch_that_cannot_fit_is_refused_before_the_style_targets(images, tmp_path, capsys, monkeypatch):
    """A batch's plans are checked from its files' headers before the Stylizer is built: where none fits,
    the first one's error, at once; where one does, the batch goes on."""
    import nst_fast.cli.stylize
    import nst_fast.memory

    content, style = images
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("a.png", "b.png"):
        Image.open(content).save(photos / name)
    (photos / "c.png").write_bytes(b"not an image")  # skipped by the check, reported by its own run
    monkeypatch.setattr(nst_fast.memory, "available_bytes", lambda device: 64 * 2**20)
    built = []
    monkeypatch.setattr(nst_fast.cli.stylize, "Stylizer", lambda *a, **k: built.append(1) / 0)
    code, _, err = run([photos, style, "-o", tmp_path / "out", "--size", "2048", "--steps", "1"], capsys)
    assert code == 2 and err.count("\n") == 1 and "64 MiB is free" in err and "--size" in err and not built
    assert not (tmp_path / "out").exists()  # the -o it made for the batch is gone with the refusal
    code, _, _ = run([photos, style, "-o", tmp_path / "out", *TINY], capsys)
    assert built  # this one fits: the batch goes on to build its Stylizer (here: the stub's error)


def test_ctrl_c_exits_130_and_keeps_the_output(images, tmp_path, capsys, monkeypatch):
    content, style = images
    out = tmp_path / "out.png"
    out.write_bytes(b"earlier result")

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Stylizer, "stylize_tensor", interrupted)
    code, _, err = run([content, style, "-o", out, *TINY], capsys)
    assert code == 130 and "interrupted" in err and out.read_bytes() == b"earlier result"
    assert np.array_equal(sorted(p.name for p in tmp_path.iterdir()), ["content.png", "out.png", "style.png"])


def test_sixteen_bit_tiff_output(images, tmp_path, capsys):
    import tifffile

    content, style = images
    code, _, _ = run([content, style, "-o", tmp_path / "out.tif", "--bit-depth", "16", *TINY], capsys)
    assert code == 0
    pixels = tifffile.imread(tmp_path / "out.tif")
    assert pixels.dtype == np.uint16 and pixels.shape == (30, 40, 3)
    assert len(np.unique(pixels)) > 256, "16-bit values, not 8-bit ones scaled"
    with Image.open(tmp_path / "out.tif") as im:
        assert "icc_profile" in im.info
    loaded = nst_fast.image.load_image(tmp_path / "out.tif")
    assert np.allclose(loaded[0].permute(1, 2, 0).numpy(), pixels / 65535.0, atol=1e-6)


def test_sixteen_bits_need_a_tiff(images, tmp_path, capsys):
    content, style = images
    out = tmp_path / "out.png"
    out.write_bytes(b"earlier")
    code, _, err = run([content, style, "-o", out, "--bit-depth", "16", *TINY], capsys)
    assert code == 2 and "16-bit output is written as TIFF" in err and out.read_bytes() == b"earlier"
