"""The ``nst-fast`` command: ``main(argv)`` parses flags into :class:`Options` and runs a stylization.

Every error caused by input ends with one line on stderr and a non-zero exit code: 2 for bad usage or
input, 1 for a failure while running, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

DESCRIPTION = """\
Stylize CONTENT with STYLE: optimize an image whose VGG-19 features match the content image's and
whose Gram matrices match the style image's (Gatys, Ecker & Bethge 2015).

With no CONTENT and STYLE, a built-in sample pair is used (a photograph that matplotlib ships and
a painting that nst-fast paints itself), so that `nst-fast -o demo.png` works out of the box."""

EPILOG = """\
examples:
  nst-fast photo.jpg starry_night.jpg -o out.png
  nst-fast photo.jpg starry_night.jpg -o out.png --size 1024 --style-weight 3000
  nst-fast photo.jpg a.jpg b.jpg --style-blend 0.7,0.3 -o out.png
  nst-fast --list-layers"""


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
    parser = argparse.ArgumentParser(
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
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list_layers:
        from .vgg import LAYER_NAMES

        print("\n".join(LAYER_NAMES))
        return EXIT_OK
    try:
        return _run(args, parser)
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


def _run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
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


if __name__ == "__main__":
    sys.exit(main())
