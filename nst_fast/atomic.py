"""Atomic file writes: into a temporary file beside the target, then renamed over it.

A failure at any point leaves an existing file at the target untouched and no temporary file behind.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from .errors import OptionsError


def atomic_save(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(file)`` on a temporary file in ``path``'s directory, then rename it to ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes the file private (0600); give it the mode a plain open() would, or the mode of
        # the file it replaces.
        os.fchmod(fd, _mode_for(path))
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _mode_for(path: Path) -> int:
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def unwritable(directory: str | os.PathLike) -> str | None:
    """Why a file cannot be created in ``directory`` (the system's words), or None if it can: tried by
    creating and removing a temporary file, as :func:`atomic_save` will. Permission bits do not tell (root
    passes ``os.access`` in /proc and on read-only mounts): trying finds out before the work, not after."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".nst-fast-probe.", suffix=".tmp", dir=directory)
    except OSError as e:
        return e.strerror or type(e).__name__
    os.close(fd)
    os.unlink(tmp)
    return None


def refuse_overwriting_inputs(outputs, inputs, remedy: str) -> None:
    """Raise :class:`OptionsError` if one of ``outputs`` is one of ``inputs`` (the same file: compared
    resolved, and by device and inode where both exist, which also catches hard links and
    case-insensitive file systems). A run must not replace its own inputs (-o the content directory
    would stylize each photo over itself)."""
    resolved = {Path(p).expanduser().resolve() for p in inputs}
    existing = [Path(p).expanduser() for p in inputs if Path(p).expanduser().exists()]
    for output in outputs:
        out = Path(output).expanduser()
        if out.resolve() in resolved or (out.exists() and any(os.path.samefile(out, p) for p in existing)):
            raise OptionsError(f"the output {output} would overwrite an input image: {remedy}")


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_save(path, lambda f: f.write(text.encode()))
