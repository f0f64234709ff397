"""Atomic file writes: into a temporary file beside the target, then renamed over it.

A failure at any point leaves an existing file at the target untouched and no temporary file behind.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


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


def probe_directory(directory: str | os.PathLike) -> None:
    """Create and remove a temporary file in ``directory``, as :func:`atomic_save` will; raise the
    ``OSError`` if that fails. Permission bits do not tell (root passes ``os.access`` on a read-only
    mount or in /proc): trying is the one check that finds out before the work rather than after."""
    fd, tmp = tempfile.mkstemp(prefix=".nst-fast-probe.", suffix=".tmp", dir=directory)
    os.close(fd)
    os.unlink(tmp)


def write_problem(error: OSError) -> str:
    """Why a write failed, in the system's words, without the temporary file's name."""
    return error.strerror or type(error).__name__


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_save(path, lambda f: f.write(text.encode()))
