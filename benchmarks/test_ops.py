"""(b) the Gram/style-loss operator against the eager PyTorch reference at VGG-19 style-layer shapes.

For an S×S image the style layers relu1_1 … relu5_1 have C = 64, 128, 256, 512, 512 channels on
S², (S/2)², (S/4)², (S/8)², (S/16)² positions. Forward: the loss; forward+backward: loss and dF.
"""

from __future__ import annotations

import pytest
import torch
from bench_utils import DEVICES, SMOKE, rounds, sizes, synchronize

from nst_fast import _ext, ops

LAYERS = [("relu1_1", 64, 1), ("relu2_1", 128, 2), ("relu3_1", 256, 4), ("relu4_1", 512, 8), ("relu5_1", 512, 16)]
SHAPES = [(s, name, c, s // div) for s in sizes("512,1024,2048,4096", "128") for name, c, div in LAYERS]
IMPLS = ["ref"] + (["ext"] if _ext.AVAILABLE else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("image_size, layer, channels, side", SHAPES, ids=[f"{s}px-{n}" for s, n, _, _ in SHAPES])
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd+bwd"])
def test_style_loss_op(record_machine, impl, backward, image_size, layer, channels, side, dtype, device):
    if impl == "ext" and device == "cuda" and not _ext.WITH_CUDA:
        pytest.skip("the extension was built without CUDA kernels")
    feats = (torch.rand(1, channels, side, side, device=device) + 0.05).to(dtype).requires_grad_(backward)
    target = ops.gram(torch.rand(1, channels, side, side, device=device), 1.0 / (side * side), impl="ref")
    scale = 1.0 / (side * side)

    def run():
        loss = ops.style_loss(feats, target, scale, impl=impl)
        if backward:
            loss.backward()
            feats.grad = None
        synchronize(feats.device)
        return loss

    large = image_size > 1024  # a second or more per call on a CPU: fewer rounds
    for _ in range(0 if SMOKE else 1 if large else 2):
        run()
    loss = record_machine.pedantic(run, rounds=rounds(3 if large else 5), iterations=1)
    assert torch.isfinite(loss)
    record_machine.extra_info.update(
        impl=impl, layer=layer, shape=list(feats.shape), dtype=str(dtype), image_size=image_size, backward=backward
    )
