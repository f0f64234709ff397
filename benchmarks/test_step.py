"""(a) one optimization iteration per backend × precision × size, and (d) its peak memory.

An iteration is what every loop repeats: VGG-19 forward, loss, gradient with respect to the image.
"""

from __future__ import annotations

import pytest
import torch
from bench_utils import DEVICES, SMOKE, default_images, rounds, sizes, synchronize

from nst_fast import Stylizer, bench
from nst_fast.backends import get
from nst_fast.image import resize_longest
from nst_fast.options import Options


CONFIGS = [(d, b, p) for d in DEVICES for b, p in bench.configurations(d)]


@pytest.mark.parametrize("size", sizes("128,256,512", "64"))
@pytest.mark.parametrize("device, backend, precision", CONFIGS)
def test_iteration(record_machine, backend, precision, size, device):
    content, style = default_images()
    options = Options(size=size, device=device, backend=backend, precision=precision, pyramid_start=0)
    stylizer = Stylizer(style, options)
    image, loss_fn = stylizer.loss_for(resize_longest(content, size))
    spec = stylizer.plan(image).scales[-1].loop
    step = get(backend).make_step(stylizer.model, loss_fn, image, spec)  # what the backend's loop repeats
    dev = torch.device(device)
    for _ in range(0 if SMOKE else 2):  # warm-up: allocator, oneDNN/cuDNN algorithm choice
        step()

    def iteration():
        loss = step()
        synchronize(dev)
        return loss

    loss = record_machine.pedantic(iteration, rounds=rounds(5), iterations=1)
    assert torch.isfinite(loss)
    record_machine.extra_info.update(backend=backend, precision=precision, size=size, device=device)
    if not SMOKE:
        # Peak memory from its own process on a CPU (the C allocator keeps what it took), in place on a GPU.
        measure = bench.measure_step_isolated if device == "cpu" else bench.measure_step
        m = measure(backend, precision, size, device, rounds=1, warmup=1)
        record_machine.extra_info.update(peak_memory_mb=m.peak_memory_mb, memory_kind=m.memory_kind)
