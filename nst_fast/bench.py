"""Measurements shared by ``nst-fast bench`` and the pytest-benchmark suites in benchmarks/.

Every timing synchronises the device before reading the clock, follows warm-up iterations, and is
reported as the median of its rounds. Peak memory is what a configuration adds at its peak, from
building the backend (network, targets) to the last timed iteration: the CUDA allocator's peak on a
GPU, the process's peak resident set on a CPU — where each configuration runs in a process of its own,
since memory that the C allocator has taken is not given back and would hide the next peak.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .image import load_image, resize_longest
from .memory import process_status_kb
from .options import Options


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

    @property
    def iterations_per_second(self) -> float:
        return 1000.0 / self.ms_median


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def machine_info() -> dict:
    """What the numbers were measured on: CPU, GPU, driver, versions, threads, commit."""
    info = {
        "host_cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "driver": _nvidia_driver(),
        "commit": _git_commit(),
    }
    from . import _ext

    info["extension"] = _ext.AVAILABLE
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _nvidia_driver() -> str | None:
    if not torch.cuda.is_available():
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True)  # fmt: skip
        return out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=10, check=True)  # fmt: skip
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


class PeakMemory:
    """Peak memory added within a block: CUDA allocator peak, or (Linux) the process's peak RSS, above
    the amount in use when the block began."""

    def __init__(self, device: torch.device):
        self.device = device
        self.kind = "cuda_max_allocated" if device.type == "cuda" else "cpu_peak_rss"
        self.peak_mb: float | None = None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            self._base = _reset_peak_rss()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak_mb = (torch.cuda.max_memory_allocated(self.device) - self._base) / 2**20
        elif self._base is not None:
            peak = process_status_kb("VmHWM")
            self.peak_mb = None if peak is None else (peak - self._base) / 1024


def allocator_peak(fn: Callable[[], object], device: torch.device) -> int:
    """The most bytes that allocations made during ``fn()`` held at once in torch's allocator for
    ``device``: the CUDA allocator's peak statistics, or on a CPU the profiler's memory events (the
    resident set would add the C allocator's caching and the interpreter's own, and the allocator's
    running total would count frees of older tensors against the peak)."""
    import gc
    import tempfile

    gc.collect()  # else garbage of earlier work, freed during fn(), would hide part of its peak
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile

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


def measure_memory(size: int, precision: str = "bf16", checkpoint: str = "off", device: str = "auto", steps: int = 4,
                   impl: str = "auto", images: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict:  # fmt: skip
    """The memory estimate of a run at one scale against the allocator's peak during it (the first run
    of a fresh model, as a CLI run is), both beyond what is loaded before it: the network's weights and,
    on a CPU, the content image."""
    from .stylizer import Stylizer

    content, style = images or default_images()
    options = Options(size=size, steps=steps, device=device, backend="torch", precision=precision,
                      checkpoint=checkpoint, impl=impl, pyramid_start=0)  # fmt: skip
    stylizer = Stylizer(style, options)
    content = resize_longest(content, size)
    estimate = stylizer.memory_estimate(content)
    peak = allocator_peak(lambda: stylizer.stylize_tensor(content), stylizer.device)
    return {"size": size, "image": list(content.shape), "precision": stylizer.precision.name, "checkpoint": checkpoint,
            "impl": impl, "device": str(stylizer.device), "steps": steps,
            "estimate_parts": {k: getattr(estimate, k) for k in estimate.PARTS},
            "estimate_bytes": estimate.beyond_loaded, "peak_bytes": peak,
            "estimate_over_peak": estimate.beyond_loaded / peak}  # fmt: skip


def _reset_peak_rss() -> int | None:
    # Writing 5 to clear_refs resets VmHWM (the peak RSS) to the current RSS (Linux ≥ 4.0).
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    return process_status_kb("VmRSS")


# --- backends ---------------------------------------------------------------------------------------
# A backend turns (options, content, style) into a function that runs one optimization iteration and
# returns the loss tensor. The engine and ONNX Runtime backends register here as they arrive.

StepFactory = Callable[[Options, torch.Tensor, torch.Tensor], Callable[[], torch.Tensor]]


def _reference_step(options: Options, content: torch.Tensor, style: torch.Tensor) -> Callable[[], torch.Tensor]:
    from . import reference
    from .stylizer import Stylizer

    options = options.replace(backend="reference")
    stylizer = Stylizer(style, options)
    content = content.to(stylizer.device)
    loss_fn = reference.build_loss(stylizer.model, content, stylizer.style_targets, options)
    image = content.clone().requires_grad_(True)

    def step() -> torch.Tensor:
        image.grad = None
        loss, _ = loss_fn(stylizer.model(image), image)
        loss.backward()
        return loss.detach()

    return step


def _onnxruntime_step(options: Options, content: torch.Tensor, style: torch.Tensor) -> Callable[[], torch.Tensor]:
    """One loss-and-gradient evaluation of the step graph in ONNX Runtime (providers as the loop chooses)."""
    from . import reference
    from .onnx.backend import OrtStep, _requested_providers
    from .stylizer import Stylizer

    stylizer = Stylizer(style, options)
    content = content.to(stylizer.device)
    loss_fn = reference.build_loss(stylizer.model, content, stylizer.style_targets, options)
    run = OrtStep(stylizer.model, loss_fn, content, _requested_providers(options))
    image = content.to(run.device, torch.float32).contiguous()

    def step() -> torch.Tensor:
        loss, _, _ = run(image)
        return torch.tensor(loss)

    return step


def _torch_step(precision: str) -> StepFactory:
    """One evaluation of the torch backend (nst_fast.engine) in ``precision``: what its loop repeats."""

    def factory(options: Options, content: torch.Tensor, style: torch.Tensor) -> Callable[[], torch.Tensor]:
        from . import engine, reference
        from .stylizer import Stylizer

        stylizer = Stylizer(style, options.replace(precision=precision))
        content = content.to(stylizer.device)
        loss_fn = reference.build_loss(stylizer.model, content, stylizer.style_targets, options)
        stylizer.model.to(memory_format=torch.channels_last)
        image = content.clone().contiguous(memory_format=torch.channels_last).requires_grad_(True)
        resolved = engine.resolve_precision(precision, stylizer.device)
        checkpoint = engine.use_checkpointing(options, stylizer.model, image, resolved)
        evaluate = engine._Evaluator(stylizer.model, loss_fn, image, resolved, checkpoint)
        return lambda: evaluate()[0]

    return factory


def _torch_precisions() -> dict[str, StepFactory]:
    """fp32 and bf16 everywhere; fp16 and tf32 where they are native (a GPU)."""
    names = ["fp32", "bf16"] + (["tf32", "fp16"] if torch.cuda.is_available() else [])
    return {name: _torch_step(name) for name in names}


BACKENDS: dict[str, dict[str, StepFactory]] = {
    "reference": {"fp32": _reference_step},
    "torch": _torch_precisions(),
    "onnxruntime": {"fp32": _onnxruntime_step},
}


# A loop runs a whole optimization: (options, content, style, callback) → image. Its callback's
# Iterate.loss is trusted as the float32 reference loss only for the reference itself; time-to-quality
# evaluates every other loop's iterates with the reference's loss, off the clock.
Loop = Callable[[Options, torch.Tensor, torch.Tensor, Callable], torch.Tensor]


def _reference_loop(options: Options, content: torch.Tensor, style: torch.Tensor, callback: Callable) -> torch.Tensor:
    from .stylizer import Stylizer

    return Stylizer(style, options.replace(backend="reference")).stylize_tensor(content, callback)


def _onnxruntime_loop(options: Options, content: torch.Tensor, style: torch.Tensor, callback: Callable) -> torch.Tensor:
    from .stylizer import Stylizer

    return Stylizer(style, options.replace(backend="onnxruntime")).stylize_tensor(content, callback)


def _torch_loop(precision: str) -> Loop:
    def loop(options: Options, content: torch.Tensor, style: torch.Tensor, callback: Callable) -> torch.Tensor:
        from .stylizer import Stylizer

        return Stylizer(style, options.replace(backend="torch", precision=precision)).stylize_tensor(content, callback)

    return loop


LOOPS: dict[str, dict[str, Loop]] = {
    "reference": {"fp32": _reference_loop},
    "torch": {name: _torch_loop(name) for name in _torch_precisions()},
    "onnxruntime": {"fp32": _onnxruntime_loop},
}


@dataclass
class Quality:
    """How long a loop takes to reach the loss that the reference reaches after ``steps`` iterations,
    and the loss it has itself after ``steps`` iterations (both judged by the float32 reference loss)."""

    backend: str
    precision: str
    size: int
    steps: int
    target_loss: float
    seconds_to_target: float | None  # None: not reached within 2 × ``steps`` iterations
    steps_to_target: int | None
    loss_at_steps: float  # the float32 reference loss of the output of its run of ``steps`` iterations
    reference_seconds: float  # the reference's time for ``steps`` iterations

    @property
    def speedup(self) -> float | None:
        return None if self.seconds_to_target is None else self.reference_seconds / self.seconds_to_target


class _Done(Exception):
    """Raised from a callback to end a loop early."""


def time_to_quality(size: int = 256, steps: int = 300, device: str = "auto", backends: list[str] | None = None,
                    images: tuple[torch.Tensor, torch.Tensor] | None = None) -> list[Quality]:  # fmt: skip
    """Wall time until each loop's output reaches the reference's loss after ``steps`` L-BFGS iterations,
    and the loss of each loop's output after ``steps`` iterations.

    Each loop runs ``steps`` iterations; when it has not reached the target by then, it runs again (the
    same iterates: the runs are deterministic) until it does, or up to 2 × ``steps``. Its iterates and
    its output are judged by the float32 reference loss, off the clock.
    """
    from . import reference
    from .stylizer import Stylizer

    content, style = images or default_images()
    options = Options(size=size, steps=steps, device=device)
    ref_trace: list[tuple[float, float]] = []
    _reference_loop(options, content, style, lambda it: ref_trace.append((it.elapsed, it.loss)))
    target, ref_seconds = ref_trace[-1][1], ref_trace[-1][0]
    judge = Stylizer(style, options)
    judge_content = resize_longest(content, size).to(judge.device)
    judge_loss = reference.build_loss(judge.model, judge_content, judge.style_targets, options)
    hit = next(i for i, (_, loss) in enumerate(ref_trace) if loss <= target)
    results = [Quality("reference", "fp32", size, steps, target, ref_trace[hit][0], hit + 1, target, ref_seconds)]

    def judged(image: torch.Tensor) -> float:
        return reference.evaluate_loss(judge.model, judge_loss, image.to(judge.device))["total"]

    for backend in backends or list(LOOPS):
        for precision, loop in LOOPS[backend].items():
            if backend == "reference":
                continue
            reached: list[tuple[int, float]] = []
            paused, judged_from = 0.0, 1

            def watch(it, reached=reached):
                nonlocal paused
                # it.elapsed is host time; on a GPU the step may still be queued: wait for it, on the clock.
                t0 = time.perf_counter()
                synchronize(judge.device)
                elapsed = it.elapsed + (time.perf_counter() - t0) - paused
                t1 = time.perf_counter()
                if not reached and it.step >= judged_from and judged(it.image) <= target:
                    reached.append((it.step, elapsed))
                    if it.step > steps:
                        raise _Done
                paused += time.perf_counter() - t1

            final = judged(loop(options, content, style, watch))
            if not reached:
                paused, judged_from = 0.0, steps + 1  # its first ``steps`` iterates did not reach it
                with contextlib.suppress(_Done):
                    loop(options.replace(steps=2 * steps), content, style, watch)
            step_hit, seconds = reached[0] if reached else (None, None)
            results.append(Quality(backend, precision, size, steps, target, seconds, step_hit, final, ref_seconds))
    return results


def default_images() -> tuple[torch.Tensor, torch.Tensor]:
    """The shared test photo and painting when ../shared/images is there, else the built-in samples."""
    shared = Path(__file__).resolve().parents[2] / "shared" / "images"
    if (shared / "tubingen.jpg").is_file() and (shared / "starry_night.jpg").is_file():
        return load_image(shared / "tubingen.jpg"), load_image(shared / "starry_night.jpg")
    from .samples import sample_content, sample_style

    return load_image(sample_content()), load_image(sample_style())


def measure_step(
    backend: str = "reference",
    precision: str = "fp32",
    size: int = 256,
    device: str = "auto",
    rounds: int = 5,
    warmup: int = 2,
    images: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> Measurement:
    """Median time of one optimization iteration of ``backend`` in ``precision`` at ``size`` px."""
    if backend not in BACKENDS or precision not in BACKENDS[backend]:
        available = ", ".join(f"{b}:{p}" for b, ps in BACKENDS.items() for p in ps)
        raise ValueError(f"no backend {backend!r} in precision {precision!r}; available: {available}")
    content, style = images or default_images()
    options = Options(size=size, device=device)
    content = resize_longest(content, size)
    with PeakMemory(_device(device)) as memory:
        step = BACKENDS[backend][precision](options, content, style)
        for _ in range(warmup):
            step()
        dev = _device(device)
        synchronize(dev)
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            loss = step()
            synchronize(dev)
            times.append((time.perf_counter() - start) * 1000)
    return Measurement(backend, precision, size, str(dev), list(content.shape), statistics.median(times), times,
                       memory.peak_mb, memory.kind, float(loss))  # fmt: skip


def measure_loop(precision: str = "bf16", graph: str = "eager", size: int = 512, device: str = "auto", steps: int = 50,
                 rounds: int = 3, images: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict:  # fmt: skip
    """Median milliseconds per iteration of the torch backend's whole loop — evaluation, gradient,
    optimizer update, best-iterate tracking, and with ``graph="cuda"`` the capture each run does — over
    runs of ``steps`` iterations at one scale, after a first run (torch.compile compiles there, once per
    model and size), whose time is reported as ``first_run_s``. Each run ends by copying the image to
    the host, which waits for the device."""
    from .stylizer import Stylizer

    content, style = images or default_images()
    options = Options(size=size, steps=steps, device=device, backend="torch", precision=precision, graph=graph,
                      pyramid_start=0)  # one scale: every iteration at ``size``  # fmt: skip
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
    return {"precision": precision, "graph": graph, "size": size, "steps": steps, "device": str(stylizer.device),
            "ms_per_iteration_median": statistics.median(times), "ms_all": times, "first_run_s": first}  # fmt: skip


def measure_step_isolated(backend: str, precision: str, size: int, device: str, rounds: int, warmup: int) -> Measurement:
    """:func:`measure_step` in a fresh Python process (for a CPU's peak-memory figure)."""
    args = [sys.executable, "-m", "nst_fast.bench", json.dumps(dict(backend=backend, precision=precision, size=size,
            device=device, rounds=rounds, warmup=warmup))]  # fmt: skip
    out = subprocess.run(args, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"benchmark process failed: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}")
    return Measurement(**json.loads(out.stdout.strip().splitlines()[-1]))


def _device(name: str) -> torch.device:
    from .stylizer import resolve_device

    return resolve_device(name)


def run(
    sizes: list[int],
    backends: list[str] | None = None,
    device: str = "auto",
    rounds: int = 5,
    warmup: int = 2,
    progress: Callable[[Measurement], None] | None = None,
) -> list[Measurement]:
    """Every (backend, precision) × size, smallest size first."""
    isolate = _device(device).type == "cpu"
    images = None if isolate else default_images()
    results = []
    for backend in backends or list(BACKENDS):
        for precision in BACKENDS[backend]:
            for size in sorted(sizes):
                if isolate:
                    m = measure_step_isolated(backend, precision, size, device, rounds, warmup)
                else:
                    m = measure_step(backend, precision, size, device, rounds, warmup, images)
                results.append(m)
                if progress is not None:
                    progress(m)
    return results


def format_table(results: list[Measurement]) -> str:
    header = f"{'backend':<12} {'precision':<9} {'device':<7} {'size':>5} {'image':>11} {'ms/iter':>9} {'it/s':>7} {'peak MiB':>9}"
    lines = [header, "-" * len(header)]
    for m in results:
        mem = "-" if m.peak_memory_mb is None else f"{m.peak_memory_mb:.0f}"
        image = f"{m.image[-1]}×{m.image[-2]}"
        lines.append(f"{m.backend:<12} {m.precision:<9} {m.device:<7} {m.size:>5} {image:>11} "
                     f"{m.ms_median:>9.1f} {m.iterations_per_second:>7.2f} {mem:>9}")  # fmt: skip
    return "\n".join(lines)


def save_json(path: str | os.PathLike, results: list[Measurement]) -> None:
    from .atomic import atomic_write_text

    data = {"machine": machine_info(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "results": [{**asdict(m), "iterations_per_second": m.iterations_per_second} for m in results]}  # fmt: skip
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def plot(path: str | os.PathLike, results: list[Measurement], title: str | None = None) -> None:
    """Iterations per second against resolution (log–log), and peak memory against resolution."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    from .atomic import atomic_save

    fig, (speed, memory) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    series: dict[str, list[Measurement]] = {}
    for m in results:
        series.setdefault(f"{m.backend} {m.precision} ({m.device})", []).append(m)
    for label, ms in series.items():
        ms = sorted(ms, key=lambda m: m.size)
        sizes = [m.size for m in ms]
        speed.plot(sizes, [m.iterations_per_second for m in ms], marker="o", label=label)
        if all(m.peak_memory_mb is not None for m in ms):
            memory.plot(sizes, [m.peak_memory_mb for m in ms], marker="o", label=label)
    for ax, ylabel in ((speed, "iterations per second"), (memory, f"peak memory added (MiB, {results[0].memory_kind})")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("image size (longest side, px)")
        ax.set_ylabel(ylabel)
        ax.set_xticks(sorted({m.size for m in results}), [str(s) for s in sorted({m.size for m in results})])
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:g}"[0] in "25" else ""))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    speed.set_title("speed: one optimization iteration")
    memory.set_title("memory")
    info = machine_info()
    fig.suptitle(title or f"nst-fast on {info['gpu'] or info['host_cpu']} (torch {info['torch']})", fontsize=10)
    atomic_save(path, lambda f: fig.savefig(f, format=Path(path).suffix.lstrip(".") or "png", dpi=120))
    plt.close(fig)


if __name__ == "__main__":
    # One isolated measurement, as measure_step_isolated runs it: JSON arguments in, JSON out.
    print(json.dumps(asdict(measure_step(**json.loads(sys.argv[1])))))
