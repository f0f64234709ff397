"""The device's reachable peak, measured in the same run as the work it is compared with.

Reachable, not nominal: what this torch reaches on this device on a large square matrix product in a
given precision — the best case of the operation the convolutions and Gram matrices are made of. A
configuration's fraction of peak is its achieved FLOP/s (the iteration's FLOPs, :mod:`.flops`, over
its median time) over the peak of its precision: near 1, the software leaves little of the device
unused; far below, the time goes elsewhere (memory traffic, small layers, overheads).

- :func:`measure_peak`: matrix-product FLOP/s in one precision (fp32, TF32, bf16, fp16), the size
  grown until one product is long enough to time (capped per device), a round long enough to time
  (about ``round_seconds``), after warm-up, median of ``rounds``, the device synchronised;
- :func:`measure_bandwidth`: a large copy's bytes moved per second (read and write), the memory side;
- :func:`efficiency`: a step measurement's FLOPs, achieved FLOP/s and fraction of peak.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from dataclasses import asdict, dataclass

import torch

from ..options import Options
from .flops import options_flops
from .machine import synchronize

# The matrix product's dtype per precision; TF32 is float32 with the tensor cores' TF32 mode on.
MATMUL_DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Matrix sides tried, 512 doubling: the first whose product takes ``min_product_seconds`` is used, else
# the largest the device allows (a 2-core CPU: 2048² in fp32, 4096² in bf16, each product 0.1-0.25 s).
MAX_SIDE = {"cpu": 4096, "cuda": 16384}


@dataclass
class Peak:
    """Reachable FLOP/s of a square matrix product in one precision on one device."""

    precision: str
    dtype: str
    device: str
    side: int  # the matrices are side × side
    products_per_round: int
    rounds: int
    flops_per_s: float  # median over the rounds
    flops_per_s_all: list[float]

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


def measure_peak(
    precision: str,
    device: str | torch.device = "cpu",
    rounds: int = 5,
    round_seconds: float = 0.25,
    min_product_seconds: float = 0.05,
    max_side: int | None = None,
) -> Peak:
    """Median FLOP/s (2·n³ per product) of a n×n matrix product in ``precision`` on ``device``."""
    if precision not in MATMUL_DTYPES:
        raise ValueError(f"no matrix-product peak for precision {precision!r}; use {', '.join(MATMUL_DTYPES)}")
    dev = torch.device(device)
    if precision == "tf32" and dev.type != "cuda":
        raise ValueError("TF32 is a CUDA format: no TF32 peak on " + dev.type)
    dtype = MATMUL_DTYPES[precision]
    cap = max_side or MAX_SIDE.get(dev.type, 4096)
    gen = torch.Generator().manual_seed(0)
    with _tf32(precision == "tf32", dev), torch.no_grad():
        side = min(512, cap)
        while True:
            a = torch.rand(side, side, generator=gen).to(dev, dtype)
            b = torch.rand(side, side, generator=gen).to(dev, dtype)
            out = torch.empty(side, side, dtype=dtype, device=dev)

            def product(a=a, b=b, out=out):
                torch.mm(a, b, out=out)

            product()  # warm-up: the library's kernel choice, the first touch of the memory
            one = _seconds(product, dev, 1)
            if one >= min_product_seconds or 2 * side > cap:
                break
            side *= 2
        per_round = max(1, math.ceil(round_seconds / max(one, 1e-9)))
        _seconds(product, dev, per_round)  # warm-up at the round's length (clocks, caches)
        flops = 2 * side**3 * per_round
        rates = [flops / _seconds(product, dev, per_round) for _ in range(rounds)]
    return Peak(
        precision, str(dtype).replace("torch.", ""), str(dev), side, per_round, rounds, statistics.median(rates), rates
    )


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
    height: int, width: int, seconds: float, precision: str, peaks: dict[str, Peak], options: Options | None = None
) -> dict:
    """One iteration's FLOPs at ``height``×``width`` (the default loss layers, unless ``options``), the FLOP/s
    achieved when it takes ``seconds``, and its fraction of the peak measured in ``precision`` (None
    where that precision's peak was not measured)."""
    work = options_flops(options or Options(), height, width)
    achieved = work.total / seconds
    peak = peaks.get(precision)
    return {
        "flops_per_iteration": work.total,
        "flops": work.as_dict(),
        "achieved_flops_per_s": achieved,
        "peak_precision": precision if peak else None,
        "fraction_of_peak": achieved / peak.flops_per_s if peak else None,
    }
