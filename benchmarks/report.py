"""Regenerate the results tables in benchmarks/README.md from benchmarks/results/*.json.

    python benchmarks/report.py          # rewrites the part of README.md between the markers

Three kinds of JSON live in results/: `nst-fast bench --json` files (per-iteration time and memory per
backend, precision and size), pytest-benchmark files (`make bench`: also the operator and the
time-to-quality suites), `benchmarks/loops.py` files (the whole loop per --graph mode),
`benchmarks/memory.py` files (the memory estimate against the allocator's peak), `benchmarks/batch.py`
or `nst-fast bench --batch-sizes` files (images per second against batch size) and
`benchmarks/sensitivity.py` files (how far rounding carries an optimization).
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
README = HERE / "README.md"
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def machine_line(m: dict) -> str:
    device = m.get("gpu") or f"{m.get('host_cpu')} ({m.get('cores')} cores, {m.get('torch_threads')} threads)"
    cuda = f", CUDA {m['cuda']}, driver {m.get('driver')}" if m.get("cuda") else ""
    return f"{device}; torch {m.get('torch')}{cuda}; commit {m.get('commit')}"


def bench_tables(path: Path, data: dict) -> list[str]:
    lines = [
        f"### `{path.name}` — `nst-fast bench`",
        "",
        f"Machine: {machine_line(data['machine'])}.",
        "",
        "| backend | precision | device | size | image | ms / iteration (median) | it/s | peak memory added (MiB) |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in data["results"]:
        mem = "–" if r["peak_memory_mb"] is None else f"{r['peak_memory_mb']:.0f}"
        lines.append(
            f"| {r['backend']} | {r['precision']} | {r['device']} | {r['size']} | {r['image'][3]}×{r['image'][2]} "
            f"| {r['ms_median']:.1f} | {r['iterations_per_second']:.2f} | {mem} |"
        )
    return lines + [""]


def loop_tables(path: Path, data: dict) -> list[str]:
    lines = [
        f"### `{path.name}` — `benchmarks/loops.py`",
        "",
        f"Machine: {machine_line(data['machine'])}.",
        "",
        "The torch backend's whole loop, ms per iteration (median of runs after a first one, in which "
        "torch.compile compiles"
        + (", from an empty cache" if data.get("cold_compile") else "")
        + "; CUDA-graph capture is in every run):",
        "",
        "| size | precision | graph | device | steps per run | ms / iteration | against eager | first run (s) |",
        "| ---: | --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    eager = {(r["size"], r["precision"]): r["ms_per_iteration_median"] for r in data["loops"] if r["graph"] == "eager"}
    for r in data["loops"]:
        base = eager.get((r["size"], r["precision"]))
        ratio = f"{r['ms_per_iteration_median'] / base:.2f}×" if base else "–"
        first = f"{r['first_run_s']:.1f}" if "first_run_s" in r else "–"
        lines.append(
            f"| {r['size']} | {r['precision']} | {r['graph']} | {r['device']} | {r['steps']} | "
            f"{r['ms_per_iteration_median']:.1f} | {ratio} | {first} |"
        )
    return lines + [""]


def memory_tables(path: Path, data: dict) -> list[str]:
    lines = [
        f"### `{path.name}` — `benchmarks/memory.py`",
        "",
        f"Machine: {machine_line(data['machine'])}.",
        "",
        "The memory estimate of a run at one scale against the allocator's peak during it, both beyond "
        "the weights (and on a CPU the content image) loaded before it:",
        "",
        "| size | image | precision | checkpoint | device | estimate (MiB) | allocator peak (MiB) | estimate ÷ peak |",
        "| ---: | ---: | --- | --- | --- | ---: | ---: | ---: |",
    ]
    for r in data["memory"]:
        lines.append(
            f"| {r['size']} | {r['image'][3]}×{r['image'][2]} | {r['precision']} | {r['checkpoint']} | "
            f"{r['device']} | {r['estimate_bytes'] / 2**20:.0f} | {r['peak_bytes'] / 2**20:.0f} | "
            f"{r['estimate_over_peak']:.2f} |"
        )
    return lines + [""]


def batch_tables(path: Path, data: dict) -> list[str]:
    lines = [
        f"### `{path.name}` — images per second against batch size",
        "",
        f"Machine: {machine_line(data['machine'])}.",
        "",
        "The torch backend optimizing B content images of one size together (`Stylizer.stylize_many`), "
        "iterations at one scale, after a first untimed run:",
        "",
        "| size | image | precision | device | iterations | batch | seconds | images / s | against batch 1 |",
        "| ---: | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    single = {r["size"]: r["images_per_second"] for r in data["batch"] if r["batch"] == 1}
    for r in data["batch"]:
        base = single.get(r["size"])
        ratio = f"{r['images_per_second'] / base:.2f}×" if base else "–"
        lines.append(
            f"| {r['size']} | {r['image'][3]}×{r['image'][2]} | {r['precision']} | {r['device']} | {r['steps']} | "
            f"{r['batch']} | {r['seconds']:.1f} | {r['images_per_second']:.3f} | {ratio} |"
        )
    return lines + [""]


def sensitivity_tables(path: Path, data: dict) -> list[str]:
    lines = [
        f"### `{path.name}` — `benchmarks/sensitivity.py`",
        "",
        f"Machine: {machine_line(data['machine'])}.",
        "",
        "The fp32 reference loss after the run, for an image (64 px, random) alone, moved by 1e-7, and in a "
        "batch of three: how far rounding carries an optimization.",
        "",
        "| precision | optimizer | steps | image | alone | moved by 1e-7 | in a batch of 3 |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in data["sensitivity"]:
        moved, batched = (f"{r[k]:.4f} ({r[k] / r['alone'] - 1:+.1e})" for k in ("moved_1e-7", "in_batch_of_3"))
        lines.append(
            f"| {r['precision']} | {r['optimizer']} | {r['steps']} | {r['image']} | {r['alone']:.4f} | {moved} | {batched} |"
        )
    return lines + [""]


def pytest_benchmark_tables(path: Path, data: dict) -> list[str]:
    benches = data["benchmarks"]
    first = benches[0]["extra_info"] if benches else {}
    lines = [f"### `{path.name}` — `make bench`", "", f"Machine: {machine_line(first)}.", ""]
    steps = [b for b in benches if b["name"].startswith("test_iteration")]
    if steps:
        lines += [
            "| backend | precision | device | size | ms / iteration (median) | peak memory added (MiB) |",
            "| --- | --- | --- | ---: | ---: | ---: |",
        ]
        for b in steps:
            e = b["extra_info"]
            mem = e.get("peak_memory_mb")
            lines.append(
                f"| {e['backend']} | {e['precision']} | {e['device']} | {e['size']} | "
                f"{b['stats']['median'] * 1000:.1f} | {'–' if mem is None else f'{mem:.0f}'} |"
            )
        lines.append("")
    ops = [b for b in benches if b["name"].startswith("test_style_loss_op")]
    if ops:
        lines += [
            "Style-loss operator, median ms (extension `ext` against eager PyTorch `ref`):",
            "",
            "| image | layer | C×H×W | dtype | pass | ref | ext | ref / ext |",
            "| ---: | --- | --- | --- | --- | ---: | ---: | ---: |",
        ]
        groups: dict[tuple, dict[str, float]] = {}
        for b in ops:
            e = b["extra_info"]
            key = (
                e["image_size"],
                e["layer"],
                tuple(e["shape"][1:]),
                e["dtype"].replace("torch.", ""),
                "fwd+bwd" if e["backward"] else "fwd",
            )
            groups.setdefault(key, {})[e["impl"]] = b["stats"]["median"] * 1000
        for (size, layer, shape, dtype, kind), t in groups.items():
            ratio = f"{t['ref'] / t['ext']:.2f}×" if "ref" in t and "ext" in t else "–"
            cells = [f"{t[i]:.2f}" if i in t else "–" for i in ("ref", "ext")]
            lines.append(
                f"| {size} | {layer} | {'×'.join(map(str, shape))} | {dtype} | {kind} | {cells[0]} | {cells[1]} | {ratio} |"
            )
        lines.append("")
    for b in benches:
        if b["name"] == "test_time_to_quality":
            e = b["extra_info"]
            lines += [
                f"Time-to-quality at {e['size']} px: time until the float32 reference loss of the output reaches "
                f"{e['results'][0]['target_loss']:.4g}, the reference's after {e['steps']} L-BFGS iterations; and "
                f"the loss of each loop's output after {e['steps']} iterations:",
                "",
                "| backend | precision | seconds to target | iterations to target | reference's seconds / these | "
                f"output's loss after {e['steps']} iterations |",
                "| --- | --- | ---: | ---: | ---: | ---: |",
            ]
            for r in e["results"]:
                secs = "not reached" if r["seconds_to_target"] is None else f"{r['seconds_to_target']:.1f}"
                ratio = (
                    "–" if r["seconds_to_target"] is None else f"{r['reference_seconds'] / r['seconds_to_target']:.2f}×"
                )
                lines.append(
                    f"| {r['backend']} | {r['precision']} | {secs} | {r['steps_to_target']} | {ratio} | "
                    f"{r['loss_at_steps']:.4g} |"
                )
            lines.append("")
    return lines


def main() -> None:
    lines: list[str] = []
    for path in sorted(RESULTS.glob("*.json")):
        data = json.loads(path.read_text())
        if "loops" in data:
            lines += loop_tables(path, data)
        elif "memory" in data:
            lines += memory_tables(path, data)
        elif "batch" in data:
            lines += batch_tables(path, data)
        elif "sensitivity" in data:
            lines += sensitivity_tables(path, data)
        else:
            lines += bench_tables(path, data) if "results" in data else pytest_benchmark_tables(path, data)
    text = README.read_text()
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    README.write_text(head + BEGIN + "\n" + "\n".join(lines) + "\n" + END + tail)


if __name__ == "__main__":
    main()
