"""The ``nst-fast`` command: ``main(argv)`` parses flags into :class:`Options` and runs a stylization.

Every error caused by input ends with one line on stderr and a non-zero exit code: 2 for bad usage or
input, 1 for a failure while running, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

DESCRIPTION = """\
Stylize CONTENT with STYLE: optimize an image whose VGG-19 features match the content image's and
whose Gram matrices match the style image's (Gatys, Ecker & Bethge 2015).

With no CONTENT and STYLE, a built-in sample pair is used (a photograph that matplotlib ships and
a painting that nst-fast paints itself), so that `nst-fast -o demo.png` works out of the box.

Other commands (nst-fast COMMAND --help):
  bench    time one optimization iteration per backend, precision and size; table, JSON, plot
  info     the device, extension, backends and weights this installation has"""

EPILOG = """\
examples:
  nst-fast photo.jpg starry_night.jpg -o out.png
  nst-fast photo.jpg starry_night.jpg -o out.png --size 1024 --style-weight 50
  nst-fast photo.jpg a.jpg b.jpg --style-blend 0.7,0.3 -o out.png
  nst-fast --list-layers"""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with usage errors on one line (the full usage is one --help away)."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _arg_type(annotation: str):
    """Map an Options annotation (a string, under `from __future__ import annotations`) to a parser."""
    if annotation.startswith("tuple"):
        return str  # comma-separated; Options parses and validates it
    for name, parser in (("bool", None), ("int", int), ("float", float)):
        if annotation.startswith(name):
            return parser
    return str


def build_parser() -> argparse.ArgumentParser:
    from .options import Options

    defaults = Options()
    parser = ArgumentParser(
        prog="nst-fast", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("content", nargs="?", help="content image (default: the built-in sample photograph)")
    parser.add_argument("styles", nargs="*", metavar="style", help="style image(s) (default: the built-in painting)")
    parser.add_argument("-o", "--output", default="stylized.png",
                        help="output image; the format follows the extension (default: %(default)s)")  # fmt: skip
    parser.add_argument("--style-blend", default=None, metavar="W1,W2,...",
                        help="blend weights of the style images (default: equal)")  # fmt: skip
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    parser.add_argument("--list-layers", action="store_true", help="list the VGG-19 layer names and exit")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    group = parser.add_argument_group("stylization options (also nst_fast.Options fields)")
    for f in dataclasses.fields(Options):
        default = getattr(defaults, f.name)
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        help_text = f"{f.metadata['help']} (default: {shown})"
        kind = _arg_type(str(f.type))
        kwargs = dict(default=argparse.SUPPRESS, help=help_text)
        if kind is None:
            group.add_argument(_flag(f.name), action=argparse.BooleanOptionalAction, **kwargs)
            continue
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        metavar = "N" if kind is int else "X" if kind is float else None
        if str(f.type).startswith("tuple"):
            metavar = "A,B,..."
        group.add_argument(_flag(f.name), type=kind, metavar=metavar, **kwargs)
    return parser


def _version() -> str:
    from . import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    command = argv[0] if argv and argv[0] in COMMANDS else "stylize"
    if argv and argv[0] in COMMANDS:
        argv = argv[1:]
    make_parser, run = COMMANDS[command]
    args = make_parser().parse_args(argv)
    return _guarded(run, args)


def _guarded(run, args: argparse.Namespace) -> int:
    """Run a command, mapping every error to one line on stderr and an exit code."""
    try:
        return run(args)
    except KeyboardInterrupt:
        print("nst-fast: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # noqa: BLE001 — mapped to one line below
        from .errors import NstError

        if isinstance(e, NstError):
            print(f"nst-fast: error: {e}", file=sys.stderr)
            return EXIT_USAGE
        print(f"nst-fast: failed: {type(e).__name__}: {' '.join(str(e).split())}", file=sys.stderr)
        return EXIT_FAILURE


def _stylize(args: argparse.Namespace) -> int:
    if args.list_layers:
        from .vgg import LAYER_NAMES

        print("\n".join(LAYER_NAMES))
        return EXIT_OK

    from .callbacks import ProgressBar
    from .errors import OptionsError
    from .image import check_output_path, save_image
    from .options import Options, parse_floats
    from .stylizer import Stylizer

    def say(message: str) -> None:
        if not args.quiet:
            print(message, file=sys.stderr, flush=True)

    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(Options) if hasattr(args, f.name)}
    options = Options().replace(**overrides)
    output = check_output_path(args.output)
    if args.content is None:
        from .samples import sample_content, sample_style

        content, styles = sample_content(), [sample_style()]
        say("no CONTENT and STYLE given: using the built-in sample photograph and painting")
    elif not args.styles:
        raise OptionsError("a STYLE image is needed after CONTENT (or give neither, for the built-in samples)")
    else:
        content, styles = args.content, args.styles
    blend = None
    if args.style_blend is not None:
        blend = parse_floats("style blend weights", args.style_blend)
    start = time.perf_counter()
    stylizer = Stylizer(styles, options, style_blend=blend)
    say(f"device {stylizer.device}, weights {stylizer.model.weights_source}, {options.steps} {options.optimizer} steps")
    progress = None if args.quiet else ProgressBar(options.steps)
    try:
        result = stylizer.stylize(content, callback=progress)
    finally:
        if progress is not None:
            progress.close()
    save_image(result, output)
    say(f"wrote {output} ({result.width}×{result.height}) in {time.perf_counter() - start:.1f} s")
    return EXIT_OK


def build_bench_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="nst-fast bench",
        description="Time one optimization iteration (forward, input gradient, loss) of each backend and "
        "precision at each size: median of ROUNDS after WARMUP iterations, with device synchronisation, and "
        "peak memory. Uses ../shared/images when present, else the built-in samples.",
    )
    parser.add_argument("--sizes", default="128,256,512", help="image sizes (longest side, px) (default: %(default)s)")
    parser.add_argument("--backends", default=None, help="comma-separated backends (default: all available)")
    parser.add_argument("--device", default="auto", help="torch device (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=5, help="timed iterations per configuration (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations first (default: %(default)s)")
    parser.add_argument("--json", metavar="FILE", help="write the results and the machine's description as JSON")
    parser.add_argument("--plot", metavar="FILE", help="plot it/s and memory against size (PNG, SVG or PDF)")
    parser.add_argument("-q", "--quiet", action="store_true", help="print no table")
    return parser


def _bench(args: argparse.Namespace) -> int:
    from . import bench
    from .errors import OptionsError
    from .options import split_list

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
        if name not in bench.BACKENDS:
            raise OptionsError(f"unknown backend {name!r}; available: {', '.join(bench.BACKENDS)}")
    for path, kinds in ((args.json, (".json",)), (args.plot, (".png", ".svg", ".pdf"))):
        if path is not None:
            _check_writable(path, kinds)
    from .stylizer import resolve_device

    resolve_device(args.device)
    if not args.quiet:
        print(f"measuring {', '.join(backends or bench.BACKENDS)} at {', '.join(map(str, sorted(sizes)))} px "
              f"({args.warmup} warm-up + {args.rounds} timed iterations each)", file=sys.stderr, flush=True)  # fmt: skip
    results = bench.run(sizes, backends, args.device, args.rounds, args.warmup)
    if not args.quiet:
        print(bench.format_table(results))
    if args.json:
        bench.save_json(args.json, results)
    if args.plot:
        bench.plot(args.plot, results)
    return EXIT_OK


def _check_writable(path: str, suffixes: tuple[str, ...]) -> None:
    from .errors import OptionsError

    p = Path(path)
    if p.suffix.lower() not in suffixes:
        raise OptionsError(f"{path}: the file name must end in {' or '.join(suffixes)}")
    if not (p.parent if str(p.parent) else Path(".")).is_dir():
        raise OptionsError(f"output directory does not exist: {p.parent}")


def build_info_parser() -> argparse.ArgumentParser:
    return ArgumentParser(
        prog="nst-fast info", description="Show the device, extension, backends and weights this installation has."
    )


def _info(args: argparse.Namespace) -> int:
    import torch

    from . import __version__, _ext, bench
    from .weights import load_weights

    info = bench.machine_info()
    try:
        weights = load_weights("caffe").source
    except Exception as e:  # noqa: BLE001 — reported, not raised
        weights = f"unavailable ({e})"
    extension = "loaded" + (" (CPU and CUDA kernels)" if _ext.WITH_CUDA else " (CPU kernels)")
    rows = [
        ("nst-fast", __version__),
        ("torch", f"{torch.__version__} (CUDA {torch.version.cuda or 'none'})"),
        ("device", info["gpu"] or f"cpu: {info['host_cpu']}, {info['torch_threads']} threads"),
        ("extension", extension if _ext.AVAILABLE else f"not loaded ({_ext.IMPORT_ERROR})"),
        ("backends", ", ".join(f"{b} ({'/'.join(p)})" for b, p in bench.BACKENDS.items())),
        ("weights", f"caffe: {weights}"),
    ]
    for key, value in rows:
        print(f"{key + ':':<11}{value}")
    return EXIT_OK


COMMANDS = {
    "stylize": (build_parser, _stylize),
    "bench": (build_bench_parser, _bench),
    "info": (build_info_parser, _info),
}


if __name__ == "__main__":
    sys.exit(main())
