from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from PIL import Image

SHARED_IMAGES = Path(os.environ["NST_FAST_IMAGES"])  # set by the project's root conftest.py


def shared_image(name: str) -> Path:
    """A photo or painting from ../shared/images; the test is skipped, with the reason, without it."""
    path = SHARED_IMAGES / name
    if not path.is_file():
        pytest.skip(
            f"{path} is absent: the shared test images live in ../shared/images beside the checkout "
            "(or set NST_FAST_IMAGES)"
        )
    return path


def skip_unless_native_bf16(precision: str = "bf16") -> None:
    """Skip a bf16 optimization where the CPU has no native bf16: oneDNN emulates it there (measured on
    an AVX2 EPYC: 7× a float32 iteration), so a test of a few bf16 runs takes minutes instead of seconds.
    What it checks of bf16's rounding is checked on the project's CPUs with native bf16."""
    from nst_fast.backends.precision import cpu_supports_bf16

    if precision == "bf16" and not torch.cuda.is_available() and not cpu_supports_bf16():
        pytest.skip("this CPU has no native bf16: the runs would take minutes (emulated), not give other results")


@pytest.fixture
def tubingen() -> Path:
    return shared_image("tubingen.jpg")


@pytest.fixture
def starry_night() -> Path:
    return shared_image("starry_night.jpg")


@pytest.fixture
def the_scream() -> Path:
    return shared_image("the_scream.jpg")


@pytest.fixture
def images(tmp_path):
    """A small random content and style image (64×48 PNG) in the test's temporary directory."""
    gen = torch.Generator().manual_seed(0)
    for name in ("content", "style"):
        array = (torch.rand(48, 64, 3, generator=gen) * 255).to(torch.uint8).numpy()
        Image.fromarray(array).save(tmp_path / f"{name}.png")
    return tmp_path / "content.png", tmp_path / "style.png"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
