"""The step measurements as a table, a JSON file with the machine they ran on, and a plot."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path

from matplotlib.figure import Figure  # a figure of its own, not pyplot's: no global backend to switch
from matplotlib.ticker import FuncFormatter

from ..atomic import atomic_save, atomic_write_text
from .machine import machine_info
from .steps import Measurement


def format_table(results: list[Measurement]) -> str:
    header = f"{'backend':<12} {'precision':<9} {'device':<7} {'size':>5} {'image':>11} {'ms/iter':>9} {'it/s':>7} {'peak MiB':>9}"
    lines = [header, "-" * len(header)]
    for m in results:
        mem = "-" if m.peak_memory_mb is None else f"{m.peak_memory_mb:.0f}"
        image = f"{m.image[-1]}×{m.image[-2]}"
        lines.append(
            f"{m.backend:<12} {m.precision:<9} {m.device:<7} {m.size:>5} {image:>11} "
            f"{m.ms_median:>9.1f} {m.iterations_per_second:>7.2f} {mem:>9}"
        )
    return "\n".join(lines)


def save_json(path: str | os.PathLike, results: list[Measurement]) -> None:
    data = {
        "machine": machine_info(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "results": [{**asdict(m), "iterations_per_second": m.iterations_per_second} for m in results],
    }
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


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
