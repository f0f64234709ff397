"""Errors that a user can cause and fix: the CLI prints their message on one line, with no traceback.

One class per condition, all :class:`NstError`; library code raises them ``from`` the underlying error
where there is one, so that a library user keeps the cause while the CLI still prints one line.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


class NstError(Exception):
    """Base class of every error caused by input (images, options, weights, devices)."""


class OptionsError(NstError, ValueError):
    """An option has a value that cannot be used (unknown layer, negative weight, missing device, ...)."""


class ImageError(NstError):
    """An image cannot be read, is not an image, cannot be used at this size, or cannot be written."""


class WeightsError(NstError):
    """VGG-19 weights cannot be found, downloaded, or do not have the expected layout or shapes."""


class MemoryFitError(NstError):
    """A run would need more memory than the device has free; the message names changes that fit.

    ``reason`` is the message less its advice, and ``changes`` the single option changes that would fit,
    as :class:`~nst_fast.options.Options` fields (``[{"checkpoint": "on"}, {"tile": 512}]``, or ``[]``:
    none would), from a plan's :meth:`~nst_fast.plan.Plan.check_fits`; None where the message gives its own
    remedy. A front end spells them its own way (:func:`nst_fast.plan.fit_advice`: the CLI as flags, the
    server as request options)."""

    def __init__(self, message: str, reason: str | None = None, changes: Sequence[Mapping[str, object]] | None = None):
        super().__init__(message)
        self.reason = message if reason is None else reason
        self.changes = None if changes is None else [dict(change) for change in changes]


class DivergedError(NstError):
    """The loss became NaN or infinite during an optimization."""


class Cancelled(NstError):
    """A run was cancelled through its :class:`~nst_fast.control.Cancel` token; it left no output."""


def counted(count: int, noun: str) -> str:
    """``count`` and ``noun`` for a message, the noun plural unless the count is one: "1 style image"."""
    return f"{count} {noun}{'' if count == 1 else 's'}"
