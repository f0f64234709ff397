"""Stopping a run from outside (nst_fast.control): cancellation and the max_time deadline, in every
backend, whole and tiled."""

from __future__ import annotations

import threading
import time

import pytest
import torch

import nst_fast
from nst_fast import Cancel, Cancelled, Stylizer
from nst_fast.cli import main

STYLE = torch.rand(3, 48, 48, generator=torch.Generator().manual_seed(3))
CONTENT = torch.rand(1, 3, 40, 48, generator=torch.Generator().manual_seed(4))


@pytest.mark.parametrize("backend", ["torch", "reference", "onnxruntime"])
def test_a_cancelled_run_stops_before_its_next_iteration(backend):
    cancel, seen = Cancel(), []

    def callback(it):
        seen.append(it.step)
        if it.step == 3:
            cancel.cancel()

    stylizer = Stylizer(STYLE, size=48, steps=20, backend=backend)
    with pytest.raises(Cancelled, match="cancelled"):
        stylizer.stylize_tensor(CONTENT, callback, cancel=cancel)
    assert seen == [1, 2, 3]


def test_cancel_from_another_thread_and_in_a_tiled_scale():
    stylizer = Stylizer(STYLE, size=96, pyramid_start=48, tile=48, steps=3, pyramid_steps=400)
    cancel, seen, in_tiles = Cancel(), [], threading.Event()

    def callback(it):
        seen.append(it.step)
        if it.step == 5:  # the second step of the first tile of the tiled scale
            in_tiles.set()

    canceller = threading.Thread(target=lambda: in_tiles.wait(120) and cancel.cancel())
    canceller.start()
    with pytest.raises(Cancelled):
        stylizer.stylize_tensor(CONTENT, callback, cancel=cancel)
    canceller.join()
    assert 5 <= len(seen) < 3 + 400 * 4 and seen == list(range(1, len(seen) + 1))


@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_past_max_time_a_run_returns_the_best_image_it_has_at_full_size(backend):
    seen = []
    stylizer = Stylizer(STYLE, size=48, steps=100_000, max_time=2.0, backend=backend)
    stylizer.stylize_tensor(CONTENT)  # the first run in a process pays for imports and kernel set-up
    start = time.perf_counter()
    out = stylizer.stylize_tensor(CONTENT, lambda it: seen.append(it.loss))
    assert time.perf_counter() - start < 20 and 1 < len(seen) < 100_000
    assert out.shape == CONTENT.shape and torch.isfinite(out).all() and seen[-1] < seen[0]


def test_a_deadline_in_a_coarse_scale_still_gives_a_full_size_image():
    seen = []
    stylizer = Stylizer(STYLE, size=96, pyramid_start=24, steps=100_000, pyramid_steps=100_000, max_time=0.5)
    out = stylizer.stylize_tensor(torch.rand(1, 3, 80, 96), lambda it: seen.append(it.image.shape[-1]))
    assert out.shape == (1, 3, 80, 96) and set(seen) == {24}, "stopped in the first scale, carried up to 96 px"


def test_the_command_honours_max_time(images, tmp_path, capsys):
    content, style = images
    out = tmp_path / "out.png"
    start = time.perf_counter()
    code = main(
        [str(content), str(style), "-o", str(out), "--size", "48", "--steps", "100000", "--max-time", "1", "-q"]
    )
    assert code == 0 and out.is_file() and time.perf_counter() - start < 30
    code = main([str(content), str(style), "-o", str(out), "--max-time", "0", "-q"])
    assert code == 2 and "max_time must be positive" in capsys.readouterr().err


def test_stylize_takes_a_cancel_token():
    cancel = Cancel()
    cancel.cancel()
    with pytest.raises(Cancelled):
        nst_fast.stylize(CONTENT, STYLE, size=48, steps=5, cancel=cancel)
