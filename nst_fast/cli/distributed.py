"""``nst-fast CONTENT_DIR_OR_GLOB STYLE... -o OUT_DIR --ray [ADDRESS]``: a collection on a Ray cluster.

The flags join the stylize command's parser (:func:`add_ray_flags`); with ``--ray``, its ``run`` hands
over to :func:`run_distributed`, which calls :func:`nst_fast.distributed.stylize_dataset` (imported
here only then: the command never imports Ray otherwise).

Exit codes: 0 when every image is done (now, or by an earlier run); 3 when some images failed (each
reported, with its reason, on stderr and in the manifest) and the others are done; 2 for bad usage or
input, or settings that differ from the output directory's manifest without ``--overwrite``; 1 when
the run itself failed; 130 when interrupted (a rerun goes on from there).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..errors import OptionsError
from ..options import parse_floats
from .common import EXIT_OK, EXIT_SOME_FAILED, check_at_least, options_from, say_unless


def add_ray_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        'beyond one machine (Ray Data; needs pip install "nst-fast[ray]")',
        "CONTENT is a directory or glob and -o a directory that every node reaches at the same paths.",
    )
    group.add_argument(
        "--ray",
        nargs="?",
        const="local",
        default=None,
        metavar="ADDRESS",
        help="stylize on Ray: alone, a Ray started here for the run; 'auto', this machine's cluster; "
        "HOST:PORT or ray://HOST:10001, that cluster (put --ray after CONTENT and STYLE, or write --ray=ADDRESS)",
    )
    group.add_argument(
        "--actors", type=int, default=None, metavar="N", help="actors (default: one per GPU, else per --actor-cpus)"
    )
    group.add_argument(
        "--actor-cpus",
        type=int,
        default=None,
        metavar="N",
        help="CPUs per actor, and torch threads in it (default: 4 on CPU nodes, or the largest node's CPUs if fewer; "
        "1 beside a GPU; more than the largest node has is refused)",
    )
    group.add_argument(
        "--overwrite",
        action="store_true",
        help="redo every image, even when the output directory's manifest has other settings",
    )


def uses_ray(args: argparse.Namespace) -> bool:
    """Whether any of the Ray flags was given (without --ray, the others are an error)."""
    return args.ray is not None or args.actors is not None or args.actor_cpus is not None or args.overwrite


def run_distributed(args: argparse.Namespace) -> int:
    """The stylize command with ``--ray``; returns the exit code."""
    from ..distributed.cluster import check_installed

    if args.ray is None:
        raise OptionsError("--actors, --actor-cpus and --overwrite go with --ray")
    check_installed()  # before any work, with the install command
    if args.content is None or not args.styles:
        raise OptionsError("--ray needs CONTENT (a directory, glob or image) and STYLE")
    if args.save_every or args.log_json:
        raise OptionsError("--save-every and --log-json follow one image's run: use them without --ray")
    check_at_least("--actors", args.actors, 1)
    check_at_least("--actor-cpus", args.actor_cpus, 1)
    from ..distributed import stylize_dataset
    from .stylize import batch_jobs, remove_empty

    made: list[Path] = []  # directories batch_jobs made for -o: removed again below where nothing was written
    try:
        if Path(args.content).is_file():
            if not Path(args.output).is_dir():
                raise OptionsError(f"with --ray, -o must name an existing directory: {args.output}")
            paths = [args.content]
        else:  # (whether an output would replace an input, styles and --init included, stylize_dataset checks)
            jobs = batch_jobs(args.content, args.output, args.format, args.bit_depth, made=made)
            paths = [content for content, _ in jobs]
        blend = None if args.style_blend is None else parse_floats("style blend weights", args.style_blend)
        say = say_unless(args.quiet)
        import ray.data  # noqa: F401 — sets up Ray Data's logging, quietened below

        # Ray Data's notices about its own execution (which also go to its log file in the Ray session's
        # logs/ray-data): this process is the command's, and its bar and summary say what happened.
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        summary = stylize_dataset(
            paths,
            args.styles,
            args.output,
            options_from(args),
            style_blend=blend,
            format=args.format,
            bit_depth=args.bit_depth,
            quality=args.quality,
            address=None if args.ray == "local" else args.ray,
            actors=args.actors,
            actor_cpus=args.actor_cpus,
            overwrite=args.overwrite,
            progress=not args.quiet,
            ray_init_args={"logging_level": logging.WARNING},
        )
        lines = summary.lines()
        say(lines[0])
        for line in lines[1:]:  # failures: printed even with --quiet
            print(f"nst-fast: error: {line.removeprefix('failed: ')}", file=sys.stderr)
        return EXIT_OK if summary.ok else EXIT_SOME_FAILED
    finally:
        remove_empty(made)  # where nothing was written in them (a refusal before any image)
