"""Winograd convolutions (nst_fast.conv): against float64 and their direct twin, in the network, in the
plan's rule, and in runs (determinism, threads)."""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nst_fast import Options, Stylizer, conv
from nst_fast.errors import OptionsError
from nst_fast.objective import build_loss, evaluate_loss
from nst_fast.plan import Plan, channels_last
from nst_fast.vgg import VGG19

CPU = torch.device("cpu")
pytestmark = pytest.mark.skipif(not conv.available(), reason="this PyTorch has no NNPACK on this CPU")


def _conv(cin: int, cout: int, seed: int) -> nn.Conv2d:
    g = torch.Generator().manual_seed(seed)
    layer = nn.Conv2d(cin, cout, 3, padding=1)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(cout, cin, 3, 3, generator=g) * (2 / (9 * cin)) ** 0.5)
        layer.bias.copy_(torch.randn(cout, generator=g) * 0.1)
    return layer.requires_grad_(False)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


# Odd sides (tiles of 6 that do not divide them), one position wide, several channel counts, a batch.
SHAPES = [(1, 64, 64, 13, 17), (1, 128, 64, 32, 24), (2, 64, 128, 7, 5), (1, 256, 256, 1, 9), (1, 64, 64, 40, 40)]


@pytest.mark.parametrize(("batch", "cin", "cout", "h", "w"), SHAPES)
def test_forward_and_input_gradient_match_float64(batch, cin, cout, h, w):
    layer = _conv(cin, cout, seed=cin + h)
    x = torch.rand(batch, cin, h, w, generator=torch.Generator().manual_seed(h * w)).requires_grad_()
    y = conv.winograd_conv(x, layer)
    up = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    (gx,) = torch.autograd.grad((y * up).sum(), x)
    x64 = x.detach().double().requires_grad_()
    y64 = F.conv2d(x64, layer.weight.double(), layer.bias.double(), padding=1)
    (gx64,) = torch.autograd.grad((y64 * up.double()).sum(), x64)
    direct = conv.direct_conv(x.detach(), layer)
    # F(6×6, 3×3) rounds its transformed tiles: measured 2–5e-6 here, about twice the direct error.
    assert _relative(y, y64) < 2e-5 and _relative(direct, y64) < 1e-5
    assert _relative(gx, gx64) < 2e-5
    assert y.shape == direct.shape and y.dtype == torch.float32


def test_channels_last_input_and_a_repeat_give_the_same_bytes():
    layer = _conv(64, 64, seed=3)
    x = torch.rand(1, 64, 30, 20, generator=torch.Generator().manual_seed(4))
    first = conv.winograd_conv(x, layer)
    assert torch.equal(first, conv.winograd_conv(x, layer))
    channels_last = conv.winograd_conv(x.contiguous(memory_format=torch.channels_last), layer)
    assert torch.equal(first, channels_last) and first.is_contiguous()
    assert channels_last.is_contiguous(memory_format=torch.channels_last)  # the layout it was given


def test_the_input_gradient_weights_are_made_once_and_again_when_the_weight_changes():
    layer = _conv(64, 32, seed=10)
    first = conv._flipped_weight(layer)
    assert conv._flipped_weight(layer) is first and first.shape == (64, 32, 3, 3)
    with torch.no_grad():
        layer.weight.mul_(2)
    again = conv._flipped_weight(layer)
    assert again is not first and torch.equal(again, 2 * first)
    assert "_nst_flipped" not in layer.state_dict()


def test_refuses_what_it_cannot_compute():
    layer = _conv(64, 64, seed=5)
    with pytest.raises(ValueError, match="float32 on a CPU"):
        conv.winograd_conv(torch.rand(1, 64, 8, 8, dtype=torch.float64), layer.double())
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(ValueError, match="float32 on a CPU"):
        conv.winograd_conv(torch.rand(1, 64, 8, 8), layer)


def test_the_network_with_winograd_matches_it_direct_in_value_and_gradient():
    model = VGG19(Options().layers, "caffe", "avg")
    image = torch.rand(1, 3, 96, 128, generator=torch.Generator().manual_seed(6)).requires_grad_()
    every = conv.winograd_layers(model.layers, 96, 128, everywhere=True)
    assert len(every) == 12  # conv1_2 … conv5_1
    fast, slow = model(image, every), model(image)
    for name in model.layers:
        assert _relative(fast[name], slow[name]) < 1e-5, name
    (g_fast,) = torch.autograd.grad(sum(a.square().mean() for a in fast.values()), image)
    (g_slow,) = torch.autograd.grad(sum(a.square().mean() for a in slow.values()), image)
    # A pre-activation within rounding of zero can fall on the other side of a ReLU's kink and take its
    # gradient with it, spread over its receptive field in the image (measured: flips at relu3_2 put the
    # image gradient 4.4e-4 from direct's on an AVX-512 EPYC, under 1e-4 on an AVX2 one). Every
    # convolution's own gradient is held to float64 above; here, the network's wiring, to that bound.
    assert _relative(g_fast, g_slow) < 2e-3


def test_the_rule():
    layers = Options().layers
    assert conv.winograd_layers(layers, 96, 128) == frozenset()  # conv2_2 at 48×64 × 128 channels: too little
    at_256 = conv.winograd_layers(layers, 192, 256)
    assert at_256 == {"conv2_1", "conv2_2", "conv3_2", "conv3_3", "conv3_4"}  # conv3_1: 48×64 × 128, no
    at_512 = conv.winograd_layers(layers, 384, 512)
    assert at_512 == {f"conv{b}_{i}" for b, n in ((2, 2), (3, 4), (4, 4)) for i in range(1, n + 1)}
    assert "conv5_1" in conv.winograd_layers(layers, 768, 1024) and "conv1_2" not in at_512
    # Truncated where the network is: only conv layers up to the deepest requested one.
    assert conv.winograd_layers(("relu2_1",), 384, 512) == {"conv2_1"}
    assert len(conv.winograd_layers(layers, 48, 64, everywhere=True)) == 12


def _winograd(plan: Plan) -> frozenset[str]:
    return plan.scales[-1].loop.winograd


def test_the_plan_applies_it_only_where_it_was_measured():
    shape = (192, 256)
    fp32 = Options(size=256, precision="fp32")
    assert _winograd(Plan.resolve(fp32, shape, CPU)) == conv.winograd_layers(fp32.layers, *shape) != frozenset()
    assert _winograd(Plan.resolve(fp32.replace(conv="direct"), shape, CPU)) == frozenset()
    assert _winograd(Plan.resolve(fp32.replace(checkpoint="on"), shape, CPU)) == frozenset()
    assert _winograd(Plan.resolve(fp32, shape, CPU, batch=2)) == frozenset()
    assert _winograd(Plan.resolve(fp32.replace(precision="bf16"), shape, CPU)) == frozenset()
    assert _winograd(Plan.resolve(fp32.replace(graph="compile"), shape, CPU)) == frozenset()
    assert _winograd(Plan.resolve(fp32.replace(backend="reference"), shape, CPU)) == frozenset()
    everywhere = Plan.resolve(fp32.replace(conv="winograd", checkpoint="on"), shape, CPU)
    assert len(_winograd(everywhere)) == 12 and everywhere.scales[-1].loop.checkpoint
    # Its workspace is a part of the estimate.
    with_it, without = Plan.resolve(fp32, shape, CPU), Plan.resolve(fp32.replace(conv="direct"), shape, CPU)
    assert with_it.estimate.workspace > 0 == without.estimate.workspace
    assert with_it.estimate.total - without.estimate.total == with_it.estimate.workspace


@pytest.mark.parametrize("change", [{"precision": "bf16"}, {"graph": "compile"}, {"backend": "reference"}])
def test_asking_for_it_where_it_cannot_run_is_an_error(change):
    with pytest.raises(OptionsError, match="conv 'winograd' (runs NNPACK's|is the torch backend's)"):
        Plan.resolve(Options(size=128, conv="winograd", precision="fp32").replace(**change), (96, 128), CPU)


def _pair():
    g = torch.Generator().manual_seed(7)
    return torch.rand(3, 96, 128, generator=g), torch.rand(3, 128, 128, generator=g)


def test_a_run_with_winograd_reaches_the_loss_of_a_direct_run():
    content, style = _pair()
    losses = {}
    for choice in ("direct", "winograd"):
        stylizer = Stylizer(style, size=128, steps=20, precision="fp32", conv=choice)
        assert (choice == "winograd") == bool(_winograd(stylizer.plan(content)))
        loss_fn = build_loss(stylizer.model, content[None], stylizer.style_targets, stylizer.options)
        losses[choice] = evaluate_loss(stylizer.model, loss_fn, stylizer.stylize_tensor(content))["total"]
    # The trajectories part by rounding (L-BFGS amplifies it), not by what they minimize.
    assert losses["winograd"] == pytest.approx(losses["direct"], rel=2e-2), losses


def test_nnpack_is_made_ready_once_when_two_threads_first_use_it_together(monkeypatch):
    layer = _conv(64, 64, seed=8)
    x = torch.rand(1, 64, 40, 30, generator=torch.Generator().manual_seed(9))
    expected = conv.direct_conv(x, layer)
    monkeypatch.setattr(conv, "_READY", False)  # as in a fresh process (torch's thread pool is made already)
    start, results = threading.Barrier(2), [None, None]

    def run(i: int) -> None:
        start.wait()
        results[i] = conv.winograd_conv(x, layer)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert conv._READY and torch.equal(results[0], results[1])
    assert _relative(results[0], expected.double()) < 1e-5


def test_the_network_layout_is_nchw_only_where_winograd_may_run():
    fp32 = Options(size=512, precision="fp32")
    assert not channels_last(fp32, CPU) and not channels_last(fp32.replace(conv="winograd"), CPU)
    for change in ({"conv": "direct"}, {"checkpoint": "on"}, {"precision": "bf16"}, {"size": 96}):
        assert channels_last(fp32.replace(**change), CPU), change  # no run of these could use Winograd


def test_runs_with_winograd_are_deterministic_across_threads():
    content, style = _pair()
    stylizer = Stylizer(style, size=128, steps=4, precision="fp32", conv="winograd")
    first = stylizer.stylize_tensor(content)
    results = [None, None]

    def run(i: int) -> None:
        results[i] = stylizer.stylize_tensor(content)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert all(torch.equal(first, r) for r in results)


def test_where_only_the_workspace_does_not_fit_the_plan_says_conv_direct_would(monkeypatch):
    import nst_fast.memory

    options, shape = Options(size=512, precision="fp32", checkpoint="off"), (384, 512)
    direct = Plan.resolve(options.replace(conv="direct"), shape, CPU).estimate
    with_it = Plan.resolve(options, shape, CPU).estimate
    assert with_it.workspace > 0
    free = direct.beyond_loaded + with_it.workspace // 2  # room for the run, not for NNPACK's workspace
    monkeypatch.setattr(nst_fast.memory, "available_bytes", lambda device: free)
    # auto gives Winograd up before it would recompute activations (or refuse): direct, not checkpointed.
    for choice in ("off", "auto"):
        plan = Plan.resolve(options.replace(checkpoint=choice), shape, CPU)
        assert plan.fits and not _winograd(plan) and not plan.scales[-1].loop.checkpoint
    plan = Plan.resolve(options.replace(conv="winograd"), shape, CPU)  # asked for: kept, and refused
    assert not plan.fits and {"conv": "direct"} in plan.suggestions()


def test_bench_measures_winograd_in_float32_and_leaves_other_backends_alone():
    from nst_fast.bench.steps import configurations

    assert configurations(CPU, ["torch", "reference"], "winograd") == [("torch", "fp32"), ("reference", "fp32")]
