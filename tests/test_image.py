"""Image loading, resizing and atomic saving."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nst_fast.errors import ImageError
from nst_fast.image import check_output_path, load_image, read_image, resize_longest, save_image, tensor_to_pil


def test_load_from_path_pil_and_tensor(tmp_path):
    pil = Image.new("RGB", (5, 3), (255, 0, 128))
    pil.save(tmp_path / "a.png")
    for source in (
        tmp_path / "a.png",
        str(tmp_path / "a.png"),
        pil,
        torch.tensor([1.0, 0.0, 128 / 255]).view(3, 1, 1).expand(3, 3, 5),
    ):
        x = load_image(source)
        assert x.shape == (1, 3, 3, 5) and x.dtype == torch.float32
        assert torch.allclose(x[0, :, 1, 2], torch.tensor([1.0, 0.0, 128 / 255]), atol=1e-6)


def test_exif_orientation_is_applied(tmp_path):
    pil = Image.new("RGB", (6, 2), (10, 20, 30))
    exif = pil.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise when displayed
    pil.save(tmp_path / "rotated.jpg", exif=exif)
    assert load_image(tmp_path / "rotated.jpg").shape[-2:] == (6, 2)


def test_greyscale_and_alpha_become_rgb(tmp_path):
    Image.new("L", (4, 4), 200).save(tmp_path / "grey.png")
    Image.new("RGBA", (4, 4), (0, 255, 0, 128)).save(tmp_path / "alpha.png")
    assert torch.allclose(load_image(tmp_path / "grey.png"), torch.full((1, 3, 4, 4), 200 / 255))
    assert load_image(tmp_path / "alpha.png").shape == (1, 3, 4, 4)


def test_deep_float_and_transparent_images(tmp_path):
    Image.fromarray(np.full((3, 4), 32768, dtype=np.uint16)).save(tmp_path / "deep.png")
    assert torch.allclose(load_image(tmp_path / "deep.png"), torch.full((1, 3, 3, 4), 32768 / 65535))
    assert torch.allclose(
        load_image(Image.fromarray(np.full((2, 2), 0.25, dtype=np.float32))), torch.full((1, 3, 2, 2), 0.25)
    )
    clear = Image.new("RGBA", (2, 2), (0, 0, 0, 0))  # fully transparent black: white after compositing
    assert torch.allclose(load_image(clear), torch.ones(1, 3, 2, 2))
    half = Image.new("RGBA", (2, 2), (0, 0, 0, 128))
    assert torch.allclose(load_image(half), torch.full((1, 3, 2, 2), 1 - 128 / 255))


def test_bad_inputs(tmp_path):
    with pytest.raises(ImageError, match="not found"):
        load_image(tmp_path / "nope.jpg")
    (tmp_path / "text.jpg").write_text("hello")
    with pytest.raises(ImageError, match="not an image"):
        load_image(tmp_path / "text.jpg")
    with pytest.raises(ImageError, match="3×H×W"):
        load_image(torch.rand(4, 5, 5))
    with pytest.raises(ImageError, match="NaN"):
        load_image(torch.full((3, 2, 2), float("nan")))
    with pytest.raises(ImageError, match="directory"):
        load_image(tmp_path)


def test_a_leading_tilde_is_the_home_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    Image.new("RGB", (8, 6), (10, 20, 30)).save(tmp_path / "gray.png")
    for source in ("~/gray.png", Path("~/gray.png")):
        assert load_image(source).shape == (1, 3, 6, 8)
        assert read_image(source).size == (8, 6)
    with pytest.raises(ImageError, match="image not found"):
        load_image("~/missing.png")


def test_resize_longest_keeps_aspect():
    x = torch.rand(1, 3, 300, 200)
    assert resize_longest(x, 150).shape == (1, 3, 150, 100)
    assert resize_longest(x, 600).shape == (1, 3, 600, 400)
    assert resize_longest(x, 300) is x
    y = resize_longest(x, 37)
    assert y.min() >= 0 and y.max() <= 1


def test_round_trip_and_atomic_save(tmp_path):
    x = torch.rand(1, 3, 7, 9)
    path = save_image(x, tmp_path / "out.png")
    back = load_image(path)
    assert (back - x).abs().max() <= 0.5 / 255 + 1e-6
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"], "no temporary file left behind"
    umask = os.umask(0o022)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask, "the mode a plain open() would give"
    path.chmod(0o640)
    save_image(x, path)
    assert path.stat().st_mode & 0o777 == 0o640, "a replaced file keeps its mode"
    before = path.read_bytes()

    class Broken(Image.Image):
        def save(self, *args, **kwargs):
            raise OSError("disk full")

    broken = tensor_to_pil(x)
    broken.__class__ = Broken
    with pytest.raises(OSError, match="disk full"):
        save_image(broken, path)
    assert path.read_bytes() == before, "a failed save must not touch the existing file"
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]


def test_output_path_checks(tmp_path):
    with pytest.raises(ImageError, match="extension"):
        check_output_path(tmp_path / "out.xyz")
    with pytest.raises(ImageError, match="directory does not exist"):
        check_output_path(tmp_path / "missing" / "out.png")
    assert check_output_path(tmp_path / "out.jpg").name == "out.jpg"


def test_saved_files_carry_the_same_profile_bytes_in_every_process():
    """LittleCMS stamps the current time into a profile's header: two runs wrote files that differed in
    those bytes. The embedded profile is the same sRGB profile with a fixed date."""
    import io
    import subprocess
    import sys

    from PIL import ImageCms

    from nst_fast.image import PROFILE_DATE, srgb_profile

    profile = srgb_profile()
    assert (
        profile[36:40] == b"acsp"
        and tuple(int.from_bytes(profile[24 + 2 * i : 26 + 2 * i], "big") for i in range(6)) == PROFILE_DATE
    )
    assert "sRGB" in ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(io.BytesIO(profile)))
    code = "import sys; from nst_fast.image import srgb_profile; sys.stdout.write(srgb_profile().hex())"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert bytes.fromhex(other.stdout) == profile
