"""`nst-fast bench --json` files side by side: every figure of each machine, and its ratio to the first.

A file's figures (:func:`figures`) are keyed so that the same measurement on two machines meets:

- ``peak <precision>``: the reachable matrix-product FLOP/s;
- ``memory bandwidth``: bytes per second of a large copy;
- ``it/s``, ``GFLOP/s`` and ``of peak`` per backend, precision and size: one iteration;
- ``images/s`` per size and batch: the workload to the fixed quality (the headline), only between files
  whose target has the same key (the same images, options and reference iterations).

:func:`load_record` reads and checks a file (its schema and version); :func:`comparison` lines the figures up;
:func:`format_comparison` prints them as a text table (``--compare``), :func:`markdown_comparison` as
Markdown (benchmarks/report.py), :func:`plot_comparison` draws one line per machine.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

SCHEMA = "nst-fast-bench"
SCHEMA_VERSION = 2  # 1: the files before the schema was named (machine and results only)


@dataclass
class Figure:
    key: str  # what meets across files
    label: str
    unit: str
    value: float
    higher_is_better: bool = True


def load_record(path: str | os.PathLike) -> dict:
    """A ``nst-fast bench --json`` file, checked: ValueError naming the file when it is none."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a JSON file ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("machine"), dict):
        raise ValueError(f"{path}: not an nst-fast bench file (no machine)")  # noqa: TRY004 — the file's content
    if "schema" not in data and "results" in data:  # written before the schema had a name
        return {**data, "schema": SCHEMA, "schema_version": 1}
    if data.get("schema") != SCHEMA:
        raise ValueError(f"{path}: not an nst-fast bench file (schema {data.get('schema')!r})")
    version = data.get("schema_version")
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise ValueError(f"{path}: schema version {version!r}; this nst-fast reads versions up to {SCHEMA_VERSION}")
    return data


def machine_label(record: dict) -> str:
    """The machine in a few words: the GPU's name, or the CPU's with its core count."""
    m = record["machine"]
    if m.get("gpu"):
        return m["gpu"]
    return f"{m.get('host_cpu', 'CPU')} ({m.get('cores')} cores)"


def figures(record: dict) -> list[Figure]:
    """Every comparable figure of a file, in a stable order."""
    found: list[Figure] = []
    for precision, peak in (record.get("peak") or {}).items():
        found.append(
            Figure(f"peak {precision}", f"peak {precision} matrix product", "GFLOP/s", peak["flops_per_s"] / 1e9)
        )
    bandwidth = record.get("bandwidth")
    if bandwidth:
        found.append(Figure("bandwidth", "memory bandwidth (copy)", "GB/s", bandwidth["bytes_per_s"] / 1e9))
    for r in record.get("results", []):
        where = f"{r['backend']} {r['precision']} {r['size']} px"
        found.append(Figure(f"it/s {where}", f"{where}: iterations", "it/s", r["iterations_per_second"]))
        if r.get("achieved_flops_per_s") is not None:
            found.append(Figure(f"flops {where}", f"{where}: achieved", "GFLOP/s", r["achieved_flops_per_s"] / 1e9))
        if r.get("fraction_of_peak") is not None:
            found.append(
                Figure(f"fraction {where}", f"{where}: of {r['peak_precision']} peak", "×", r["fraction_of_peak"])
            )
    for q in record.get("quality", []):
        if q.get("images_per_second") is None:
            continue
        # The same workload only: the target's key names the images, the options and the reference's steps.
        where = f"{q['size']} px batch {q['batch']}"
        label = f"{where}: images/s to loss {q['target_loss']:.4g}"
        found.append(Figure(f"images/s {where} {q.get('target_key')}", label, "images/s", q["images_per_second"]))
    return found


@dataclass
class Row:
    label: str
    unit: str
    values: list[float | None]  # one per file

    def ratios(self) -> list[float | None]:
        """Each value over the first file's (None where either is missing)."""
        base = self.values[0]
        return [None if v is None or not base else v / base for v in self.values]


def comparison(records: list[dict]) -> list[Row]:
    """The figures of ``records`` lined up by key, in the order they first appear."""
    table: dict[str, Row] = {}
    for i, record in enumerate(records):
        for f in figures(record):
            row = table.setdefault(f.key, Row(f.label, f.unit, [None] * len(records)))
            row.values[i] = f.value
    return list(table.values())


def names(records: list[dict], paths: list[str | os.PathLike] | None = None) -> list[str]:
    """A column name per file: the machine, and the file's name where two machines read alike."""
    labels = [machine_label(r) for r in records]
    if paths is not None and len(set(labels)) < len(labels):
        labels = [f"{label} [{Path(p).name}]" for label, p in zip(labels, paths)]
    return labels


def _number(value: float | None, unit: str) -> str:
    if value is None:
        return "–"
    if unit == "×":
        return f"{value:.2f}"
    return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"


def format_comparison(records: list[dict], paths: list[str | os.PathLike] | None = None) -> str:
    """A text table: each figure, its value in each file, and the ratio of each later file to the first."""
    columns = names(records, paths)
    rows = comparison(records)
    head = ["figure", "unit", *columns, *(f"{c} / {columns[0]}" for c in columns[1:])]
    body = [
        [r.label, r.unit, *(_number(v, r.unit) for v in r.values), *(_ratio(x) for x in r.ratios()[1:])] for r in rows
    ]
    widths = [max(len(str(line[i])) for line in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(head, widths)))]
    lines.append("  ".join("-" * w for w in widths))
    for line in body:
        lines.append("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))))
    return "\n".join(lines)


def _ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def markdown_comparison(records: list[dict], paths: list[str | os.PathLike] | None = None) -> str:
    """The comparison as a Markdown table, the later files' ratios to the first in the last columns."""
    columns = names(records, paths)
    ratio_heads = [f"{c} / {columns[0]}" for c in columns[1:]]
    lines = [
        "| " + " | ".join(["figure", "unit", *columns, *ratio_heads]) + " |",
        "| --- | --- |" + " ---: |" * (len(columns) + len(ratio_heads)),
    ]
    for r in comparison(records):
        cells = [r.label, r.unit, *(_number(v, r.unit) for v in r.values), *(_ratio(x) for x in r.ratios()[1:])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_comparison(path: str | os.PathLike, records: list[dict], paths: list[str | os.PathLike] | None = None) -> None:
    """Two panels, one line per machine against image size (log–log): images per second at the fixed
    quality (batch 1), and the torch backend's fraction of peak per iteration in the precision of its
    quality runs (else its first)."""
    from matplotlib.figure import Figure as MplFigure  # its own figure, not pyplot's: no global backend
    from matplotlib.ticker import FuncFormatter

    from ..atomic import atomic_save

    fig = MplFigure(figsize=(11, 4.2), layout="constrained")
    speed, share = fig.subplots(1, 2)
    sizes: set[int] = set()
    for label, record in zip(names(records, paths), records):
        quality = sorted((q for q in record.get("quality", []) if q["batch"] == 1 and q.get("images_per_second")),
                         key=lambda q: q["size"])  # fmt: skip
        if quality:
            speed.plot([q["size"] for q in quality], [q["images_per_second"] for q in quality], marker="o", label=label)
            sizes.update(q["size"] for q in quality)
        torch_rows = [r for r in record.get("results", []) if r["backend"] == "torch" and r.get("fraction_of_peak")]
        if torch_rows:
            precision = quality[0]["precision"] if quality else torch_rows[0]["precision"]
            rows = sorted((r for r in torch_rows if r["precision"] == precision), key=lambda r: r["size"])
            if rows:
                share.plot([r["size"] for r in rows], [r["fraction_of_peak"] for r in rows], marker="o",
                           label=f"{label}, {precision}")  # fmt: skip
                sizes.update(r["size"] for r in rows)
    for ax in (speed, share):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("image size (longest side, px)")
        if sizes:
            ax.set_xticks(sorted(sizes), [str(s) for s in sorted(sizes)])
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    speed.set_yscale("log")
    speed.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    speed.set_ylabel("images per second at the fixed quality")
    speed.set_title("throughput: finished images (batch 1)")
    share.set_ylim(bottom=0)
    share.set_ylabel("fraction of the measured matrix-product peak")
    share.set_title("one iteration of the torch backend")
    fig.suptitle("nst-fast across machines", fontsize=10)
    atomic_save(path, lambda f: fig.savefig(f, format=Path(path).suffix.lstrip(".") or "png", dpi=120))
