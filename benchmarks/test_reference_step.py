"""One iteration of the reference loop (VGG-19 forward + input gradient + loss), per size and device.

The baseline every fast backend is compared with. Run: pytest benchmarks --benchmark-enable
"""

from __future__ import annotations

import pytest
import torch
from bench_utils import shared_image, synchronize

from nst_fast import Options, reference
from nst_fast.image import load_image, resize_longest
from nst_fast.stylizer import Stylizer

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("size", [128, 256])
def test_reference_iteration(record_machine, device, size):
    options = Options(size=size, device=device)
    stylizer = Stylizer(shared_image("starry_night.jpg"), options)
    content = resize_longest(load_image(shared_image("tubingen.jpg")), size).to(stylizer.device)
    loss_fn = reference.build_loss(stylizer.model, content, stylizer.style_targets, options)
    image = content.clone().requires_grad_(True)

    def iteration():
        image.grad = None
        loss, _ = loss_fn(stylizer.model(image), image)
        loss.backward()
        synchronize(stylizer.device)

    for _ in range(2):  # warm-up: allocator, oneDNN/cuDNN algorithm choice
        iteration()
    record_machine.extra_info.update(size=size, image=list(content.shape), precision="fp32", backend="reference")
    record_machine.pedantic(iteration, rounds=5 if size <= 128 else 3, iterations=1)
    assert torch.isfinite(image.grad).all()
