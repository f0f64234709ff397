"""Regenerate the results tables in benchmarks/README.md from benchmarks/results/*.json.

    python benchmarks/report.py          # rewrites the part of README.md between the markers
    python benchmarks/report.py A.json B.json --plot cmp.png   # compares nst-fast bench files (Markdown)

Three kinds of JSON live in results/: `nst-fast bench --json` files (per-iteration time and memory per
backend, precision and size), pytest-benchmark files (`make bench`: also the operator and the
time-to-quality suites), `benchmarks/loops.py` files (the whole loop per --graph mode),
`benchmarks/memory.py` files (the memory estimate against the allocator's peak), `benchmarks/batch.py`
or `nst-fast bench --batch-sizes` files (images per second against batch size) and
`benchmarks/sensitivity.py` files (how far rounding carries an optimization). The `nst-fast bench`
files that name their schema (version 2 on: FLOP/s, fraction of peak, images per second to a fixed
quality) are also compared across machines in one table, and plotted to results/comparison.png.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from nst_fast.bench.compare import SCHEMA, load_record, markdown_comparison, plot_comparison

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
README = HERE / "README.md"
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def machine_line(m: dict) -> str:
    device = m.get("gpu") or f"{m.get('host_cpu')} ({m.get('cores')} cores, {m.get('torch_threads')} threads)"
    cuda = f", CUDA {m['cuda']}, driver {m.get('driver')}" if m.get("cuda") else ""
    return f"{device}; torch {m.get('torch')}{cuda}; commit {m.get('commit')}"


def bench_tables(path: Path, data: dict) -> list[str]:
    """An `nst-fast bench --json` file: the iteration table (with FLOPs and fraction of peak when the file
    has them, schema 2), the peaks, and images per second to the fixed quality."""
    efficiency = any("fraction_of_peak" in r for r in data["results"])
    lines = [f"### `{path.name}` — `nst-fast bench`", "", f"Machine: {machine_line(data['machine'])}.", ""]
    if data.get("peak"):
        peaks = ", ".join(f"{p} {v['flops_per_s'] / 1e9:.0f} GFLOP/s ({v['side']}²)" for p, v in data["peak"].items())
        bandwidth = data.get("bandwidth")
        memory = f"; memory bandwidth (copy) {bandwidth['bytes_per_s'] / 1e9:.1f} GB/s" if bandwidth else ""
        lines += [f"Reachable peak, a large matrix product (median): {peaks}{memory}.", ""]
    head = "| backend | precision | device | size | image | ms / iteration (median) | it/s | peak memory added (MiB) |"
    rule = "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"
    if efficiency:
        head += " GFLOP / iteration | GFLOP/s | of peak |"
        rule += " ---: | ---: | ---: |"
    if data["results"]:
        lines += [head, rule]
    for r in data["results"]:
        mem = "–" if r["peak_memory_mb"] is None else f"{r['peak_memory_mb']:.0f}"
        line = (
            f"| {r['backend']} | {r['precision']} | {r['device']} | {r['size']} | {r['image'][3]}×{r['image'][2]} "
            f"| {r['ms_median']:.1f} | {r['iterations_per_second']:.2f} | {mem} |"
        )
        if efficiency:
            share = "–" if r.get("fraction_of_peak") is None else f"{r['fraction_of_peak']:.2f}"
            line += f" {r['flops_per_iteration'] / 1e9:.1f} | {r['achieved_flops_per_s'] / 1e9:.1f} | {share} |"
        lines.append(line)
    if data["results"]:
        lines.append("")
    quality = data.get("quality") or []
    if quality:
        steps = (data.get("workload", {}).get("quality") or {}).get("reference_steps", 300)
        lines += [
            (
                "Images per second to the fixed quality: the default options, end to end, until every image's "
                f"float32 reference loss is at most the fp32 reference loop's after {steps} iterations:"
            ),
            "",
            (
                "| size | image | batch | backend | precision | schedule | iterations | seconds | images / s | "
                "loss ÷ target | GFLOP/s |"
            ),
            "| ---: | ---: | ---: | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for q in quality:
            schedule = "default" if q["steps_factor"] == 1 else f"steps ×{q['steps_factor']}"
            start = (
                f"| {q['size']} | {q['image'][1]}×{q['image'][0]} | {q['batch']} | {q['backend']} | {q['precision']} "
            )
            if q["reached"]:
                lines.append(
                    f"{start}| {schedule} | {q['iterations']} | {q['seconds']:.1f} | {q['images_per_second']:.3f} | "
                    f"{q['loss_reached'] / q['target_loss']:.3f} | {q['achieved_flops_per_s'] / 1e9:.1f} |"
                )
            else:
                lines.append(f"{start}| {schedule} | not reached ({q.get('note')}) | – | – | – | – |")
        lines.append("")
    return lines


def comparison_section(paths: list[Path], records: list[dict], plot: Path | None) -> list[str]:
    """Every machine's `nst-fast bench` figures in one table, each against the first, and the plot."""
    lines = [
        "### Across machines",
        "",
        "Every figure of the `nst-fast bench` files side by side (`nst-fast bench --compare` prints the same):",
        "",
        markdown_comparison(records, paths),
        "",
    ]
    if plot is not None:
        plot_comparison(plot, records, paths)
        lines += [f"![images per second and fraction of peak, one line per machine]({plot.relative_to(HERE)})", ""]
    return lines


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
        "| precision | optimizer | steps | from | image | alone | moved by 1e-7 | in a batch of 3 |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in data["sensitivity"]:
        moved, batched = (f"{r[k]:.4f} ({r[k] / r['alone'] - 1:+.1e})" for k in ("moved_1e-7", "in_batch_of_3"))
        start = r.get("init", "content+noise")  # (the first file's runs all started from it)
        lines.append(
            f"| {r['precision']} | {r['optimizer']} | {r['steps']} | {start} | {r['image']} | {r['alone']:.4f} "
            f"| {moved} | {batched} |"
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


def is_bench_record(data: dict) -> bool:
    """A file `nst-fast bench --json` wrote with its schema named (schema 2 on): what compares across machines."""
    return data.get("schema") == SCHEMA


def serve_load_tables(path: Path, data: dict) -> list[str]:
    """benchmarks/serve_load.py's runs: the service under concurrent clients, batching on and off."""
    lines = [f"### `nst-fast serve` under load (`{path.name}`)", "", f"`{data['command']}`", ""]
    lines.append("| batching | jobs done | errors | requests/s | jobs/s | p50 s | p95 s | mean batch | resident MB |")
    lines.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in data["runs"]:
        lines.append(
            f"| {r['batching']} | {r['jobs_done']} | {len(r['errors'])} | {r['requests_per_second']:.1f} "
            f"| {r['jobs_per_second']:.2f} | {r['latency_p50']:.2f} | {r['latency_p95']:.2f} | {r['mean_batch']:.2f} "
            f"| {r['peak_resident_mb']:.0f} |"
        )
    return [*lines, ""]


def ray_scaling_tables(path: Path, data: dict) -> list[str]:
    """benchmarks/ray_scaling.py's runs: a collection in one process and on Ray with 1 and 2 actors."""
    lines = [f"### A collection on Ray against one process (`{path.name}`)", "", f"`{data['command']}`", ""]
    lines.append("| mode | round | images | wall s | images/s | first image after s | images/s after it |")
    lines.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in data["runs"]:
        lines.append(
            f"| {r['mode']} | {r['round']} | {r['images']} | {r['wall_s']:.1f} | {r['images_per_second']:.3f} "
            f"| {r['startup_s']:.1f} | {r['steady_images_per_second']:.3f} |"
        )
    overheads = [f"{m} {v['overhead_s']:+.1f} s" for m, v in data["summary"].items() if "overhead_s" in v]
    return [*lines, "", "Overhead against the plain mode (median wall times): " + ", ".join(overheads) + ".", ""]


def _gflops(value: float | None) -> str:
    return "-" if value is None else f"{value / 1e9:.0f}"


def independent_check_tables(path: Path, data: dict) -> list[str]:
    """benchmarks/independent_peak_check.py's two figures of the fraction of peak, and their difference."""
    mine, theirs = data["independent"], data["benchmark"]
    lines = [
        f"### Independent check of the fraction of peak (`{path.name}`, {data['machine'].get('host_cpu', '')})",
        "",
        "| figure | source | GFLOP / iteration | ms / iteration | peak GFLOP/s | fraction of peak |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
        f"| independent | FLOP counter, torch.utils.benchmark, best of {len(mine['peak_flops_per_s_by_side'])} "
        f"product sides | {mine['flops_per_iteration'] / 1e9:.1f} | {mine['seconds_per_iteration'] * 1e3:.1f} "
        f"| {mine['peak_flops_per_s'] / 1e9:.0f} | {mine['fraction_of_peak']:.3f} |",
        f"| nst-fast bench | {theirs['source']} | {theirs['flops_per_iteration'] / 1e9:.1f} "
        f"| {theirs['ms_median']:.1f} | {_gflops(theirs.get('peak_flops_per_s'))} "
        f"| {theirs['fraction_of_peak']:.3f} |",
        "",
        f"Difference {data['difference']:+.3f} (tolerance ±{data['tolerance']}); {mine['precision']} at "
        f"{mine['size']} px, {mine['device']}.",
    ]
    return [*lines, ""]


def schedule_tables(path: Path, data: dict) -> list[str]:
    """benchmarks/schedule.py's records: each schedule's time and output loss against the reference bar."""
    from schedule import table  # benchmarks/schedule.py, beside this file

    return [
        f"### Schedules against the reference's 300 iterations (`{path.name}`, {data['machine'].get('host_cpu', '')})",
        "",
        "Seconds: the run's own time, judging off the clock; ÷ reference: against 300 × the reference's median "
        "iteration (robust to other work slowing some of its iterations: benchmarks/NOTES.md §13); ÷ bar: the "
        "output's loss over the reference's.",
        "",
        table(data),
        "",
    ]


def optimizer_variant_tables(path: Path, data: dict) -> list[str]:
    """benchmarks/optimizer_variants.py's records: each change to the optimizer's loss along the run."""
    from optimizer_variants import table  # beside this file

    return [
        f"### Changes to the optimizer at one scale (`{path.name}`, {data['machine'].get('host_cpu', '')})",
        "",
        "The float32 reference loss at full size after 50, 100 and 150 iterations (512 px: 120); the 1-thread runs "
        "ran two at a time, so their seconds (in the file) do not count: benchmarks/NOTES.md §13b.",
        "",
        table(data),
        "",
    ]


def winograd_probe_tables(path: Path, data: dict) -> list[str]:
    """benchmarks/winograd_probe.py's bf16 probe (NOTES §13c): per layer, the direct convolution against
    the Winograd products' bound and the prototype; the end-to-end pair."""
    lines = [
        f"### Winograd in bf16, a probe (`{path.name}`, {data['machine'].get('host_cpu', '')})",
        "",
        "Forward and input gradient of each VGG-19 convolution at 256 px, ms (medians): the engine's direct "
        "bf16 convolution, the batched products alone of F(2,3) and F(4,3) (the bound), and the F(2,3) prototype.",
        "",
        "| layer | in → out | direct | F(2,3) products | F(4,3) products | F(2,3) prototype |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in data["layers"]:
        lines.append(
            f"| {r['layer']} | {r['in']} → {r['out']} | {r['direct_ms']:.1f} | {r['gemm_f23_ms']:.1f} "
            f"| {r['gemm_f43_ms']:.1f} | {r['proto_f23_ms']:.1f} |"
        )
    total = data["summary"]["total_ms"]
    lines.append(
        f"| all | | {total['direct_ms']:.0f} | {total['gemm_f23_ms']:.0f} | {total['gemm_f43_ms']:.0f} "
        f"| {total['proto_f23_ms']:.0f} |"
    )
    lines += [
        "",
        "| workload | form | seconds | median iteration (s) | output loss |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for r in data.get("end_to_end", []):
        lines.append(
            f"| {r['workload']} | {r['form']} | {r['seconds']:.1f} | {r['median_iteration_s']:.3f} "
            f"| {r['output_loss']:.5f} |"
        )
    return [*lines, ""]


def winograd_fp32_tables(path: Path, data: dict) -> list[str]:
    """benchmarks/winograd_fp32.py: NNPACK's Winograd against oneDNN per layer and size (NOTES §15)."""
    lines = [
        f"### Winograd F(6×6, 3×3) in float32 against direct convolutions (`{path.name}`, "
        f"{data['machine'].get('host_cpu', '')}, {data['device'].get('mkldnn_bf16') and 'native' or 'no native'} bf16)",
        "",
        "Forward and input gradient of each VGG-19 convolution, ms (medians of "
        f"{data['rounds']}): oneDNN NCHW, oneDNN channels_last (the engine's), Winograd (nst_fast.conv); "
        "speed-up against the better direct one; Winograd's relative error against float64 (direct: ~1e-6); "
        "NNPACK's workspace at the layer's first call. **bold**: the layers `conv=auto` runs by Winograd.",
        "",
    ]
    for at in data["sizes"].values():
        h, w = at["image"]
        chosen = set(at["rule_layers"])
        lines += [
            f"{w}×{h} px:",
            "",
            "| layer | positions | direct | channels_last | Winograd | speed-up | error | workspace (MiB) |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in at["layers"]:
            name = f"**{r['layer']}**" if r["layer"] in chosen else r["layer"]
            ms = r["ms"]
            lines.append(
                f"| {name} | {r['positions'][0]}×{r['positions'][1]} | {ms['direct']:.1f} | {ms['direct_cl']:.1f} "
                f"| {ms['winograd']:.1f} | {r['speedup_vs_best_direct']:.2f} | {r['relative_error']['winograd']:.1e} "
                f"| {r['workspace_bytes'] / 2**20:.0f} |"
            )
        total = at["all_convolutions_ms"]
        lines += [
            "",
            f"All convolutions: {total['direct_cl']:.0f} ms as the engine ran them, {total['with_the_rule']:.0f} ms "
            f"with the rule ({total['direct_cl'] / total['with_the_rule']:.2f}×).",
            "",
        ]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "files", nargs="*", type=Path, help="instead: print these nst-fast bench files' comparison as Markdown"
    )
    parser.add_argument("--plot", type=Path, help="with files: plot them, one line per machine (PNG, SVG or PDF)")
    args = parser.parse_args(argv)
    if args.files:
        try:
            records = [load_record(path) for path in args.files]
        except ValueError as e:
            parser.error(str(e))
        print(markdown_comparison(records, args.files))
        if args.plot:
            plot_comparison(args.plot, records, args.files)
        return 0
    lines: list[str] = []
    compared: list[tuple[Path, dict]] = []
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
        elif "records" in data and all("variant" in r for r in data["records"]):
            lines += optimizer_variant_tables(path, data)
        elif "records" in data:
            lines += schedule_tables(path, data)
        elif "runs" in data and "summary" in data:
            lines += ray_scaling_tables(path, data)
        elif "runs" in data:
            lines += serve_load_tables(path, data)
        elif "independent" in data:
            lines += independent_check_tables(path, data)
        elif "end_to_end" in data and "accuracy" in data:
            lines += winograd_probe_tables(path, data)
        elif "sizes" in data and "device" in data:
            lines += winograd_fp32_tables(path, data)
        elif "results" in data:
            lines += bench_tables(path, data)
        elif "benchmarks" in data:
            lines += pytest_benchmark_tables(path, data)
        else:
            raise SystemExit(f"report.py: {path.name}: no table for this kind of results file; add one here")
        if is_bench_record(data):
            compared.append((path, data))
    # Machines against machines: the default convolutions only (a --conv direct file is an experiment on
    # one machine, in NOTES), the fullest file first, as the baseline the others are divided by.
    compared = [
        (p, d) for p, d in compared if ((d.get("workload") or {}).get("iteration") or {}).get("conv", "auto") == "auto"
    ]
    compared.sort(key=lambda pd: (-len(pd[1]["results"]) - len(pd[1].get("quality", [])), pd[0].name))
    if compared:
        paths, records = [p for p, _ in compared], [d for _, d in compared]
        lines += comparison_section(paths, records, RESULTS / "comparison.png")
    text = README.read_text()
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    README.write_text(head + BEGIN + "\n" + "\n".join(lines) + "\n" + END + tail)
    return 0


if __name__ == "__main__":
    sys.exit(main())
