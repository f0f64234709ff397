"""Errors that a user can cause and fix: the CLI prints their message on one line, with no traceback."""


class NstError(Exception):
    """Base class of every error caused by input (images, options, weights, devices)."""


class OptionsError(NstError, ValueError):
    """An option has a value that cannot be used (unknown layer, negative weight, ...)."""


class ImageError(NstError):
    """An image cannot be read, is not an image, or cannot be written."""


class WeightsError(NstError):
    """VGG-19 weights cannot be found, downloaded, or do not have the expected layout or shapes."""
