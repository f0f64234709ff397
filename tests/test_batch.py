"""Several content images in one optimization (Stylizer.stylize_many): each image gets what it gets alone."""

from __future__ import annotations

import pytest
import torch

from nst_fast import Cancel, Cancelled, Options, OptionsError, Plan, Stylizer
from nst_fast.backends.lbfgs import BatchedLBFGS, DeviceLBFGS
from nst_fast.objective import build_loss, evaluate_loss

CPU = torch.device("cpu")


def _images(*shapes, seed=20):
    gen = torch.Generator().manual_seed(seed)
    return [torch.rand(1, 3, h, w, generator=gen) for h, w in shapes]


def test_batched_lbfgs_follows_each_images_own_lbfgs():
    """Three independent problems in one batch: each trajectory is the one DeviceLBFGS gives alone."""
    torch.manual_seed(0)
    n, b = 60, 3
    mats = []
    for _ in range(b):
        a = torch.randn(n, n, dtype=torch.float64)
        mats.append((a @ a.T / n + torch.eye(n, dtype=torch.float64)).float())

    def f(i, x):
        return 0.5 * x @ mats[i] @ x + 0.1 * (x**4).sum() + (i + 1) * x.sum()

    x0 = torch.randn(b, n)
    alone = []
    for i in range(b):
        x = x0[i].clone()
        opt = DeviceLBFGS(x, lr=1, history=6)  # 6 < 20: the slots wrap around
        trace = []
        for _ in range(20):
            xx = x.clone().requires_grad_()
            loss = f(i, xx)
            loss.backward()
            trace.append(loss.item())
            opt.step(xx.grad)
        alone.append(trace)
    x = x0.clone()
    opt = BatchedLBFGS(x, lr=1, history=6)
    together = [[] for _ in range(b)]
    for _ in range(20):
        xx = x.clone().requires_grad_()
        losses = torch.stack([f(i, xx[i]) for i in range(b)])
        losses.sum().backward()
        for i in range(b):
            together[i].append(losses[i].item())
        opt.step(xx.grad)
    for i in range(b):
        assert alone[i][-1] < alone[i][0] - 1
        assert together[i] == pytest.approx(alone[i], rel=1e-5, abs=1e-5)


def _judged(stylizer: Stylizer, content: torch.Tensor, image: torch.Tensor) -> float:
    loss_fn = build_loss(stylizer.model, content, stylizer.style_targets, stylizer.options)
    return evaluate_loss(stylizer.model, loss_fn, image)["total"]


def test_a_batch_computes_each_images_own_loss_and_gradient():
    style = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(21))
    stylizer = Stylizer(style, size=64, precision="fp32")
    contents = _images((48, 64), (48, 64), (48, 64))
    batch_loss = build_loss(stylizer.model, torch.cat(contents), stylizer.style_targets, stylizer.options)
    x = torch.rand(3, 3, 48, 64, generator=torch.Generator().manual_seed(5)).requires_grad_()
    total, each, _ = batch_loss.batch(stylizer.model(x), x)
    (grad,) = torch.autograd.grad(total, x)
    for i, content in enumerate(contents):
        loss_fn = build_loss(stylizer.model, content, stylizer.style_targets, stylizer.options)
        xi = x[i : i + 1].detach().clone().requires_grad_()
        value, _ = loss_fn(stylizer.model(xi), xi)
        (grad_i,) = torch.autograd.grad(value, xi)
        assert each[i].item() == pytest.approx(value.item(), rel=1e-6)
        assert torch.allclose(grad[i : i + 1], grad_i, rtol=1e-4, atol=1e-6 * grad_i.abs().max().item())
    assert total.item() == pytest.approx(each.sum().item(), rel=1e-6)


# L-BFGS amplifies rounding: moving the content image by 1e-7 moves the fp32 loss after 15 steps by up to
# 1.5% (bf16 after 5 steps: up to 7%; benchmarks/sensitivity.py), and a batch's convolutions round
# differently from one image's (gradients ~7e-7 apart). So a batch is held to the images alone over a
# few fp32 steps, and to exact independence from its batch-mates at any length and precision (below).
@pytest.mark.parametrize(("optimizer", "steps"), [("lbfgs", 5), ("adam", 5)])
def test_a_batch_gives_each_image_what_it_gets_alone(optimizer, steps):
    style = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(21))
    stylizer = Stylizer(style, size=64, steps=steps, precision="fp32", optimizer=optimizer, init="content+noise")
    contents = _images((48, 64), (64, 48), (48, 64), (48, 64))  # one of another shape: a group of its own
    seen = []
    together = stylizer.stylize_many(contents, seen.append, batch_size=3)
    assert [tuple(t.shape) for t in together] == [tuple(c.shape) for c in contents]
    assert {it.image.shape[0] for it in seen} == {3, 1}, "one batch of three, one image alone"
    for content, out in zip(contents, together):
        alone = stylizer.stylize_tensor(content)
        reference, batched = _judged(stylizer, content, alone), _judged(stylizer, content, out)
        assert batched == pytest.approx(reference, rel=1e-4), (reference, batched)
        assert not torch.equal(out, content)


def test_in_bf16_a_batch_is_as_good_as_each_image_alone():
    """bf16 rounds a batch's convolutions differently from one image's, and L-BFGS amplifies it: after 8
    steps an image's loss was up to 13% from its loss alone, either way, so the issue's "bf16 within 1%"
    holds only once the runs settle. After 60 steps on this EPYC every image was within 0.5%
    (benchmarks/sensitivity.py); the bounds (3%, 1% on average) leave room for other CPUs' rounding."""
    from conftest import skip_unless_native_bf16

    skip_unless_native_bf16()
    style = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(21))
    stylizer = Stylizer(style, size=64, steps=60, precision="bf16")
    contents = _images((48, 64), (48, 64), (48, 64))
    together = stylizer.stylize_many(contents, batch_size=3)
    gaps = []
    for content, out in zip(contents, together):
        reference = _judged(stylizer, content, stylizer.stylize_tensor(content))
        gaps.append(abs(_judged(stylizer, content, out) / reference - 1))
    assert max(gaps) < 3e-2 and sum(gaps) / len(gaps) < 1e-2, gaps


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_an_images_result_does_not_depend_on_its_batch_mates(precision):
    """Each image has its own loss, L-BFGS and best iterate: with other batch-mates, the same result."""
    from conftest import skip_unless_native_bf16

    skip_unless_native_bf16(precision)
    style = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(23))
    stylizer = Stylizer(style, size=64, steps=15, precision=precision, batch_size=3)
    a, b, c, d, e = _images(*[(48, 64)] * 5, seed=24)
    first = stylizer.stylize_many([a, b, c])
    second = stylizer.stylize_many([d, a, e])
    assert torch.equal(first[0], second[1])
    assert not torch.equal(first[1], second[0])


def test_runs_that_are_not_alike_go_alone_and_exactly_as_alone():
    style = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(22))
    contents = _images((64, 64), (64, 64))
    for options in ({"backend": "reference"}, {"tile": 40}, {"checkpoint": "on"}):
        stylizer = Stylizer(style, size=64, steps=4, batch_size=2, **options)
        assert stylizer.plan(contents[0]).batch_key is None
        outs = stylizer.stylize_many(contents)
        assert all(torch.equal(o, stylizer.stylize_tensor(c)) for o, c in zip(outs, contents)), options


def test_a_batch_plan_counts_every_image():
    one, four = (Plan.resolve(Options(size=128), (96, 128), CPU, batch) for batch in (1, 4))
    assert four.batch_key == one.batch_key == ((96, 128),)
    assert four.estimate.kept == 4 * one.estimate.kept and four.estimate.weights == one.estimate.weights
    assert four.total_steps == one.total_steps


def test_the_command_batches_a_directory(images, tmp_path, capsys):
    from PIL import Image

    from nst_fast.cli import main

    content, style = images
    photos, styled = tmp_path / "photos", tmp_path / "styled"
    photos.mkdir()
    styled.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        (photos / name).write_bytes(content.read_bytes())
    Image.new("RGB", (64, 40)).save(photos / "wide.png")  # another shape: a run of its own
    (photos / "broken.png").write_bytes(b"not an image")
    argv = [photos, style, "-o", styled, "--size", "48", "--steps", "3", "--batch-size", "2"]
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 3 and "broken.png" in err and err.count("error") == 1
    assert sorted(p.name for p in styled.iterdir()) == ["a.png", "b.png", "c.png", "wide.png"]
    code = main([str(a) for a in [*argv, "--save-every", "1"]])
    assert code == 2 and "without --batch-size" in capsys.readouterr().err


def _cancel_at(step: int, tokens: dict[int, Cancel], seen: list):
    """A callback that records each iterate's rows and cancels ``tokens`` (input index → token) after
    iteration ``step``."""

    def callback(it):
        seen.append((it.step, it.indices, it.image.shape[0]))
        if it.step == step:
            for token in tokens.values():
                token.cancel()

    return callback


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_a_cancelled_image_leaves_its_batch_and_the_others_go_on_as_before(optimizer):
    style = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(21))
    stylizer = Stylizer(style, size=64, steps=5, precision="fp32", optimizer=optimizer, init="content+noise")
    contents = _images((48, 64), (48, 64), (48, 64))
    whole = stylizer.stylize_many(contents, batch_size=3)
    tokens, seen, results = [Cancel(), Cancel(), Cancel()], [], {}
    callback = _cancel_at(2, {1: tokens[1]}, seen)
    out = stylizer.stylize_many(contents, callback, batch_size=3, cancel_each=tokens, on_result=results.__setitem__)
    assert out[1] is None and sorted(results) == [0, 2], "a cancelled image: no result, no on_result"
    # Iterations 1-2 on three images, 3-5 on the two left: the cancelled one no longer computed.
    assert seen == [(1, (0, 1, 2), 3), (2, (0, 1, 2), 3)] + [(n, (0, 2), 2) for n in (3, 4, 5)]
    for i in (0, 2):  # each goes on as in the whole batch (to the rounding of a smaller batch) and alone
        assert _judged(stylizer, contents[i], out[i]) == pytest.approx(
            _judged(stylizer, contents[i], whole[i]), rel=1e-4
        )
        alone = stylizer.stylize_tensor(contents[i])
        assert _judged(stylizer, contents[i], out[i]) == pytest.approx(_judged(stylizer, contents[i], alone), rel=1e-4)


def test_cancelling_every_image_of_a_batch_ends_it_without_an_error_and_the_rest_run():
    style = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(21))
    stylizer = Stylizer(style, size=64, steps=4, precision="fp32")
    contents = _images((48, 64), (48, 64), (64, 48))  # the last: a group of its own
    tokens, seen = [Cancel(), Cancel(), None], []
    callback = _cancel_at(1, {0: tokens[0], 1: tokens[1]}, seen)
    out = stylizer.stylize_many(contents, callback, batch_size=2, cancel_each=tokens)
    assert out[0] is None and out[1] is None and out[2] is not None
    assert [s for s in seen if s[1] == (0, 1)] == [(1, (0, 1), 2)], "the batch stopped after its first iteration"
    assert [s[0] for s in seen if s[1] == (2,)] == [1, 2, 3, 4]
    with pytest.raises(OptionsError, match="2 cancel_each tokens given for 3 content images"):
        stylizer.stylize_many(contents, cancel_each=tokens[:2])
    shared = Cancel()
    shared.cancel()
    with pytest.raises(Cancelled):  # the run's own token still ends everything
        stylizer.stylize_many(contents, cancel=shared, cancel_each=[None] * 3)


def test_an_image_cancelled_between_two_scales_does_not_start_the_next():
    style = torch.rand(3, 96, 96, generator=torch.Generator().manual_seed(21))
    stylizer = Stylizer(style, size=96, pyramid_start=48, steps=3, precision="fp32")
    contents = _images((72, 96), (72, 96))
    plan = stylizer.plan(contents[0])
    first = plan.scales[0].iterations
    assert len(plan.scales) == 2, [s.size for s in plan.scales]
    tokens, seen = [Cancel(), Cancel()], []
    out = stylizer.stylize_many(contents, _cancel_at(first, {0: tokens[0]}, seen), batch_size=2, cancel_each=tokens)
    assert out[0] is None and out[1] is not None and out[1].shape == contents[1].shape
    assert {rows for step, _, rows in seen if step <= first} == {2}
    assert {(indices, rows) for step, indices, rows in seen if step > first} == {((1,), 1)}
