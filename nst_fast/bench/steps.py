"""One optimization iteration per backend, precision and size, timed; and the engine's whole loop.

An iteration is what the backend's loop repeats, built by the backend's own ``make_step`` from the
plan of a run (the engine's honours ``--graph``: eager, compiled, or replayed from a CUDA graph).
Every timing synchronises the device before reading the clock, follows warm-up iterations, and is
reported as the median of its rounds.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

import torch

from ..backends import BACKENDS, get
from ..image import resize_longest
from ..options import Options
from ..plan import resolve_device
from ..stylizer import Stylizer
from .machine import default_images, synchronize
from .memory import PeakMemory
from .peak import probe


@dataclass
class Measurement:
    """One configuration's timing: milliseconds per optimization iteration, and peak memory."""

    backend: str
    precision: str
    size: int
    device: str
    image: list[int]
    ms_median: float
    ms_all: list[float]
    peak_memory_mb: float | None
    memory_kind: str
    loss: float
    # The precision's matrix-product FLOP/s probed just before each timed round (``peak_side``², not
    # counted in the memory): what the fraction of peak compares each round with.
    peak_side: int | None = None
    peak_beside: list[float] | None = None
    # The convolutions the plan ran by Winograd (nst_fast.conv); the FLOPs still count direct ones.
    winograd: list[str] | None = None

    @property
    def iterations_per_second(self) -> float:
        return 1000.0 / self.ms_median


def configurations(
    device: str | torch.device = "cpu", backends: list[str] | None = None, conv: str = "auto"
) -> list[tuple[str, str]]:
    """(backend, precision) pairs worth measuring on ``device``: every available backend's (or those
    named), in the registry's order. With ``conv="winograd"``, the engine's float32 alone (Winograd runs
    in float32 only)."""
    dev = resolve_device(device) if isinstance(device, str) else device
    names = backends or [name for name, b in BACKENDS.items() if b.unavailable() is None]
    return [
        (name, precision)
        for name in names
        for precision in get(name).precisions_on(dev)
        if not (conv == "winograd" and get(name).engine and precision != "fp32")
    ]


def measure_step(
    backend: str = "reference",
    precision: str = "fp32",
    size: int = 256,
    device: str = "auto",
    rounds: int = 5,
    warmup: int = 2,
    images: tuple[torch.Tensor, torch.Tensor] | None = None,
    graph: str = "auto",
    peak_side: int | None = None,
    conv: str = "auto",
) -> Measurement:
    """Median time of one optimization iteration of ``backend`` in ``precision`` at ``size`` px (``graph``
    and ``conv`` as the options); with
    ``peak_side``, each timed round follows a short probe of the precision's matrix-product peak at that
    side (:func:`~nst_fast.bench.peak.probe`)."""
    dev = resolve_device(device)
    available = [(name, p) for name, b in BACKENDS.items() for p in b.precisions_on(dev, native_only=False)]
    if (backend, precision) not in available:
        listed = ", ".join(f"{b}:{p}" for b, p in available)
        raise ValueError(f"no backend {backend!r} in precision {precision!r}; available: {listed}")
    content, style = images or default_images()
    options = Options(
        size=size, device=device, backend=backend, precision=precision, graph=graph, conv=conv, pyramid_start=0
    )
    content = resize_longest(content, size)
    with PeakMemory(dev) as memory:
        stylizer = Stylizer(style, options)
        image, loss_fn = stylizer.loss_for(content)
        spec = stylizer.plan(content).scales[-1].loop
        step = get(backend).make_step(stylizer.model, loss_fn, image, spec)
        for _ in range(warmup):
            step()
        synchronize(dev)
        times, beside = [], []
        for _ in range(rounds):
            if peak_side is not None:
                with memory.paused():
                    beside.append(probe(precision, peak_side, dev))
            start = time.perf_counter()
            loss = step()
            synchronize(dev)
            times.append((time.perf_counter() - start) * 1000)
    return Measurement(
        backend,
        precision,
        size,
        str(dev),
        list(content.shape),
        statistics.median(times),
        times,
        memory.peak_mb,
        memory.kind,
        float(loss),
        peak_side,
        beside or None,
        sorted(spec.winograd) or None,
    )


def measure_step_isolated(
    backend: str,
    precision: str,
    size: int,
    device: str,
    rounds: int,
    warmup: int,
    graph: str = "auto",
    peak_side: int | None = None,
    conv: str = "auto",
) -> Measurement:
    """:func:`measure_step` in a fresh Python process (for a CPU's peak-memory figure: memory that the C
    allocator has taken is not given back, and would hide the next configuration's peak)."""
    arguments = dict(
        backend=backend,
        precision=precision,
        size=size,
        device=device,
        rounds=rounds,
        warmup=warmup,
        graph=graph,
        peak_side=peak_side,
        conv=conv,
    )
    out = subprocess.run(
        [sys.executable, "-m", "nst_fast.bench", json.dumps(arguments)], capture_output=True, text=True
    )
    if out.returncode != 0:
        last = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode
        raise RuntimeError(f"benchmark process failed: {last}")
    return Measurement(**json.loads(out.stdout.strip().splitlines()[-1]))


def run(
    sizes: list[int],
    backends: list[str] | None = None,
    device: str = "auto",
    rounds: int = 5,
    warmup: int = 2,
    progress=None,
    graph: str = "auto",
    peak_sides: dict[str, int] | None = None,
    conv: str = "auto",
) -> list[Measurement]:
    """Every (backend, precision) × size, smallest size first; on a CPU each in a process of its own.
    ``peak_sides`` ({precision: side}, e.g. each measured peak's best side) adds a peak probe beside
    every timed round of the configurations in those precisions."""
    dev = resolve_device(device)
    isolate = dev.type == "cpu"
    images = None if isolate else default_images()
    results = []
    for backend, precision in configurations(dev, backends, conv):
        convs = conv if BACKENDS[backend].engine else "auto"  # the other backends compute their own convolutions
        for size in sorted(sizes):
            side = (peak_sides or {}).get(precision)
            if isolate:
                m = measure_step_isolated(backend, precision, size, device, rounds, warmup, graph, side, convs)
            else:
                m = measure_step(backend, precision, size, device, rounds, warmup, images, graph, side, convs)
            results.append(m)
            if progress is not None:
                progress(m)
    return results


def measure_loop(
    precision: str = "bf16",
    graph: str = "eager",
    size: int = 512,
    device: str = "auto",
    steps: int = 50,
    rounds: int = 3,
    images: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict:
    """Median milliseconds per iteration of the torch backend's whole loop — evaluation, gradient,
    optimizer update, best-iterate tracking, and with ``graph="cuda"`` the capture each run does — over
    runs of ``steps`` iterations at one scale, after a first run (torch.compile compiles there, once per
    model and size), whose time is reported as ``first_run_s``. Each run ends by copying the image to
    the host, which waits for the device."""
    content, style = images or default_images()
    options = Options(
        size=size, steps=steps, device=device, backend="torch", precision=precision, graph=graph, pyramid_start=0
    )  # one scale: every iteration at ``size``
    stylizer = Stylizer(style, options)
    content = resize_longest(content, size)
    synchronize(stylizer.device)
    first = time.perf_counter()
    stylizer.stylize_tensor(content)
    first = time.perf_counter() - first
    times = []
    for _ in range(rounds):
        synchronize(stylizer.device)
        start = time.perf_counter()
        stylizer.stylize_tensor(content)
        times.append((time.perf_counter() - start) * 1000 / steps)
    return {
        "precision": precision,
        "graph": graph,
        "size": size,
        "steps": steps,
        "device": str(stylizer.device),
        "ms_per_iteration_median": statistics.median(times),
        "ms_all": times,
        "first_run_s": first,
    }


def measure_batch(
    batch: int,
    size: int = 256,
    precision: str = "bf16",
    device: str = "auto",
    steps: int = 20,
    rounds: int = 1,
    images: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict:
    """Images per second of the torch backend optimizing ``batch`` content images of one size together
    (Stylizer.stylize_many), ``steps`` iterations at one scale, after a first untimed run; each image is
    the content flipped or shifted a little, so that the batch's images differ."""
    content, style = images or default_images()
    options = Options(
        size=size, steps=steps, device=device, backend="torch", precision=precision, pyramid_start=0, batch_size=batch
    )
    stylizer = Stylizer(style, options)
    base = resize_longest(content, size)
    contents = [base.roll(shifts=3 * i, dims=-1) for i in range(batch)]
    stylizer.stylize_many(contents)
    times = []
    for _ in range(rounds):
        synchronize(stylizer.device)
        start = time.perf_counter()
        stylizer.stylize_many(contents)
        synchronize(stylizer.device)
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    return {
        "batch": batch,
        "size": size,
        "image": list(base.shape),
        "precision": stylizer.precision.name,
        "steps": steps,
        "device": str(stylizer.device),
        "seconds": seconds,
        "images_per_second": batch / seconds,
        "seconds_all": times,
    }
