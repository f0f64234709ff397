"""``nst-fast bench`` (one optimization iteration per backend, precision and size) and ``nst-fast info``."""

from __future__ import annotations

import argparse
import sys

import torch

from .. import __version__, _ext, bench, selfcheck
from ..backends import BACKENDS, get
from ..errors import OptionsError
from ..options import GRAPHS, split_list
from ..plan import resolve_device
from ..weights import load_weights
from .common import EXIT_OK, ArgumentParser, check_writable


def build_bench_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="nst-fast bench",
        description="Time one optimization iteration (forward, input gradient, loss, update) of each backend and "
        "precision at each size: median of ROUNDS after WARMUP iterations, with device synchronisation, and "
        f"peak memory. Uses tubingen.jpg and starry_night.jpg from ${bench.IMAGES_ENV} when it names a folder "
        "with them, else the built-in samples.",
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
        "--rounds", type=int, default=5, help="timed iterations per configuration (default: %(default)s)"
    )
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations first (default: %(default)s)")
    parser.add_argument(
        "--batch-sizes",
        default=None,
        metavar="B1,B2,...",
        help="instead: images per second of the torch backend optimizing B images of each size together "
        "(20 iterations, after a first untimed run), for each B",
    )
    parser.add_argument("--json", metavar="FILE", help="write the results and the machine's description as JSON")
    parser.add_argument("--plot", metavar="FILE", help="plot it/s and memory against size (PNG, SVG or PDF)")
    parser.add_argument("-q", "--quiet", action="store_true", help="print no table")
    return parser


def run_bench(args: argparse.Namespace) -> int:
    try:
        sizes = [int(s) for s in split_list(args.sizes)]
    except ValueError:
        raise OptionsError(f"--sizes must be comma-separated integers, got {args.sizes!r}") from None
    if not sizes or min(sizes) < 16:
        raise OptionsError(f"--sizes must name sizes of at least 16 px, got {args.sizes!r}")
    if args.rounds < 1 or args.warmup < 0:
        raise OptionsError("--rounds must be at least 1 and --warmup at least 0")
    backends = None if args.backends is None else list(split_list(args.backends))
    for name in backends or []:
        why = get(name).unavailable()
        if why:
            raise OptionsError(f"the {name} backend {why}")
    for path, kinds in ((args.json, (".json",)), (args.plot, (".png", ".svg", ".pdf"))):
        if path is not None:
            check_writable(path, kinds)
    device = resolve_device(args.device)
    if args.batch_sizes is not None:
        return _run_batches(args, sizes, _positive_integers("--batch-sizes", args.batch_sizes))
    configurations = bench.configurations(device, backends)
    if not args.quiet:
        names = ", ".join(dict.fromkeys(b for b, _ in configurations))
        print(
            f"measuring {names} at {', '.join(map(str, sorted(sizes)))} px ({args.warmup} warm-up + "
            f"{args.rounds} timed iterations each)",
            file=sys.stderr,
            flush=True,
        )
    results = bench.run(sizes, backends, args.device, args.rounds, args.warmup, graph=args.graph)
    if not args.quiet:
        print(bench.format_table(results))
    if args.json:
        bench.save_json(args.json, results)
    if args.plot:
        bench.plot(args.plot, results)
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
        ("weights", f"caffe: {weights}"),
    ]
    for key, value in rows:
        print(f"{key + ':':<12}{value}")
    return EXIT_OK
