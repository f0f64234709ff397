"""Whether a request may become a job: its options, the server's limits, and its plan.

A request's options are a JSON object of :class:`~nst_fast.Options` fields, applied to the server's
defaults and validated by the same field metadata as the CLI's flags. The job is then planned
(:meth:`nst_fast.Plan.resolve`) for its content image on the server's device, and admitted only if its
plan is within the pixel and iteration limits (else 422) and fits in the memory the device has free
(else 413, with the plan's suggestions).
"""

from __future__ import annotations

import dataclasses
import json

import torch

from ..errors import ImageError, MemoryFitError, OptionsError
from ..options import INITS, Options
from ..plan import AS_REQUEST, GIB, Plan, check_style_size, fit_advice
from .config import SERVER_OPTIONS, ServeConfig

OPTION_NAMES = frozenset(f.name for f in dataclasses.fields(Options))


class ApiError(Exception):
    """An error answered as ``{"error": message}`` with an HTTP status (and headers)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, " ".join(message.split()), headers or {}


def request_options(text: str | None, defaults: Options) -> Options:
    """The options of a request: ``text`` (JSON, or None/empty for none) applied to ``defaults``."""
    if text is None or not text.strip():
        return defaults
    try:
        fields = json.loads(text)
    except json.JSONDecodeError as e:
        raise ApiError(400, f"options is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    if not isinstance(fields, dict):
        raise ApiError(422, f"options must be a JSON object of option names and values, not {type(fields).__name__}")
    unknown = sorted(set(fields) - OPTION_NAMES)
    if unknown:
        raise ApiError(422, f"unknown option{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}")
    reserved = sorted(set(fields) & SERVER_OPTIONS)
    if reserved:
        raise ApiError(
            422, f"option{'s' if len(reserved) > 1 else ''} {', '.join(reserved)} set by the server, not a request"
        )
    if "init" in fields and fields["init"] not in INITS:
        raise ApiError(422, f"init must be one of {', '.join(INITS)} (a request names no file), got {fields['init']!r}")
    try:
        return defaults.replace(**fields)
    except OptionsError as e:
        raise ApiError(422, str(e)) from None


def admit(
    options: Options,
    content_shape: tuple[int, int],
    device: torch.device,
    config: ServeConfig,
    style_shape: tuple[int, int] | None = None,
) -> Plan:
    """The plan of a job, or :class:`ApiError` when the server's limits or the device's memory refuse it
    (the style image, of ``style_shape``, is held to the same pixel limit at its ``style_scale``)."""
    try:
        plan = Plan.resolve(options, content_shape, device)
    except (ImageError, OptionsError) as e:
        raise ApiError(422, str(e)) from None
    final = plan.scales[-1]
    pixels = final.height * final.width
    if pixels > config.max_pixels:
        raise ApiError(
            422,
            f"the result would be {final.width}×{final.height} = {pixels} px, above this server's limit of "
            f"{config.max_pixels} px; lower size",
        )
    if plan.total_steps > config.max_steps:
        raise ApiError(
            422,
            f"this job takes {plan.total_steps} iterations over its scales and tiles, above this server's limit "
            f"of {config.max_steps}; lower steps or pyramid_steps",
        )
    try:
        plan.check_fits()
    except MemoryFitError:
        raise ApiError(413, memory_message(plan)) from None
    if style_shape is not None:
        try:
            check_style_size(options, *style_shape, config.max_pixels, plan.free_bytes, remedy="size or style_scale")
        except ImageError as e:
            raise ApiError(422, str(e)) from None
        except MemoryFitError as e:
            raise ApiError(413, str(e)) from None
    return plan


def memory_message(plan: Plan) -> str:
    """Why ``plan`` does not fit, and the single option changes that would (as request options)."""
    return (
        f"this job needs about {plan.estimate.beyond_loaded / GIB:.1f} GiB but {plan.free_bytes / GIB:.1f} GiB "
        f"is free on the server's {plan.device.type}; {fit_advice(plan.suggestions(), AS_REQUEST)}"
    )
