"""The ``nst-fast`` command: ``main(argv)`` runs one of its commands, each a module of this package.

- :mod:`.stylize` (the default): stylize images;
- :mod:`.export`: write ONNX graphs;
- :mod:`.bench`: ``bench`` (measure) and ``info`` (what this installation has);
- :mod:`.serve`: ``serve``, the HTTP service (extra ``serve``).

The modules parse, print and map errors to exit codes; the work is the library's. Every error caused
by input ends with one line on stderr and a non-zero exit code: 2 for bad usage or input, 1 for a
failure while running, 130 when interrupted; 3 when a batch (a directory or glob of content images,
with or without ``--ray``) finished with one or more images failed (each named on stderr; with
``--ray``, in its manifest too), the others written.
"""

from __future__ import annotations

import importlib
import sys

from .common import guarded

# command → (module, parser factory, runner); a command's module is imported when it runs, so that
# stylizing does not import ONNX and exporting does not import matplotlib.
COMMANDS = {
    "stylize": ("stylize", "build_parser", "run"),
    "export": ("export", "build_parser", "run"),
    "bench": ("bench", "build_bench_parser", "run_bench"),
    "info": ("bench", "build_info_parser", "run_info"),
    "serve": ("serve", "build_parser", "run"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    command = "stylize"
    if argv and argv[0] in COMMANDS:
        command, argv = argv[0], argv[1:]
    module_name, parser_name, runner_name = COMMANDS[command]
    # (Ctrl-C while a command's module is imported, ONNX or matplotlib, is nst_fast_entry's to report.)
    module = importlib.import_module(f"{__name__}.{module_name}")
    args = getattr(module, parser_name)().parse_args(argv)
    return guarded(getattr(module, runner_name), args)


if __name__ == "__main__":
    sys.exit(main())
