"""The FLOPs of one iteration (nst_fast.bench.flops) against counts from first principles: by hand from
VGG-19's published widths, and by torch's own counter on the real network's forward and backward."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from nst_fast import VGG19, Options
from nst_fast.bench.flops import iteration_flops, options_flops, run_flops
from nst_fast.objective import build_loss, style_targets
from nst_fast.plan import Plan

STYLE = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")


def test_convolutions_counted_by_hand_at_32_px():
    # VGG-19 to relu5_1: conv1_1..conv5_1, 3×3, padding 1; the spatial side halves after each block.
    convs = [(3, 64, 32), (64, 64, 32), (64, 128, 16), (128, 128, 16)]
    convs += [(128, 256, 8)] + [(256, 256, 8)] * 3 + [(256, 512, 4)] + [(512, 512, 4)] * 3 + [(512, 512, 2)]
    macs = sum(cin * cout * 9 * side * side for cin, cout, side in convs)
    grams = sum(c * c * side * side for c, side in ((64, 32), (128, 16), (256, 8), (512, 4), (512, 2)))
    f = iteration_flops(32, 32, STYLE, ("relu4_2",))
    assert f.conv_forward == f.conv_backward == 2 * macs
    assert f.gram_forward == f.gram_backward == 2 * grams
    assert 0 < f.elementwise < 0.01 * f.total
    assert f.total == f.matmul + f.elementwise
    # The network ends at the deepest layer used: to relu3_1 only conv1_1 … conv3_1 run.
    shallow = iteration_flops(32, 32, ("relu1_1", "relu2_1", "relu3_1"))
    assert shallow.conv_forward == 2 * sum(cin * cout * 9 * side * side for cin, cout, side in convs[:5])


def test_batch_and_plan_scale_the_work():
    one = options_flops(Options(), 384, 512)
    assert options_flops(Options(), 384, 512, batch=3).total == 3 * one.total
    # The figure: VGG-19 to relu5_1 at 512×384 is about 284 GFLOP of convolutions.
    assert (one.conv_forward + one.conv_backward) / 1e9 == pytest.approx(284, abs=1)
    options = Options(size=512, steps=10, pyramid_start=256, pyramid_steps=4)
    plan = Plan.resolve(options, (384, 512), torch.device("cpu"))
    assert [(s.size, s.steps) for s in plan.scales] == [(256, 10), (512, 4)]
    coarse = options_flops(options, 192, 256).total
    assert run_flops(plan) == 10 * coarse + 4 * one.total
    assert run_flops(plan, final_scale_steps=1) == 10 * coarse + one.total


@pytest.mark.parametrize("height, width", [(48, 64), (96, 80)])
def test_torch_flop_counter_on_the_real_forward_and_backward(height, width):
    """torch's counter sees the convolutions (forward and backward to the input: the weights are frozen)
    and the Gram matrices' products; it agrees exactly, with one known difference: autograd's backward
    of bmm(F, Fᵀ) computes two products, where the operators (and the count) use G's symmetry for one."""
    options = Options(impl="ref")  # eager operators, which the counter sees (the extension's it does not)
    model = VGG19(options.layers, "caffe", options.pooling)
    gen = torch.Generator().manual_seed(0)
    content, style = torch.rand(1, 3, height, width, generator=gen), torch.rand(1, 3, height, width, generator=gen)
    loss_fn = build_loss(model, content, style_targets(model, [style], [1.0], options.style_layers), options)
    x = content.clone().requires_grad_(True)
    with FlopCounterMode(display=False) as counter:
        loss, _ = loss_fn(model(x), x)
        loss.backward()
    counts = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    f = options_flops(options, height, width)
    assert counts["aten.convolution"] == f.conv_forward
    assert counts["aten.convolution_backward"] == f.conv_backward
    assert counts["aten.bmm"] == f.gram_forward + 2 * f.gram_backward
    # conv1_1's input gradient is work too: the image is what is optimized.
    first = {str(op): n for op, n in counter.get_flop_counts()["VGG19.body.conv1_1"].items()}
    assert first["aten.convolution_backward"] == 2 * 3 * 9 * 64 * height * width
