"""What every command shares: the parser that errs on one line, option flags generated from
:class:`~nst_fast.options.Options`, output-path checks, messages, and errors mapped to exit codes."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

from ..atomic import unwritable
from ..errors import MemoryFitError, NstError, OptionsError
from ..options import Options, value_type
from ..plan import AS_FLAG, fit_advice

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_SOME_FAILED = 3  # a batch (a directory or glob; with or without --ray) in which some images failed


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with usage errors on one line (the full usage is one --help away)."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def guarded(run, args: argparse.Namespace) -> int:
    """Run a command, mapping every error to one line on stderr and an exit code."""
    show_library_messages(quiet=getattr(args, "quiet", False))
    try:
        return run(args)
    except KeyboardInterrupt:
        print("nst-fast: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except NstError as e:
        print(f"nst-fast: error: {message(e)}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as e:  # noqa: BLE001 — mapped to one line
        print(f"nst-fast: failed: {type(e).__name__}: {' '.join(str(e).split())}", file=sys.stderr)
        return EXIT_FAILURE


def message(error: Exception) -> str:
    """An error's message for the command line: a :class:`MemoryFitError`'s changes as flags."""
    if isinstance(error, MemoryFitError) and error.changes is not None:
        return f"{error.reason}; {fit_advice(error.changes, AS_FLAG)}"
    return str(error)


def show_library_messages(quiet: bool) -> None:
    """Print what the library logs (which execution provider ONNX Runtime chose, ...) as nst-fast's own
    lines on stderr; with ``quiet``, warnings only. The library itself installs no handler."""
    logger = logging.getLogger("nst_fast")
    if not any(isinstance(h, _Stderr) for h in logger.handlers):
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("nst-fast: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.WARNING if quiet else logging.INFO)


class _Stderr(logging.StreamHandler):
    """A handler writing to ``sys.stderr`` as it is when a message is written (not when it was made)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def say_unless(quiet: bool):
    """A function that prints a message on stderr unless ``quiet``."""
    if quiet:
        return lambda message: None
    return lambda message: print(message, file=sys.stderr, flush=True)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_option_flags(parser, names: tuple[str, ...]) -> None:
    """Flags for the :class:`Options` fields ``names``: help, choices and type from the fields' metadata.
    A flag not given stays absent from the namespace, so that Options' own default applies."""
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
        kind = value_type(f)
        if kind == "bool":
            parser.add_argument(flag(name), action=argparse.BooleanOptionalAction, **kwargs)
            continue
        if f.metadata["choices"]:
            kwargs["choices"] = f.metadata["choices"]
        # Lists stay text: Options parses and validates "a,b,c" itself, with its own messages.
        parse, metavar = {
            "int": (int, "N"),
            "float": (float, "X"),
            "names": (str, "A,B,..."),
            "floats": (str, "A,B,..."),
        }.get(kind, (str, None))
        parser.add_argument(flag(name), type=parse, metavar=metavar, **kwargs)


def options_from(args: argparse.Namespace, base: Options | None = None) -> Options:
    """The :class:`Options` that the flags in ``args`` give (each absent flag: its default)."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(Options) if hasattr(args, f.name)}
    return (base or Options()).replace(**given)


def check_writable(path: str, suffixes: tuple[str, ...]) -> None:
    """Before any work: ``path`` has one of ``suffixes``, its directory exists and a file can be made there."""
    p = Path(path)
    if p.suffix.lower() not in suffixes:
        raise OptionsError(f"{path}: the file name must end in {' or '.join(suffixes)}")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise OptionsError(f"output directory does not exist: {p.parent}")
    problem = unwritable(parent)
    if problem:
        raise OptionsError(f"cannot write {path}: {problem} (in {parent})")


def check_at_least(flag_name: str, value: int | None, minimum: int) -> None:
    if value is not None and value < minimum:
        raise OptionsError(f"{flag_name} must be at least {minimum}, got {value}")
