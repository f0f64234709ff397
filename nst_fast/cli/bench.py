"""``nst-fast bench`` (one optimization iteration per backend, precision and size, its FLOPs and fraction of
the device's peak; images per second to a fixed quality; several machines' files compared) and
``nst-fast info``."""

from __future__ import annotations

import argparse

import torch

from .. import __version__, _ext, bench, conv, selfcheck
from ..backends import BACKENDS, get
from ..errors import OptionsError
from ..options import GRAPHS, Options, split_list
from ..plan import resolve_device
from ..weights import load_weights
from .common import EXIT_OK, ArgumentParser, check_writable, say_unless


def build_bench_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="nst-fast bench",
        description="Time one optimization iteration (forward, input gradient, loss, update) of each backend and "
        "precision at each size: median of ROUNDS after WARMUP iterations, with device synchronisation, and "
        "peak memory; its FLOPs, the FLOP/s achieved and their fraction of the device's reachable peak (a large "
        "matrix product in each precision, measured in the same run). With --quality, the headline: images per "
        "second of the standard workload to a fixed quality (the loss the fp32 reference reaches after 300 "
        f"iterations), end to end, with the default options. Uses tubingen.jpg and starry_night.jpg from "
        f"${bench.IMAGES_ENV} when it names a folder with them, else the built-in samples.",
    )
    parser.add_argument("--sizes", default="128,256,512", help="image sizes (longest side, px) (default: %(default)s)")
    parser.add_argument("--backends", default=None, help="comma-separated backends (default: all available)")
    parser.add_argument("--device", default="auto", help="torch device (default: %(default)s)")
    parser.add_argument(
        "--graph",
        default="auto",
        choices=GRAPHS,
        help="how the torch backend's steps run, as for stylizing (default: %(default)s)",
    )
    parser.add_argument(
        "--conv",
        default="auto",
        choices=conv.CONVS,
        help="the torch backend's 3×3 convolutions, as for stylizing: auto, direct, winograd (float32 only: its "
        "other precisions are then not measured) (default: %(default)s)",
    )
    parser.add_argument(
        "--rounds", type=int, default=5, help="timed iterations per configuration (default: %(default)s)"
    )
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations first (default: %(default)s)")
    parser.add_argument(
        "--iterations",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="time one iteration per backend, precision and size (default: on; --no-iterations with --quality "
        "measures the headline alone)",
    )
    parser.add_argument(
        "--peak",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="measure the device's reachable matrix-product peak per precision and its memory bandwidth, for "
        "the fraction of peak (default: on; a few seconds per precision)",
    )
    parser.add_argument(
        "--quality",
        default=None,
        metavar="S1,S2,...",
        help="also: images per second to the fixed quality at these sizes (the workload: 256,512,1024), each "
        "batch size of --quality-batch-sizes; the target is computed once per workload (the reference's "
        "iterations: minutes on a CPU) and cached in --targets",
    )
    parser.add_argument(
        "--quality-batch-sizes",
        default="1",
        metavar="B1,B2,...",
        help="images optimized together in the --quality runs, where the engine batches them (default: %(default)s)",
    )
    parser.add_argument(
        "--reference-steps",
        type=int,
        default=bench.quality.REFERENCE_STEPS,
        help="the reference's iterations that define the quality target (default: %(default)s)",
    )
    parser.add_argument(
        "--targets",
        metavar="FILE",
        default=None,
        help="the JSON cache of quality targets, read and extended (default: ~/.cache/nst-fast/quality-targets.json)",
    )
    parser.add_argument(
        "--batch-sizes",
        default=None,
        metavar="B1,B2,...",
        help="instead: images per second of the torch backend optimizing B images of each size together "
        "(20 iterations, after a first untimed run), for each B",
    )
    parser.add_argument(
        "--compare",
        nargs="+",
        metavar="FILE",
        default=None,
        help="instead: print the figures of two or more --json files side by side, with each one's ratio to the "
        "first (with --plot: one line per machine)",
    )
    parser.add_argument("--json", metavar="FILE", help="write the results, the machine and the workload as JSON")
    parser.add_argument("--plot", metavar="FILE", help="plot it/s and memory against size (PNG, SVG or PDF)")
    parser.add_argument("-q", "--quiet", action="store_true", help="print no table")
    return parser


def run_bench(args: argparse.Namespace) -> int:
    if args.compare is not None:
        return _run_compare(args)
    sizes = _sizes("--sizes", args.sizes)
    quality_sizes = None if args.quality is None else _sizes("--quality", args.quality)
    quality_batches = _positive_integers("--quality-batch-sizes", args.quality_batch_sizes)
    if args.rounds < 1 or args.warmup < 0:
        raise OptionsError("--rounds must be at least 1 and --warmup at least 0")
    if args.reference_steps < 1:
        raise OptionsError(f"--reference-steps must be at least 1, got {args.reference_steps}")
    if not args.iterations and quality_sizes is None:
        raise OptionsError("--no-iterations leaves nothing to measure without --quality")
    backends = None if args.backends is None else list(split_list(args.backends))
    for name in backends or []:
        why = get(name).unavailable()
        if why:
            raise OptionsError(f"the {name} backend {why}")
    for path, kinds in ((args.json, (".json",)), (args.plot, (".png", ".svg", ".pdf")), (args.targets, (".json",))):
        if path is not None:
            check_writable(path, kinds)
    device = resolve_device(args.device)
    if args.batch_sizes is not None:
        return _run_batches(args, sizes, _positive_integers("--batch-sizes", args.batch_sizes))
    if args.plot and not args.iterations:
        raise OptionsError("--plot draws the iteration benchmark: use it without --no-iterations")
    say = say_unless(args.quiet)
    configurations = bench.configurations(device, backends, args.conv) if args.iterations else []
    defaults = Options(device=args.device)
    quality_precision = get(defaults.backend).resolve_precision(defaults.precision, device).name
    precisions = [p for _, p in configurations] + ([quality_precision] if quality_sizes else [])
    images = bench.default_images()
    iteration = {
        "sizes": sorted(sizes),
        "configurations": [f"{b}:{p}" for b, p in configurations],
        "rounds": args.rounds,
        "warmup": args.warmup,
        "graph": args.graph,
        "conv": args.conv,
        "what": "one optimization iteration as the backend's loop repeats it, default options at one scale",
    }
    quality = None
    if quality_sizes:
        quality = {
            "sizes": quality_sizes,
            "batch_sizes": quality_batches,
            "reference_steps": args.reference_steps,
            "what": "end to end with the default options, until every image's float32 reference loss is at most "
            f"the loss the fp32 reference loop reaches after {args.reference_steps} iterations at one scale",
        }
    workload = bench.workload_description(images, iteration if args.iterations else None, quality, defaults)
    record = bench.benchmark_record([], workload=workload, device=str(device))

    def save() -> None:
        if args.json:
            bench.write_record(args.json, record)

    peaks: dict = {}
    if args.peak:
        say(f"measuring the reachable peak on {device}: {', '.join(dict.fromkeys(precisions))} matrix products")
        peaks = bench.measure_peaks(precisions, device)
        record["peak"] = {p: peak.as_dict() for p, peak in peaks.items()}
        record["bandwidth"] = bench.measure_bandwidth(device)
        save()
        if not args.quiet:
            print(bench.format_peaks(peaks, record["bandwidth"]), flush=True)
    results = []
    if args.iterations:
        names = ", ".join(dict.fromkeys(b for b, _ in configurations))
        say(
            f"measuring {names} at {', '.join(map(str, sorted(sizes)))} px ({args.warmup} warm-up + "
            f"{args.rounds} timed iterations each)"
        )
        sides = {p: peak.side for p, peak in peaks.items()}  # a probe beside every timed round
        results = bench.run(
            sizes, backends, args.device, args.rounds, args.warmup, graph=args.graph, peak_sides=sides, conv=args.conv
        )
        record["results"] = bench.result_rows(results, peaks)
        save()
        if not args.quiet:
            print(bench.format_table(results, peaks if args.peak else None), flush=True)
    if quality_sizes:
        cache = bench.TargetCache(args.targets)
        rows = []
        for size in quality_sizes:
            for batch in quality_batches:
                say(f"images per second to the fixed quality at {size} px, batch {batch} (targets: {cache.path})")
                row = bench.measure_throughput(size, batch, args.device, images, args.reference_steps, cache)
                rows.append(row)
                record["quality"] = [r.as_dict() for r in rows]
                save()
        if not args.quiet:
            print(bench.format_quality(rows))
    if args.plot:
        bench.plot(args.plot, results)
    return EXIT_OK


def _sizes(flag: str, text: str) -> list[int]:
    try:
        sizes = [int(s) for s in split_list(text)]
    except ValueError:
        raise OptionsError(f"{flag} must be comma-separated integers, got {text!r}") from None
    if not sizes or min(sizes) < 16:
        raise OptionsError(f"{flag} must name sizes of at least 16 px, got {text!r}")
    return sizes


def _run_compare(args: argparse.Namespace) -> int:
    if len(args.compare) < 2:
        raise OptionsError("--compare needs two or more --json files")
    if args.plot is not None:
        check_writable(args.plot, (".png", ".svg", ".pdf"))
    try:
        records = [bench.load_record(path) for path in args.compare]
    except ValueError as e:
        raise OptionsError(str(e)) from None
    print(bench.format_comparison(records, args.compare))
    if args.plot:
        bench.plot_comparison(args.plot, records, args.compare)
    return EXIT_OK


def _positive_integers(flag: str, text: str) -> list[int]:
    try:
        values = [int(s) for s in split_list(text)]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise OptionsError(f"{flag} must be comma-separated positive integers, got {text!r}")
    return values


def _run_batches(args: argparse.Namespace, sizes: list[int], batches: list[int]) -> int:
    if args.plot:
        raise OptionsError("--plot draws the iteration benchmark: use it without --batch-sizes")
    rows = []
    for size in sorted(sizes):
        for batch in batches:
            row = bench.measure_batch(batch, size, device=args.device, steps=20, rounds=args.rounds)
            rows.append(row)
            if not args.quiet:
                print(
                    f"{size:5d} px  batch {batch:3d}  {row['precision']:5s}  {row['images_per_second']:8.3f} images/s",
                    flush=True,
                )
    if args.json:
        bench.save_rows_json(args.json, "batch", rows)
    return EXIT_OK


def build_info_parser() -> argparse.ArgumentParser:
    return ArgumentParser(
        prog="nst-fast info", description="Show the device, extension, backends and weights this installation has."
    )


def _winograd_line(device: torch.device) -> str:
    """Whether --conv auto runs convolutions by Winograd here, and why not when it does not."""
    if not conv.available():
        return "unavailable (this PyTorch has no NNPACK for this CPU): direct convolutions"
    precision = get(Options().backend).resolve_precision("auto", device)
    if device.type != "cpu" or precision.autocast_dtype is not None:
        return f"NNPACK available; --conv auto stays direct here ({device.type}, {precision.name})"
    return "NNPACK F(6×6,3×3): --conv auto uses it in float32 CPU runs, in the layers with enough positions"


def run_info(args: argparse.Namespace) -> int:
    info = bench.machine_info()
    try:
        weights = load_weights("caffe").source
    except Exception as e:  # noqa: BLE001 — reported, not raised
        weights = f"unavailable ({e})"
    extension = "loaded" + (" (CPU and CUDA kernels)" if _ext.WITH_CUDA else " (CPU kernels)")
    device = resolve_device("auto")
    backends = [
        f"{b.name} ({'/'.join(b.precisions_on(device))})"
        if b.unavailable() is None
        else f"{b.name} ({b.unavailable()})"
        for b in BACKENDS.values()
    ]
    rows = [
        ("nst-fast", __version__),
        ("torch", f"{torch.__version__} (CUDA {torch.version.cuda or 'none'})"),
        ("device", info["gpu"] or f"cpu: {info['host_cpu']}, {info['torch_threads']} threads"),
        ("extension", extension if _ext.AVAILABLE else f"not loaded ({_ext.IMPORT_ERROR})"),
        ("self-check", selfcheck.status()),
        ("backends", ", ".join(backends)),
        ("winograd", _winograd_line(device)),
        ("weights", f"caffe: {weights}"),
    ]
    for key, value in rows:
        print(f"{key + ':':<12}{value}")
    return EXIT_OK
