"""Stopping a run from outside (nst_fast.control): cancellation and the max_time deadline, in every
backend, whole and tiled."""

from __future__ import annotations

import threading
import time

import pytest
import torch

import nst_fast
from nst_fast import Cancel, Cancelled, Options, Stylizer
from nst_fast.cli import main
from nst_fast.control import Plateau, Stop

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


def test_a_call_may_set_its_own_deadline():
    """One Stylizer per style in a service, each request with its own budget: ``max_time`` per call."""
    stylizer = Stylizer(STYLE, size=48, steps=100_000)
    stylizer.stylize_tensor(CONTENT, max_time=0.5)  # the first run in a process pays for set-up
    for call in (
        lambda: stylizer.stylize_tensor(CONTENT, max_time=1.0),
        lambda: stylizer.stylize(CONTENT, max_time=1.0),
        lambda: stylizer.stylize_many([CONTENT, CONTENT], max_time=1.0, batch_size=2),
    ):
        start = time.perf_counter()
        assert call() is not None and time.perf_counter() - start < 10
    generous = Stylizer(STYLE, size=48, steps=100_000, max_time=1000.0)
    start = time.perf_counter()
    assert generous.stylize_tensor(CONTENT, max_time=1.0).shape == CONTENT.shape  # a call's own overrides it
    assert time.perf_counter() - start < 10
    with pytest.raises(nst_fast.OptionsError, match="max_time must be positive"):
        stylizer.stylize_tensor(CONTENT, max_time=-1)


def test_a_deadline_is_spent_over_every_scale_and_tile_in_proportion_to_its_work():
    seen: list[tuple[int, float]] = []  # (side, elapsed) of each iterate
    stylizer = Stylizer(STYLE, size=96, pyramid_start=24, steps=100_000, pyramid_steps=100_000, max_time=3.0)
    content = torch.rand(1, 3, 80, 96)
    plan = stylizer.plan(content)
    start = time.perf_counter()
    out = stylizer.stylize_tensor(content, lambda it: seen.append((it.image.shape[-1], it.elapsed)))
    assert out.shape == (1, 3, 80, 96) and time.perf_counter() - start < 3.0 + 2.0
    sides = [s.width for s in plan.scales]
    assert sorted({side for side, _ in seen}) == sides, "every scale ran"
    ends = [max(t for side, t in seen if side == s) for s in sides]
    spent = [b - a for a, b in zip([0.0, *ends], ends)]
    shares = [s.work / sum(x.work for x in plan.scales) for s in plan.scales]
    assert all(abs(t / sum(spent) - share) < 0.1 for t, share in zip(spent, shares)), (spent, shares)


def test_under_a_deadline_every_tile_of_a_tiled_scale_gets_steps():
    steps_by_tile: list[int] = []
    stylizer = Stylizer(STYLE, size=96, pyramid_start=0, tile=48, steps=100_000, max_time=2.0)
    stylizer.stylize_tensor(CONTENT, lambda it: steps_by_tile.append(it.step))
    tiles = len(stylizer.plan(CONTENT).scales[-1].tiles)
    per_tile = [sum(1 for s in steps_by_tile if k * 100_000 < s <= (k + 1) * 100_000) for k in range(tiles)]
    assert tiles > 1 and all(n > 0 for n in per_tile), per_tile


def test_work_shares_follow_the_planned_pixel_iterations():
    plan = Stylizer(STYLE, size=96, pyramid_start=24, steps=40, pyramid_steps=10).plan(CONTENT)
    work = [s.steps * s.height * s.width for s in plan.scales]
    assert [s.work for s in plan.scales] == work
    assert plan.work_share(0) == pytest.approx(work[0] / sum(work)) and plan.work_share(len(work) - 1) == 1.0


def test_a_plateau_is_a_gain_below_tol_over_a_window_read_once_per_window():
    plateau = Plateau(0.01, window=2)
    losses = [10.0, 9.0, 8.0, 7.95, 7.9, 7.89]
    hits = [plateau.reached(step, loss) for step, loss in enumerate(losses, 1)]
    # read at steps 2, 4, 6: 9 → 7.95 gains 11.7%; 7.95 → 7.89 gains 0.75% < 1%
    assert hits == [False, False, False, False, False, True]
    batch = Plateau(0.01, window=1)
    batch.reached(1, torch.tensor([10.0, 10.0]))
    assert not batch.reached(2, torch.tensor([9.999, 9.0])), "a batch stops only when every image is flat"
    assert batch.reached(3, torch.tensor([9.998, 8.99]))
    assert not Plateau(None).reached(10, 1.0)


@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_tol_ends_a_scale_once_the_loss_stops_improving(backend):
    seen: list[float] = []
    out = Stylizer(STYLE, size=48, steps=2000, tol=1e-3, backend=backend).stylize_tensor(
        CONTENT, lambda it: seen.append(it.loss)
    )
    assert torch.isfinite(out).all() and Plateau.WINDOW * 2 <= len(seen) < 2000
    window = Plateau.WINDOW
    last, before = min(seen), min(seen[:-window])
    assert (before - last) / before < 1e-3, "it stopped on a plateau"


def test_the_command_honours_max_time(images, tmp_path, capsys):
    content, style = images
    out = tmp_path / "out.png"
    start = time.perf_counter()
    code = main(
        [str(content), str(style), "-o", str(out), "--size", "48", "--steps", "100000", "--max-time", "1", "-q"]
    )
    assert code == 0 and out.is_file() and time.perf_counter() - start < 30
    code = main([str(content), str(style), "-o", str(out), "--size", "48", "--steps", "100000", "--max-time", "1"])
    assert code == 0 and "ended early by --max-time 1, after " in capsys.readouterr().err
    code = main([str(content), str(style), "-o", str(out), "--size", "48", "--steps", "3000", "--tol", "0.01"])
    assert code == 0 and "ended early by --tol 0.01, after " in capsys.readouterr().err
    code = main([str(content), str(style), "-o", str(out), "--max-time", "0", "-q"])
    assert code == 2 and "max_time must be positive" in capsys.readouterr().err


def test_an_early_end_names_what_may_have_ended_it():
    from nst_fast.cli.stylize import _early_because

    # A scale or tile may end at its share of the deadline while the run as a whole finishes in time.
    assert _early_because(Options(max_time=10), elapsed=3) == " by --max-time 10"
    assert _early_because(Options(max_time=10, tol=0.01), elapsed=3) == " by --max-time 10 or --tol 0.01"
    assert _early_because(Options(max_time=10, tol=0.01), elapsed=11) == " by --max-time 10"
    assert _early_because(Options(tol=0.01), elapsed=3) == " by --tol 0.01"
    assert _early_because(Options(), elapsed=3) == ""


def test_stylize_takes_a_cancel_token():
    cancel = Cancel()
    cancel.cancel()
    with pytest.raises(Cancelled):
        nst_fast.stylize(CONTENT, STYLE, size=48, steps=5, cancel=cancel)


def test_a_batch_stop_lets_images_leave_one_by_one():
    a, b, c = Cancel(), Cancel(), Cancel()
    stop = Stop(max_time=60, members=[a, None, c])
    assert stop.wanted([0, 1, 2]) == [0, 1, 2] and not stop.cancelled
    a.cancel()
    assert stop.wanted([0, 1, 2]) == [1, 2] and not stop.cancelled and not stop()
    part = stop.subset([0, 2])  # a batch holding images 0 and 2 only: its positions are 0 and 1
    assert part.wanted([0, 1]) == [1] and part.deadline == stop.deadline
    c.cancel()
    assert part.cancelled and part() and not stop.cancelled  # image 1 (no token) is still wanted
    assert Stop(members=[a, c]).cancelled and not b.cancelled
    run_token = Cancel()
    run_token.cancel()
    assert Stop(cancel=run_token, members=[None]).cancelled
