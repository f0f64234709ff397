"""The ``nst-fast`` console script's entry point, outside the ``nst_fast`` package on purpose.

Importing ``nst_fast`` imports torch, which takes seconds; Ctrl-C in that time would otherwise end in a
traceback, before the command's own handler exists. This module imports nothing heavy itself, so its
handler is in place from the first moment: Ctrl-C gives the same one line and exit code 130 at any time.
``python -m nst_fast_entry`` behaves the same.
"""

from __future__ import annotations

import sys

EXIT_INTERRUPTED = 130  # as nst_fast.cli.common's, which cannot be imported before the handler is needed


def main(argv: list[str] | None = None) -> int:
    try:
        from nst_fast.cli import main as cli_main

        return cli_main(argv)
    except KeyboardInterrupt:
        print("nst-fast: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
