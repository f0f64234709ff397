"""Peak memory of a block of work, and the memory estimate against the allocator's peak."""

from __future__ import annotations

import contextlib
import gc
import json
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from ..image import resize_longest
from ..memory import process_status_kb
from ..options import Options
from ..stylizer import Stylizer
from .machine import default_images, synchronize


class PeakMemory:
    """Peak memory added within a block: CUDA allocator peak, or (Linux) the process's peak RSS, above
    the amount in use when the block began."""

    def __init__(self, device: torch.device):
        self.device = device
        self.kind = "cuda_max_allocated" if device.type == "cuda" else "cpu_peak_rss"
        self.peak_mb: float | None = None
        self._segments: list[float | None] = []  # peaks of the parts before each paused block

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            self._base = _reset_peak_rss()
        return self

    def _peak_so_far(self) -> float | None:
        if self.device.type == "cuda":
            return (torch.cuda.max_memory_allocated(self.device) - self._base) / 2**20
        peak = process_status_kb("VmHWM") if self._base is not None else None
        return None if peak is None else (peak - self._base) / 1024

    @contextlib.contextmanager
    def paused(self):
        """Memory used within this block (and freed by its end) is not counted: the peak so far is kept,
        and the peak counter restarts after the block — for a probe measured beside the work."""
        self._segments.append(self._peak_so_far())
        try:
            yield
        finally:
            if self.device.type == "cuda":
                synchronize(self.device)
                torch.cuda.reset_peak_memory_stats(self.device)
            elif self._base is not None:
                _reset_peak_rss()

    def __exit__(self, *exc) -> None:
        peaks = [p for p in [*self._segments, self._peak_so_far()] if p is not None]
        self.peak_mb = max(peaks) if peaks else None


def _reset_peak_rss() -> int | None:
    # Writing 5 to clear_refs resets VmHWM (the peak RSS) to the current RSS (Linux ≥ 4.0).
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    return process_status_kb("VmRSS")


def allocator_peak(fn: Callable[[], object], device: torch.device) -> int:
    """The most bytes that allocations made during ``fn()`` held at once in torch's allocator for
    ``device``: the CUDA allocator's peak statistics, or on a CPU the profiler's memory events (the
    resident set would add the C allocator's caching and the interpreter's own, and the allocator's
    running total would count frees of older tensors against the peak)."""
    gc.collect()  # else garbage of earlier work, freed during fn(), would hide part of its peak
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(trace))
        events = [e for e in json.loads(trace.read_text())["traceEvents"] if e.get("name") == "[memory]"]
    live: dict[int, int] = {}
    held = peak = 0
    for event in sorted(events, key=lambda e: e["ts"]):
        a = event["args"]
        if a.get("Device Type", 0) != 0:  # not the CPU's
            continue
        if a["Bytes"] > 0:
            live[a["Addr"]] = a["Bytes"]
            held += a["Bytes"]
            peak = max(peak, held)
        elif a["Addr"] in live:
            held -= live.pop(a["Addr"])
    return peak


def measure_memory(
    size: int,
    precision: str = "bf16",
    checkpoint: str = "off",
    device: str = "auto",
    steps: int = 4,
    impl: str = "auto",
    images: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict:
    """The memory estimate of a run at one scale against the allocator's peak during it (the first run
    of a fresh model, as a CLI run is), both beyond what is loaded before it: the network's weights and,
    on a CPU, the content image."""
    content, style = images or default_images()
    options = Options(
        size=size,
        steps=steps,
        device=device,
        backend="torch",
        precision=precision,
        checkpoint=checkpoint,
        impl=impl,
        pyramid_start=0,
    )
    stylizer = Stylizer(style, options)
    content = resize_longest(content, size)
    plan = stylizer.plan(content)
    estimate = plan.estimate
    peak = allocator_peak(lambda: stylizer.stylize_tensor(content, plan=plan), stylizer.device)
    return {
        "size": size,
        "image": list(content.shape),
        "precision": plan.precision.name,
        "checkpoint": checkpoint,
        "impl": impl,
        "device": str(stylizer.device),
        "steps": steps,
        "estimate_parts": {k: getattr(estimate, k) for k in estimate.PARTS},
        "estimate_bytes": estimate.beyond_loaded,
        "peak_bytes": peak,
        "estimate_over_peak": estimate.beyond_loaded / peak,
    }
