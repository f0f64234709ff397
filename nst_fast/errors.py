"""Errors that a user can cause and fix: the CLI prints their message on one line, with no traceback.

One class per condition, all :class:`NstError`; library code raises them ``from`` the underlying error
where there is one, so that a library user keeps the cause while the CLI still prints one line.
"""


class NstError(Exception):
    """Base class of every error caused by input (images, options, weights, devices)."""


class OptionsError(NstError, ValueError):
    """An option has a value that cannot be used (unknown layer, negative weight, missing device, ...)."""


class ImageError(NstError):
    """An image cannot be read, is not an image, cannot be used at this size, or cannot be written."""


class WeightsError(NstError):
    """VGG-19 weights cannot be found, downloaded, or do not have the expected layout or shapes."""


class MemoryFitError(NstError):
    """A run would need more memory than the device has free; the message names changes that fit."""


class DivergedError(NstError):
    """The loss became NaN or infinite during an optimization."""


class Cancelled(NstError):
    """A run was cancelled through its :class:`~nst_fast.control.Cancel` token; it left no output."""


def counted(count: int, noun: str) -> str:
    """``count`` and ``noun`` for a message, the noun plural unless the count is one: "1 style image"."""
    return f"{count} {noun}{'' if count == 1 else 's'}"
