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
  export   write the VGG-19 features, or the whole loss-and-gradient step, as an ONNX graph
  info     the device, extension, backends and weights this installation has"""

EPILOG = """\
examples:
  nst-fast photo.jpg starry_night.jpg -o out.png
  nst-fast photo.jpg starry_night.jpg -o out.png --size 1024 --style-weight 50
  nst-fast photo.jpg a.jpg b.jpg --style-blend 0.7,0.3 -o out.png
  nst-fast photo.jpg starry_night.jpg -o print.tif --size 2048        # coarse to fine: 512 → 1024 → 2048
  nst-fast photos/ starry_night.jpg -o styled/ --format jpg --quality 92
  nst-fast photo.jpg starry_night.jpg -o out.png --preserve-colors --save-every 20 --log-json trace.json
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

    parser = ArgumentParser(
        prog="nst-fast", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("content", nargs="?", help="content image, or a directory or glob of them "
                        "(default: the built-in sample photograph)")  # fmt: skip
    parser.add_argument("styles", nargs="*", metavar="style", help="style image(s) (default: the built-in painting)")
    parser.add_argument("-o", "--output", default="stylized.png",
                        help="output image, its format from its extension; a directory for a batch "
                        "(default: %(default)s)")  # fmt: skip
    parser.add_argument("--style-blend", default=None, metavar="W1,W2,...",
                        help="blend weights of the style images (default: equal)")  # fmt: skip
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    out = parser.add_argument_group("output and feedback")
    out.add_argument("--quality", type=int, default=None, metavar="Q", help="JPEG/WebP quality, 1-100 (default: Pillow's)")
    out.add_argument("--bit-depth", type=int, default=8, choices=(8, 16),
                     help="bits per channel of the output; 16 needs a .tif output (default: %(default)s)")  # fmt: skip
    out.add_argument("--format", default="png", help="output format in batch mode, where -o is a directory (default: %(default)s)")
    out.add_argument("--save-every", type=int, default=None, metavar="N",
                     help="also save every N-th iterate, as OUTPUT-stem.stepNNNNN.ext")  # fmt: skip
    out.add_argument("--log-json", default=None, metavar="FILE",
                     help="write a per-iteration trace (loss terms, time, peak memory) as JSON")  # fmt: skip
    parser.add_argument("--list-layers", action="store_true", help="list the VGG-19 layer names and exit")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    group = parser.add_argument_group("stylization options (also nst_fast.Options fields)")
    _add_option_flags(group, tuple(f.name for f in dataclasses.fields(Options)))
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

    from . import image as image_io
    from .errors import OptionsError
    from .options import Options, parse_floats
    from .stylizer import Stylizer

    def say(message: str) -> None:
        if not args.quiet:
            print(message, file=sys.stderr, flush=True)

    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(Options) if hasattr(args, f.name)}
    options = Options().replace(**overrides)
    if args.quiet:
        import logging

        logging.getLogger("nst_fast.onnx").setLevel(logging.WARNING)  # the onnxruntime backend's provider line
    if args.quality is not None and not 1 <= args.quality <= 100:
        raise OptionsError(f"--quality must be between 1 and 100, got {args.quality}")
    for flag, value in (("--save-every", args.save_every),):
        if value is not None and value < 1:
            raise OptionsError(f"{flag} must be at least 1, got {value}")
    if args.log_json is not None:
        _check_writable(args.log_json, (".json",))
    if args.content is None:
        from .samples import sample_content, sample_style

        jobs, styles = [(sample_content(), image_io.check_output_path(args.output, args.bit_depth))], [sample_style()]
        say("no CONTENT and STYLE given: using the built-in sample photograph and painting")
    elif not args.styles:
        raise OptionsError("a STYLE image is needed after CONTENT (or give neither, for the built-in samples)")
    else:
        jobs, styles = _jobs(args.content, args.output, args.format, args.bit_depth), args.styles
    blend = None if args.style_blend is None else parse_floats("style blend weights", args.style_blend)
    start = time.perf_counter()
    stylizer = Stylizer(styles, options, style_blend=blend)
    scales = options.scales()
    say(f"device {stylizer.device}, backend {options.backend} ({stylizer.describe_precision()}), "
        f"weights {stylizer.model.weights_source}, "
        + (f"scales {' → '.join(map(str, scales))} px, " if len(scales) > 1 else "")
        + f"{sum(options.steps_at(i) for i in range(len(scales)))} {options.optimizer} steps"
        + (f" (at scales above {options.tile} px: per tile)" if options.tile and options.size > options.tile else ""))
    failures = 0
    for content, output in jobs:
        try:
            _stylize_one(stylizer, content, output, args, say)
        except (KeyboardInterrupt, OptionsError):
            raise
        except Exception as e:  # noqa: BLE001 — in a batch, one bad file must not stop the rest
            if len(jobs) == 1:
                raise
            failures += 1
            print(f"nst-fast: error: {content}: {' '.join(str(e).split())}", file=sys.stderr)
    if len(jobs) > 1:
        say(f"stylized {len(jobs) - failures} of {len(jobs)} images in {time.perf_counter() - start:.1f} s")
    return EXIT_FAILURE if failures else EXIT_OK


def _stylize_one(stylizer, content, output: Path, args: argparse.Namespace, say) -> None:
    from .callbacks import Callbacks, JsonTrace, ProgressBar, SaveEvery
    from .image import load_image, save_image
    from .memory import available_bytes

    start = time.perf_counter()
    name = content if isinstance(content, (str, Path)) else "sample"
    content = load_image(content, stylizer.options.max_pixels)  # decoded once, for the estimate and the run
    estimate = stylizer.memory_estimate(content)
    say(f"{name}: estimated peak memory {estimate}")
    free = available_bytes(stylizer.device)
    if free is not None and estimate.beyond_loaded > free:
        from .errors import NstError

        raise NstError(
            f"this run needs about {estimate.beyond_loaded / 2**30:.1f} GiB more but "
            f"{free / 2**30:.1f} GiB is free on "
            f"{stylizer.device}; {_what_fits(stylizer, content, free)}"
        )
    save_args = {"bit_depth": args.bit_depth, **({} if args.quality is None else {"quality": args.quality})}
    progress = None if args.quiet else ProgressBar(stylizer.total_steps(content))
    trace = JsonTrace() if args.log_json else None
    saver = SaveEvery(output, args.save_every, **save_args) if args.save_every else None
    try:
        result = stylizer.stylize_tensor(content, callback=Callbacks(progress, trace, saver))
    finally:
        if progress is not None:
            progress.close()
        if trace is not None:
            trace.write(args.log_json)
    save_image(result, output, **save_args)
    say(f"wrote {output} ({result.shape[-1]}×{result.shape[-2]}) in {time.perf_counter() - start:.1f} s")


def _what_fits(stylizer, content, free: int) -> str:
    """The single changes of options that would fit in ``free`` bytes, by the estimate: a sentence."""
    opts = stylizer.options

    def fits(**change) -> bool:
        return stylizer.memory_estimate(content, **change).beyond_loaded <= free

    found = []
    if opts.backend == "torch" and opts.checkpoint != "on" and fits(checkpoint="on"):
        found.append("--checkpoint on")
    if opts.backend == "torch" and stylizer.precision.autocast_dtype is None and fits(precision="bf16"):
        found.append("--precision bf16")
    largest = opts.tile or opts.size
    smallest = max(64, 2 * opts.min_size, 2 * opts.tile_overlap + 1 if opts.tile_overlap is not None else 0)
    tiles = [largest >> k for k in range(1, 8) if largest >> k >= smallest]
    tile = next((t for t in tiles if fits(tile=t)), None)
    if tile:
        found.append(f"--tile {tile}")
    size = opts.size * 3 // 4
    while size >= opts.min_size and not fits(size=size):
        size = size * 3 // 4
    if size >= opts.min_size:
        found.append(f"--size {size}")
    if not found:
        return "no single change of --checkpoint, --precision, --tile or --size would fit; free some memory"
    return "by the estimate, any of these would fit: " + ", ".join(found)


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif")


def _jobs(content: str, output: str, fmt: str, bit_depth: int = 8) -> list[tuple[str, Path]]:
    """(content image, output path) pairs: one, or — for a directory or glob of images — one per image,
    written into the output directory as <name>.<format>."""
    import glob

    from .errors import OptionsError
    from .image import check_output_path

    path = Path(content)
    if path.is_dir():
        sources = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    elif any(c in content for c in "*?[") and not path.exists():
        sources = sorted(Path(p) for p in glob.glob(content) if Path(p).suffix.lower() in IMAGE_SUFFIXES)
    else:
        return [(content, check_output_path(output, bit_depth))]
    if not sources:
        raise OptionsError(f"no images found in {content}")
    out_dir = Path(output)
    if not out_dir.is_dir():
        raise OptionsError(f"for a directory or glob of content images, -o must name an existing directory: {output}")
    jobs = [(str(s), check_output_path(out_dir / f"{s.stem}.{fmt}", bit_depth)) for s in sources]
    names = [o.name for _, o in jobs]
    if len(set(names)) != len(names):
        raise OptionsError("two content images share a name: their outputs would overwrite each other")
    return jobs


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


# Options that shape an exported graph (the rest — steps, optimizer, seed, ... — belong to the loop).
_FEATURES_OPTIONS = ("pooling", "weights", "weights_preprocessing")
_STEP_OPTIONS = ("size", "style_scale", "content_layers", "style_layers", "style_layer_weights", "content_weight",
                 "style_weight", "normalize_losses", "tv_weight", "pooling", "weights", "weights_preprocessing",
                 "device")  # fmt: skip


def _add_option_flags(parser, names: tuple[str, ...]) -> None:
    """Flags for the :class:`Options` fields ``names``, as the stylize command has them."""
    from .options import Options

    defaults = Options()
    fields = {f.name: f for f in dataclasses.fields(Options)}
    for name in names:
        f = fields[name]
        default = getattr(defaults, name)
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        text = f.metadata["help"]
        if "(default:" not in text:  # a None default is described in the help's own words
            text += f" (default: {shown})"
        kwargs = {"default": argparse.SUPPRESS, "help": text}
        kind = _arg_type(str(f.type))
        if kind is None:
            parser.add_argument(_flag(name), action=argparse.BooleanOptionalAction, **kwargs)
            continue
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        metavar = "N" if kind is int else "X" if kind is float else None
        if str(f.type).startswith("tuple"):
            metavar = "A,B,..."
        parser.add_argument(_flag(name), type=kind, metavar=metavar, **kwargs)


def build_export_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="nst-fast export",
        description="Write an ONNX graph (opset 17, dynamic height and width, checked with onnx.checker and "
        "against PyTorch in ONNX Runtime) that any ONNX engine runs: the VGG-19 feature extractor, or the whole "
        "loss-and-gradient step of a stylization (image → loss, ∂loss/∂image) with its backward written out.",
        epilog="examples:\n  nst-fast export features --layers relu1_1,relu4_2 -o vgg.onnx\n"
        "  nst-fast export step --content photo.jpg --style starry_night.jpg --size 512 -o step.onnx\n"
        "  nst-fast export step -o step.onnx                     # targets and weights as inputs\n"
        "  nst-fast export step --content photo.jpg --style starry_night.jpg --targets inputs \\\n"
        "      --feeds feeds.npz -o step.onnx                   # and the inputs for these images",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="graph", required=True, metavar="{features,step}")
    features = sub.add_parser("features", help="the truncated feature extractor: image → one output per layer",
                              description="The VGG-19 feature extractor, truncated after the deepest layer, with "
                              "one output per layer (named after it) and the weights' preprocessing inside: its "
                              "input is RGB in [0, 1], N×3×H×W, float32.")  # fmt: skip
    features.add_argument("--layers", default=None, metavar="A,B,...",
                          help="layers to output (default: the default content and style layers)")  # fmt: skip
    _add_option_flags(features, _FEATURES_OPTIONS)
    step = sub.add_parser("step", help="the loss-and-gradient step: image → (loss, ∂loss/∂image)",
                          description="The loss of a stylization and its gradient with respect to the image "
                          "(outputs loss, grad, and one scalar per term), with standard ops only.")  # fmt: skip
    step.add_argument("--content", default=None, help="content image: its activations are the content targets")
    step.add_argument("--style", action="append", default=None, help="style image (repeat to blend)")
    step.add_argument("--style-blend", default=None, metavar="W1,W2,...", help="blend weights of the style images")
    step.add_argument("--targets", choices=("inputs", "initializers"), default=None,
                      help="targets and weights as graph inputs (one graph for many images) or baked in "
                      "(default: initializers when --content and --style are given, else inputs)")  # fmt: skip
    step.add_argument("--dtype", choices=("float32", "float16"), default="float32",
                      help="precision of the network inside (inputs and outputs stay float32) (default: %(default)s)")
    step.add_argument("--conv-backward", choices=("convtranspose", "conv"), default="convtranspose",
                      help="a convolution's input gradient as ConvTranspose with its weights, or Conv with "
                      "flipped copies (default: %(default)s)")  # fmt: skip
    step.add_argument("--feeds", metavar="FILE.npz", default=None,
                      help="also write the graph's inputs for these images (targets as inputs): name → array")
    _add_option_flags(step, _STEP_OPTIONS)
    for p in (features, step):
        p.add_argument("-o", "--output", required=True, metavar="FILE.onnx", help="the ONNX file to write")
        p.add_argument("--no-check", dest="check", action="store_false",
                       help="skip running the graph in ONNX Runtime against PyTorch")  # fmt: skip
        p.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    return parser


def _export(args: argparse.Namespace) -> int:
    from .errors import OptionsError
    from .options import Options, split_list

    _check_writable(args.output, (".onnx",))
    overrides = {k: getattr(args, k) for k in (*_FEATURES_OPTIONS, *_STEP_OPTIONS) if hasattr(args, k)}
    say = (lambda message: None) if args.quiet else (lambda message: print(message, file=sys.stderr, flush=True))
    if args.graph == "features":
        options = Options().replace(**overrides)
        layers = options.layers if args.layers is None else split_list(args.layers)
        if not layers:
            raise OptionsError("--layers must name at least one layer")
        from .onnx import export as onnx_export
        from .vgg import VGG19, check_layers
        from .weights import load_weights

        layers = check_layers(layers)
        model = VGG19(layers, load_weights(options.weights, options.weights_preprocessing), options.pooling)
        proto = onnx_export.build_features_graph(model, layers)
        if args.check:
            error = onnx_export.check_features(proto, model)
            _checked(error, 1e-4, "features graph")
            say(f"checked against PyTorch in ONNX Runtime: relative error {error:.1e}")
        onnx_export.save(proto, args.output)
        say(f"wrote {args.output} ({_megabytes(args.output)}): image → {', '.join(layers)}")
        return EXIT_OK
    return _export_step(args, Options().replace(**overrides), say)


def _export_step(args: argparse.Namespace, options, say) -> int:
    from .errors import OptionsError
    from .onnx import export as onnx_export
    from .options import parse_floats

    if args.feeds is not None:
        _check_writable(args.feeds, (".npz",))
    have_images = args.content is not None or args.style is not None
    if have_images and (args.content is None or not args.style):
        raise OptionsError("--content and --style go together (or give neither, for targets as inputs)")
    targets = args.targets or ("initializers" if have_images else "inputs")
    if targets == "initializers" and not have_images:
        raise OptionsError("--targets initializers bakes in the targets of --content and --style: give both")
    if args.feeds is not None and not (have_images and targets == "inputs"):
        raise OptionsError("--feeds writes the inputs of a graph with --targets inputs for --content and --style")
    if have_images:
        from . import reference
        from .image import load_image
        from .stylizer import Stylizer

        blend = None if args.style_blend is None else parse_floats("style blend weights", args.style_blend)
        stylizer = Stylizer(args.style, options, style_blend=blend)
        model = stylizer.model
        content = stylizer._prepare(load_image(args.content), options.size, "content")
        loss_fn = reference.build_loss(model, content, stylizer.style_targets, options)
    else:
        if args.style_blend is not None:
            raise OptionsError("--style-blend needs --style images")
        model, loss_fn = _placeholder_loss(options)
    proto = onnx_export.build_step_graph(model, loss_fn, targets, args.dtype, args.conv_backward)
    if args.check:
        loss_error, grad_error = onnx_export.check_step(proto, model, loss_fn, None if have_images else (48, 40))
        # The gradient is discontinuous where a ReLU or a max-pool switches, and float32 rounding switches a
        # few of them at large sizes (~5e-4 at 512 px): its bound catches a wrong graph, not those.
        fp32 = args.dtype == "float32"
        _checked(loss_error, 1e-3 if fp32 else 1e-2, "step graph's loss")
        _checked(grad_error, 1e-2 if fp32 else 1e-1, "step graph's gradient")
        say(f"checked against torch autograd in ONNX Runtime: loss {loss_error:.1e}, gradient {grad_error:.1e} "
            "relative error")  # fmt: skip
    if args.feeds is not None:
        import numpy as np

        from .atomic import atomic_save

        feeds = onnx_export.step_feeds(loss_fn)
        atomic_save(args.feeds, lambda f: np.savez(f, **feeds))
        say(f"wrote {args.feeds}: {', '.join(feeds)}")
    onnx_export.save(proto, args.output)
    inputs = ", ".join(i.name for i in proto.graph.input)
    say(f"wrote {args.output} ({_megabytes(args.output)}, {args.dtype}, targets as {targets}): "
        f"{inputs} → {', '.join(o.name for o in proto.graph.output)}")  # fmt: skip
    return EXIT_OK


def _placeholder_loss(options):
    """The model and a loss with zero targets: the structure of a graph whose targets are inputs."""
    import torch

    from .losses import StyleTransferLoss
    from .onnx.export import _channels
    from .vgg import VGG19
    from .weights import load_weights

    model = VGG19(options.layers, load_weights(options.weights, options.weights_preprocessing), options.pooling)
    content = {n: torch.zeros(1, _channels(model, n), 1, 1) for n in options.content_layers}
    style = {n: torch.zeros(1, _channels(model, n), _channels(model, n)) for n in options.style_layers}
    loss_fn = StyleTransferLoss(content, style, options.layer_weights, options.content_weight, options.style_weight,
                                options.tv_weight)  # fmt: skip
    return model, loss_fn


def _checked(error: float, tolerance: float, what: str) -> None:
    import math

    if not math.isfinite(error) or error > tolerance:
        raise RuntimeError(f"the exported {what} differs from PyTorch by {error:.1e} (relative; over "
                           f"{tolerance:.0e}): not trusted — please report this")  # fmt: skip


def _megabytes(path: str) -> str:
    return f"{Path(path).stat().st_size / 2**20:.1f} MiB"


COMMANDS = {
    "stylize": (build_parser, _stylize),
    "bench": (build_bench_parser, _bench),
    "info": (build_info_parser, _info),
    "export": (build_export_parser, _export),
}


if __name__ == "__main__":
    sys.exit(main())
