"""``nst-fast [CONTENT STYLE...]``: stylize one image, or a directory or glob of them."""

from __future__ import annotations

import argparse
import dataclasses
import glob
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .. import __version__
from ..callbacks import Callbacks, JsonTrace, ProgressBar, SaveEvery
from ..errors import ImageError, OptionsError
from ..atomic import refuse_overwriting_inputs
from ..image import check_output_path, header_shape, load_image, save_image
from ..options import INITS, Options, parse_floats
from ..plan import Plan, resolve_device, schedule
from ..samples import sample_content, sample_style
from ..stylizer import Stylizer
from ..vgg import LAYER_NAMES
from .common import (
    EXIT_OK,
    EXIT_SOME_FAILED,
    ArgumentParser,
    add_option_flags,
    check_at_least,
    check_writable,
    message,
    options_from,
    say_unless,
)
from .distributed import add_ray_flags, run_distributed, uses_ray

DESCRIPTION = """\
Stylize CONTENT with STYLE: optimize an image whose VGG-19 features match the content image's and
whose Gram matrices match the style image's (Gatys, Ecker & Bethge 2015).

With no CONTENT and STYLE, a built-in sample pair is used (a photograph that matplotlib ships and
a painting that nst-fast paints itself), so that `nst-fast -o demo.png` works out of the box.

Other commands (nst-fast COMMAND --help):
  bench    time one optimization iteration per backend, precision and size; table, JSON, plot
  export   write the VGG-19 features, or the whole loss-and-gradient step, as an ONNX graph
  info     the device, extension, backends and weights this installation has
  serve    the HTTP service: a job queue, a web page and metrics (needs the serve extra)"""

EPILOG = """\
examples:
  nst-fast photo.jpg starry_night.jpg -o out.png
  nst-fast photo.jpg starry_night.jpg -o out.png --size 1024 --style-weight 50
  nst-fast photo.jpg a.jpg b.jpg --style-blend 0.7,0.3 -o out.png
  nst-fast photo.jpg starry_night.jpg -o print.tif --size 2048        # coarse to fine: 512 → 1024 → 2048
  nst-fast photos/ starry_night.jpg -o styled/ --format jpg --quality 92
  nst-fast photo.jpg starry_night.jpg -o out.png --preserve-colors --save-every 20 --log-json trace.json
  nst-fast --list-layers"""

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="nst-fast", description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "content",
        nargs="?",
        help="content image, or a directory or glob of them (default: the built-in sample photograph)",
    )
    parser.add_argument("styles", nargs="*", metavar="style", help="style image(s) (default: the built-in painting)")
    parser.add_argument(
        "-o",
        "--output",
        default="stylized.png",
        help="output image, its format from its extension; a directory for a batch (default: %(default)s)",
    )
    parser.add_argument(
        "--style-blend", default=None, metavar="W1,W2,...", help="blend weights of the style images (default: equal)"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    out = parser.add_argument_group("output and feedback")
    out.add_argument(
        "--quality", type=int, default=None, metavar="Q", help="JPEG/WebP quality, 1-100 (default: Pillow's)"
    )
    out.add_argument(
        "--bit-depth",
        type=int,
        default=8,
        choices=(8, 16),
        help="bits per channel of the output; 16 needs a .tif output (default: %(default)s)",
    )
    out.add_argument(
        "--format", default="png", help="output format in batch mode, where -o is a directory (default: %(default)s)"
    )
    out.add_argument(
        "--save-every",
        type=int,
        default=None,
        metavar="N",
        help="also save every N-th iterate, as OUTPUT-stem.stepNNNNN.ext",
    )
    out.add_argument(
        "--log-json",
        default=None,
        metavar="FILE",
        help="write a per-iteration trace (loss terms, time, peak memory) as JSON",
    )
    parser.add_argument("--list-layers", action="store_true", help="list the VGG-19 layer names and exit")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    group = parser.add_argument_group("stylization options (also nst_fast.Options fields)")
    add_option_flags(group, tuple(f.name for f in dataclasses.fields(Options)))
    add_ray_flags(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    if args.list_layers:
        print("\n".join(LAYER_NAMES))
        return EXIT_OK
    if uses_ray(args):  # a collection on a Ray cluster: cli/distributed.py
        return run_distributed(args)
    say = say_unless(args.quiet)
    options = options_from(args)
    if args.quality is not None and not 1 <= args.quality <= 100:
        raise OptionsError(f"--quality must be between 1 and 100, got {args.quality}")
    check_at_least("--save-every", args.save_every, 1)
    if args.log_json is not None:
        check_writable(args.log_json, (".json",))
    if args.content is None:
        jobs, styles = [(sample_content(), check_output_path(args.output, args.bit_depth))], [sample_style()]
        say("no CONTENT and STYLE given: using the built-in sample photograph and painting")
        return _run_jobs(args, options, jobs, styles, say)
    if not args.styles:
        raise OptionsError("a STYLE image is needed after CONTENT (or give neither, for the built-in samples)")
    others = [*args.styles, *([] if options.init in INITS else [options.init])]
    made: list[Path] = []  # directories made for a batch's -o: removed again where nothing was written
    try:
        jobs = batch_jobs(args.content, args.output, args.format, args.bit_depth, others, made)
        return _run_jobs(args, options, jobs, args.styles, say)
    finally:
        remove_empty(made)


def _run_jobs(args: argparse.Namespace, options: Options, jobs: list[tuple[str, Path]], styles, say) -> int:
    blend = None if args.style_blend is None else parse_floats("style blend weights", args.style_blend)
    start = time.perf_counter()
    decoded = None
    # The contents' plans are checked before the Stylizer computes the style's targets at every scale: a
    # run that cannot fit is refused in seconds, not after minutes of style passes (or a kill).
    if len(jobs) == 1:
        decoded = load_image(jobs[0][0], options.max_pixels)
        Plan.resolve(options, tuple(decoded.shape[-2:]), resolve_device(options.device)).check_fits()
    else:
        _refuse_unless_one_fits([content for content, _ in jobs], options)
    stylizer = Stylizer(styles, options, style_blend=blend)
    say(_describe(stylizer))
    if options.batch_size > 1 and len(jobs) > 1:
        failures = _stylize_batches(stylizer, jobs, args, say)
    else:
        failures = 0
        for content, output in jobs:
            try:
                _stylize_one(stylizer, content, output, args, say, decoded)
            except (KeyboardInterrupt, OptionsError):
                raise
            except Exception as e:  # noqa: BLE001 — in a batch, one bad file must not stop the rest
                if len(jobs) == 1:
                    raise
                failures += 1
                _report(content, e)
    if len(jobs) > 1:
        say(f"stylized {len(jobs) - failures} of {len(jobs)} images in {time.perf_counter() - start:.1f} s")
    return EXIT_SOME_FAILED if failures else EXIT_OK


def _refuse_unless_one_fits(contents: list[str], options: Options) -> None:
    """A batch goes on (each file then checked as it comes) once one file's plan fits, from its header
    (:func:`~nst_fast.image.header_shape`);
    where none does, the first one's :class:`MemoryFitError` — so that a --size too large for every file
    is refused at once. Files that cannot be read are left to their own run's error."""
    device, first = resolve_device(options.device), None
    for content in contents:
        try:
            plan = Plan.resolve(options, header_shape(content, options.max_pixels), device)
        except ImageError:
            continue
        if plan.fits:
            return
        first = first or plan
    if first is not None:
        first.check_fits()


def _report(content, error: Exception) -> None:
    print(f"nst-fast: error: {content}: {' '.join(message(error).split())}", file=sys.stderr)


def _stylize_batches(stylizer: Stylizer, jobs: list[tuple[str, Path]], args: argparse.Namespace, say) -> int:
    """A directory or glob with --batch-size N: images whose runs are alike optimized N at a time
    (Stylizer.stylize_many); returns how many failed. A file that cannot be read fails alone; a batch that
    fails fails for each of its images."""
    if args.save_every or args.log_json:
        raise OptionsError("--save-every and --log-json follow one image's run: use them without --batch-size")
    failures, loaded = 0, []
    for content, output in jobs:
        try:
            image = load_image(content, stylizer.options.max_pixels)
            stylizer.plan(image).check_fits()
            loaded.append((content, output, image))
        except (KeyboardInterrupt, OptionsError):
            raise
        except Exception as e:  # noqa: BLE001 — reported, the rest go on
            failures += 1
            _report(content, e)
    save_args = {"bit_depth": args.bit_depth, **({} if args.quality is None else {"quality": args.quality})}
    start = time.perf_counter()
    written: set[int] = set()

    def save(index: int, result) -> None:  # each image as soon as its batch is done
        save_image(result, loaded[index][1], **save_args)
        written.add(index)

    try:
        stylizer.stylize_many([image for _, _, image in loaded], on_result=save)
    except (KeyboardInterrupt, OptionsError):
        raise
    except Exception as e:  # noqa: BLE001 — the images not yet written fail with it; the written stay
        unwritten = [content for i, (content, _, _) in enumerate(loaded) if i not in written]
        for content in unwritten:
            _report(content, e)
        return failures + len(unwritten)
    say(
        f"wrote {len(loaded)} images in batches of up to {stylizer.options.batch_size} in "
        f"{time.perf_counter() - start:.1f} s"
    )
    return failures


def _describe(stylizer: Stylizer) -> str:
    """The run's settings, on one line."""
    options = stylizer.options
    scales = schedule(options)
    text = f"device {stylizer.device}, backend {options.backend} ({stylizer.precision}), "
    text += f"weights {stylizer.model.weights_source}, "
    if len(scales) > 1:
        text += f"scales {' → '.join(str(size) for size, _ in scales)} px, "
    text += f"{sum(steps for _, steps in scales)} {options.optimizer} steps"
    if options.tile and options.size > options.tile:
        text += f" (at scales above {options.tile} px: per tile)"
    return text


def _stylize_one(stylizer: Stylizer, content, output: Path, args: argparse.Namespace, say, decoded=None) -> None:
    """``decoded``: ``content`` already decoded (a single run's, for its early memory check)."""
    start = time.perf_counter()
    name = content if isinstance(content, (str, Path)) else "sample"
    # Decoded once, for the plan and the run.
    content = load_image(content, stylizer.options.max_pixels) if decoded is None else decoded
    plan = stylizer.plan(content)
    winograd = max((len(s.loop.winograd) for s in plan.scales), default=0)
    by_winograd = f"; up to {winograd} of VGG's convolutions by Winograd (--conv)" if winograd else ""
    say(f"{name}: estimated peak memory {plan.estimate}{by_winograd}")
    plan.check_fits()
    save_args = {"bit_depth": args.bit_depth, **({} if args.quality is None else {"quality": args.quality})}
    progress = None if args.quiet else ProgressBar(plan.total_steps)
    trace = JsonTrace() if args.log_json else None
    saver = SaveEvery(output, args.save_every, **save_args) if args.save_every else None
    ran = [0]  # iterations run: fewer than planned when --max-time or --tol ended the run early

    def count(_) -> None:
        ran[0] += 1

    try:
        result = stylizer.stylize_tensor(content, callback=Callbacks(progress, trace, saver, count), plan=plan)
    finally:
        if progress is not None:
            progress.close()
        if trace is not None:
            trace.write(args.log_json)
    save_image(result, output, **save_args)
    elapsed = time.perf_counter() - start
    if ran[0] < plan.total_steps:
        say(
            f"{name}: ended early{_early_because(stylizer.options, elapsed)}, after {ran[0]} of {plan.total_steps} planned iterations"
        )
    say(f"wrote {output} ({result.shape[-1]}×{result.shape[-2]}) in {elapsed:.1f} s")


def _early_because(options: Options, elapsed: float) -> str:
    """What ended a run before its planned iterations: its deadline (each scale and tile gets a share of
    it, so one may end early while the run as a whole finishes in time) or its tolerance."""
    limit, tol = options.max_time, options.tol
    deadline = f"--max-time {limit:g}" if limit is not None else None
    if deadline and (tol is None or elapsed >= limit):
        return f" by {deadline}"
    if tol is not None:
        return f" by {deadline} or --tol {tol:g}" if deadline else f" by --tol {tol:g}"
    return ""


def batch_jobs(
    content: str,
    output: str,
    fmt: str,
    bit_depth: int = 8,
    others: Sequence[str | os.PathLike] = (),
    made: list[Path] | None = None,
) -> list[tuple[str, Path]]:
    """(content image, output path) pairs: one, or — for a directory or glob of images — one per image,
    written into the output directory as <name>.<format>, which is made if need be (the directories made
    are added to ``made``, deepest first, for :func:`remove_empty`). No output may be a content image or
    one of ``others`` (the style images, an initial image): a run must not destroy its own inputs."""
    content = os.path.expanduser(content)  # a quoted ~ too, as image loading reads it
    path = Path(content)
    if path.is_dir():
        sources = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    elif any(c in content for c in "*?[") and not path.exists():
        sources = sorted(Path(p) for p in glob.glob(content) if Path(p).suffix.lower() in IMAGE_SUFFIXES)
    else:
        sources = None
    if sources is None:
        jobs = [(content, check_output_path(output, bit_depth))]
    else:
        if not sources:
            raise OptionsError(f"no images found in {content}")
        out_dir = Path(os.path.expanduser(output))
        if out_dir.exists() and not out_dir.is_dir():
            raise OptionsError(f"for a directory or glob of content images, -o must name a directory: {output}")
        made = [] if made is None else made
        made.extend(_make_directory(out_dir))  # checked below as it will be written; the caller removes it
        jobs = [(str(s), check_output_path(out_dir / f"{s.stem}.{fmt}", bit_depth)) for s in sources]
        names = [o.name for _, o in jobs]
        if len(set(names)) != len(names):
            raise OptionsError("two content images share a name: their outputs would overwrite each other")
    refuse_overwriting_inputs([o for _, o in jobs], [*(c for c, _ in jobs), *others], "choose another -o")
    return jobs


def remove_empty(directories: list[Path]) -> None:
    """Remove ``directories`` (deepest first) while they are empty: what a batch made and never wrote in."""
    for directory in directories:
        try:
            directory.rmdir()
        except OSError:  # not empty (or gone): it and those above it stay
            return


def _make_directory(path: Path) -> list[Path]:
    """``mkdir -p path``; returns the directories it made, deepest first (to remove them again)."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    try:
        if missing:
            missing[0].mkdir(parents=True)
    except OSError as e:
        remove_empty(missing)  # those it made before the one it could not
        raise OptionsError(f"cannot make the output directory {missing[0]}: {e.strerror or e}") from None
    return missing
