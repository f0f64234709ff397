"""The device's reachable peak, measured in the same run as the work it is compared with.

Reachable, not nominal: what this torch reaches on this device on a large square matrix product in a
given precision — the best case of the operation the convolutions and Gram matrices are made of. A
configuration's fraction of peak is its achieved FLOP/s (the iteration's FLOPs, :mod:`.flops`, over
its median time) over the peak of its precision: near 1, the software leaves little of the device
unused; far below, the time goes elsewhere (memory traffic, small layers, overheads).

- :func:`measure_peak`: matrix-product FLOP/s in one precision (fp32, TF32, bf16, fp16): several sides,
  grown until one product is long enough to time (capped per device), each timed in rounds long enough
  to time (about ``round_seconds``), after warm-up, median of ``rounds``, the device synchronised; the
  best side's median is the peak;
- :func:`probe`: a short measurement of one side, taken beside each timed round of a configuration;
- :func:`measure_bandwidth`: a large copy's bytes moved per second (read and write), the memory side;
- :func:`efficiency`: a step measurement's FLOPs, achieved FLOP/s and fraction of peak.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from dataclasses import asdict, dataclass, field

import torch

from ..options import Options
from .flops import options_flops
from .machine import synchronize

# The matrix product's dtype per precision; TF32 is float32 with the tensor cores' TF32 mode on.
MATMUL_DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Matrix sides tried: 768 doubling (768, 1536, 3072, ...) up to the first whose product takes
# ``min_product_seconds`` or the device's cap, and the peak is the best of their medians. Not powers of
# two: a power-of-two leading dimension maps a column's elements onto few cache sets, and a 4096² bf16
# product on this 2-core EPYC ran at 203-357 GFLOP/s from round to round where 768² to 1536² products
# ran at 390-410 (benchmarks/NOTES.md §14). Several sides, because no one shape is every device's best:
# on a CPU the small products that fit the caches are as fast as any, on a GPU the largest.
FIRST_SIDE = 768
MAX_SIDE = {"cpu": 6144, "cuda": 16384}


@dataclass
class Peak:
    """Reachable FLOP/s of a square matrix product in one precision on one device: the best side's."""

    precision: str
    dtype: str
    device: str
    side: int  # the best side: its matrices are side × side
    products_per_round: int
    rounds: int
    flops_per_s: float  # the best side's median over the rounds
    flops_per_s_all: list[float]  # the best side's rounds
    by_side: dict[int, float] = field(default_factory=dict)  # every side tried: its median FLOP/s

    def as_dict(self) -> dict:
        return asdict(self)


@contextlib.contextmanager
def _tf32(enabled: bool, device: torch.device):
    """TF32 matrix products on or off for the measurement, as they were afterwards."""
    if device.type != "cuda":
        yield
        return
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def _seconds(fn, device: torch.device, repeat: int) -> float:
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    synchronize(device)
    return time.perf_counter() - start


def _sides(cap: int) -> list[int]:
    """The sides to try, smallest first: 768 doubling up to ``cap`` (just ``cap`` below 768)."""
    if cap < FIRST_SIDE:
        return [cap]
    sides = [FIRST_SIDE]
    while sides[-1] * 2 <= cap:
        sides.append(sides[-1] * 2)
    return sides


def _measure_side(side, dtype, dev, gen, rounds, round_seconds):
    """(FLOP/s of each round, products per round, seconds of one product) of a side × side product."""
    a = torch.rand(side, side, generator=gen).to(dev, dtype)
    b = torch.rand(side, side, generator=gen).to(dev, dtype)
    out = torch.empty(side, side, dtype=dtype, device=dev)

    def product():
        torch.mm(a, b, out=out)

    product()  # warm-up: the library's kernel choice, the first touch of the memory
    one = _seconds(product, dev, 1)
    per_round = max(1, math.ceil(round_seconds / max(one, 1e-9)))
    _seconds(product, dev, per_round)  # warm-up at the round's length (clocks, caches)
    flops = 2 * side**3 * per_round
    return [flops / _seconds(product, dev, per_round) for _ in range(rounds)], per_round, one


def measure_peak(
    precision: str,
    device: str | torch.device = "cpu",
    rounds: int = 5,
    round_seconds: float = 0.25,
    min_product_seconds: float = 0.05,
    max_side: int | None = None,
) -> Peak:
    """The best median FLOP/s (2·n³ per product) of n×n matrix products in ``precision`` on ``device``,
    over the sides of :func:`_sides` up to the first whose one product takes ``min_product_seconds``."""
    if precision not in MATMUL_DTYPES:
        raise ValueError(f"no matrix-product peak for precision {precision!r}; use {', '.join(MATMUL_DTYPES)}")
    dev = torch.device(device)
    if precision == "tf32" and dev.type != "cuda":
        raise ValueError("TF32 is a CUDA format: no TF32 peak on " + dev.type)
    dtype = MATMUL_DTYPES[precision]
    gen = torch.Generator().manual_seed(0)
    tried = {}
    with _tf32(precision == "tf32", dev), torch.no_grad():
        for side in _sides(max_side or MAX_SIDE.get(dev.type, 4096)):
            rates, per_round, one = _measure_side(side, dtype, dev, gen, rounds, round_seconds)
            tried[side] = (statistics.median(rates), rates, per_round)
            if one >= min_product_seconds:
                break
    best = max(tried, key=lambda side: tried[side][0])
    median, rates, per_round = tried[best]
    by_side = {side: t[0] for side, t in tried.items()}
    return Peak(precision, str(dtype).replace("torch.", ""), str(dev), best, per_round, rounds, median, rates, by_side)


def probe(precision: str, side: int, device: str | torch.device, seconds: float = 0.2) -> float:
    """FLOP/s of ``side``² products in ``precision`` for about ``seconds``: a short peak measurement to
    take beside each timed round of other work, so that a fraction of peak compares two figures of the
    same moment (this project's CPU drifts 5-20% over minutes, and both figures drift together:
    benchmarks/NOTES.md §14). Its matrices are freed on return."""
    dev = torch.device(device)
    dtype = MATMUL_DTYPES[precision]
    gen = torch.Generator().manual_seed(0)
    with _tf32(precision == "tf32", dev), torch.no_grad():
        a = torch.rand(side, side, generator=gen).to(dev, dtype)
        b = torch.rand(side, side, generator=gen).to(dev, dtype)
        out = torch.empty(side, side, dtype=dtype, device=dev)

        def product():
            torch.mm(a, b, out=out)

        one = _seconds(product, dev, 1)  # (also the warm-up)
        count = max(1, math.ceil(seconds / max(one, 1e-9)))
        return 2 * side**3 * count / _seconds(product, dev, count)


def measure_peaks(precisions, device: str | torch.device = "cpu", **kwargs) -> dict[str, Peak]:
    """:func:`measure_peak` for each distinct precision (TF32 only on CUDA), in the order given."""
    dev = torch.device(device)
    wanted = [p for p in dict.fromkeys(precisions) if p in MATMUL_DTYPES and (p != "tf32" or dev.type == "cuda")]
    return {p: measure_peak(p, dev, **kwargs) for p in wanted}


def measure_bandwidth(device: str | torch.device = "cpu", mib: int | None = None, rounds: int = 5) -> dict:
    """Bytes per second of copying a ``mib`` MiB float32 tensor into another (each byte read once and
    written once): the memory side of the machine, against which the elementwise work is bound."""
    dev = torch.device(device)
    mib = mib or (1024 if dev.type == "cuda" else 256)
    src = torch.ones(mib * 2**20 // 4, device=dev)
    dst = torch.empty_like(src)
    dst.copy_(src)  # warm-up: first touch
    moved = 2 * src.numel() * 4
    rates = [moved / _seconds(lambda: dst.copy_(src), dev, 1) for _ in range(rounds)]
    median = statistics.median(rates)
    return {"device": str(dev), "mib": mib, "rounds": rounds, "bytes_per_s": median, "bytes_per_s_all": rates}


def efficiency(
    height: int,
    width: int,
    seconds: float,
    precision: str,
    peaks: dict[str, Peak],
    options: Options | None = None,
    rounds: list[float] | None = None,
    beside: list[float] | None = None,
) -> dict:
    """One iteration's FLOPs at ``height``×``width`` (the default loss layers, unless ``options``), the FLOP/s
    achieved when it takes ``seconds``, and its fraction of peak: with ``beside`` (the peak probed just
    before each of the ``rounds``, in seconds), the median of each round's FLOP/s over its own probe;
    else against the peak measured in ``precision`` (None where it was not measured)."""
    work = options_flops(options or Options(), height, width)
    achieved = work.total / seconds
    peak = peaks.get(precision)
    if beside and rounds and len(beside) == len(rounds):
        fraction = statistics.median(work.total / t / p for t, p in zip(rounds, beside))
    else:
        fraction = achieved / peak.flops_per_s if peak else None
    return {
        "flops_per_iteration": work.total,
        "flops": work.as_dict(),
        "achieved_flops_per_s": achieved,
        "peak_precision": precision if peak or beside else None,
        "peak_beside_flops_per_s": statistics.median(beside) if beside else None,
        "fraction_of_peak": fraction,
    }
