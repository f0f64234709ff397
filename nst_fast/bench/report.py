"""The measurements as tables, a JSON file with the machine and the workload they ran on, and a plot."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path

from matplotlib.figure import Figure  # a figure of its own, not pyplot's: no global backend to switch
from matplotlib.ticker import FuncFormatter

from .. import __version__
from ..atomic import atomic_save, atomic_write_text
from ..options import Options
from .compare import SCHEMA, SCHEMA_VERSION
from .machine import device_details, image_digest, images_source, machine_info
from .peak import Peak, efficiency
from .quality import Throughput, jsonable_options
from .steps import Measurement


def format_table(results: list[Measurement], peaks: dict[str, Peak] | None = None) -> str:
    """One line per measurement; with ``peaks``, its FLOPs, achieved FLOP/s and fraction of peak too."""
    header = (
        f"{'backend':<12} {'precision':<9} {'device':<7} {'size':>5} {'image':>11} {'ms/iter':>9} {'it/s':>7} "
        f"{'peak MiB':>9}"
    )
    if peaks is not None:
        header += f" {'GFLOP/it':>9} {'GFLOP/s':>8} {'of peak':>7}"
    lines = [header, "-" * len(header)]
    for m in results:
        mem = "-" if m.peak_memory_mb is None else f"{m.peak_memory_mb:.0f}"
        image = f"{m.image[-1]}×{m.image[-2]}"
        line = (
            f"{m.backend:<12} {m.precision:<9} {m.device:<7} {m.size:>5} {image:>11} "
            f"{m.ms_median:>9.1f} {m.iterations_per_second:>7.2f} {mem:>9}"
        )
        if peaks is not None:
            e = measurement_efficiency(m, peaks)
            share = "-" if e["fraction_of_peak"] is None else f"{e['fraction_of_peak']:.2f}"
            line += f" {e['flops_per_iteration'] / 1e9:>9.1f} {e['achieved_flops_per_s'] / 1e9:>8.1f} {share:>7}"
        lines.append(line)
    return "\n".join(lines)


def format_peaks(peaks: dict[str, Peak], bandwidth: dict | None = None) -> str:
    """The measured peaks on one line."""
    parts = [f"{p} {peak.flops_per_s / 1e9:.0f} GFLOP/s ({peak.side}²)" for p, peak in peaks.items()]
    line = "reachable peak (matrix product, median): " + (", ".join(parts) or "not measured")
    if bandwidth:
        line += f"; memory bandwidth (copy) {bandwidth['bytes_per_s'] / 1e9:.1f} GB/s"
    return line


def format_quality(rows: list[Throughput]) -> str:
    """One line per size and batch: images per second to the fixed quality, end to end."""
    header = (
        f"{'size':>5} {'image':>10} {'batch':>5} {'backend':<8} {'precision':<9} {'schedule':<14} "
        f"{'iterations':>10} {'seconds':>8} {'images/s':>9} {'loss/target':>11} {'GFLOP/s':>8}"
    )
    lines = [header, "-" * len(header)]
    for q in rows:
        schedule = "default" if q.steps_factor == 1 else f"steps ×{q.steps_factor}"
        image = f"{q.image[1]}×{q.image[0]}"
        if q.reached:
            figures = (
                f"{q.iterations:>10} {q.seconds:>8.1f} {q.images_per_second:>9.3f} "
                f"{q.loss_reached / q.target_loss:>11.3f} {q.achieved_flops_per_s / 1e9:>8.1f}"
            )
        else:
            figures = f"{'not reached':>10}: {q.note}"
        lines.append(f"{q.size:>5} {image:>10} {q.batch:>5} {q.backend:<8} {q.precision:<9} {schedule:<14} {figures}")
    return "\n".join(lines)


def measurement_efficiency(m: Measurement, peaks: dict[str, Peak]) -> dict:
    """A step measurement's FLOPs per iteration, achieved FLOP/s and fraction of its precision's peak."""
    rounds = [ms / 1000 for ms in m.ms_all]
    return efficiency(m.image[-2], m.image[-1], m.ms_median / 1000, m.precision, peaks, None, rounds, m.peak_beside)


def result_rows(results: list[Measurement], peaks: dict[str, Peak] | None = None) -> list[dict]:
    """The step measurements as JSON rows, each with its FLOPs, achieved FLOP/s and fraction of peak."""
    rows = []
    for m in results:
        row = {**asdict(m), "iterations_per_second": m.iterations_per_second}
        rows.append({**row, **measurement_efficiency(m, peaks or {})})
    return rows


def benchmark_record(
    results: list[Measurement],
    peaks: dict[str, Peak] | None = None,
    bandwidth: dict | None = None,
    quality: list[Throughput] | None = None,
    workload: dict | None = None,
    device: str = "cpu",
) -> dict:
    """Everything a run measured, with the machine and the workload: the file ``--json`` writes
    (:data:`~nst_fast.bench.compare.SCHEMA`, read back by :func:`~nst_fast.bench.compare.load_record`)."""
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "nst_fast": __version__,
        "machine": {**machine_info(), "device": device_details(device)},
        "workload": workload or {},
        "peak": {p: peak.as_dict() for p, peak in (peaks or {}).items()},
        "bandwidth": bandwidth,
        "results": result_rows(results, peaks),
        "quality": [q.as_dict() for q in quality or []],
    }


def write_record(path: str | os.PathLike, record: dict) -> None:
    """A :func:`benchmark_record` as JSON, written atomically (a run rewrites it as each part ends)."""
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")


def workload_description(
    images: tuple, iteration: dict | None = None, quality: dict | None = None, options: Options | None = None
) -> dict:
    """What a run measured, machine-independent: the images (where from, their pixels' digests), the
    options, and each part's parameters; and how the FLOPs are counted."""
    content, style = images
    return {
        "images": images_source(),
        "content": image_digest(content),
        "style": image_digest(style),
        "content_shape": list(content.shape[-2:]),
        "options": jsonable_options(options or Options()),
        "flops": "per iteration and image: convolutions forward and backward to the input (no weight gradients), "
        "Gram matrices forward and backward as full products, elementwise work (nst_fast.bench.flops)",
        "peak": "per precision, the best median FLOP/s of square matrix products at several sides (768 doubling, "
        "none a power of two), after warm-up; then probed at that side just before every timed round of a "
        "configuration, whose fraction of peak is the median over its rounds of its FLOP/s over the probe "
        "before it (nst_fast.bench.peak)",
        "iteration": iteration,
        "quality": quality,
    }


def save_rows_json(path: str | os.PathLike, kind: str, rows: list[dict]) -> None:
    """Rows of one kind of measurement (``"batch"``, ...) with the machine, as JSON."""
    data = {"machine": machine_info(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), kind: rows}
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def plot(path: str | os.PathLike, results: list[Measurement], title: str | None = None) -> None:
    """Iterations per second against resolution (log–log), and peak memory against resolution."""
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    speed, memory = fig.subplots(1, 2)
    series: dict[str, list[Measurement]] = {}
    for m in results:
        series.setdefault(f"{m.backend} {m.precision} ({m.device})", []).append(m)
    for label, ms in series.items():
        ms = sorted(ms, key=lambda m: m.size)
        sizes = [m.size for m in ms]
        speed.plot(sizes, [m.iterations_per_second for m in ms], marker="o", label=label)
        if all(m.peak_memory_mb is not None for m in ms):
            memory.plot(sizes, [m.peak_memory_mb for m in ms], marker="o", label=label)
    for ax, ylabel in (
        (speed, "iterations per second"),
        (memory, f"peak memory added (MiB, {results[0].memory_kind})"),
    ):
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
