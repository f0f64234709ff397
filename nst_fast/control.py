"""Stopping a run from outside: a cancellation token, and the deadline of ``Options.max_time``.

A run checks its :class:`Stop` between iterations (never inside one), so a stop takes effect within one
iteration's time. A cancelled run raises :class:`~nst_fast.errors.Cancelled` and returns nothing; a run
past its deadline ends early and returns the best image it has, at full size.
"""

from __future__ import annotations

import threading
import time


class Cancel:
    """A cancellation token: :meth:`cancel` from any thread stops every run it was given to.

    >>> cancel = nst_fast.Cancel()                                     # doctest: +SKIP
    >>> threading.Timer(5, cancel.cancel).start()                      # doctest: +SKIP
    >>> stylizer.stylize_tensor("photo.jpg", cancel=cancel)            # doctest: +SKIP
    """

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()


class Stop:
    """Whether a run must stop now: cancelled, or past ``max_time`` seconds from when this was made."""

    def __init__(self, max_time: float | None = None, cancel: Cancel | None = None):
        self.cancel = cancel
        self.deadline = None if max_time is None else time.perf_counter() + max_time

    @property
    def cancelled(self) -> bool:
        return self.cancel is not None and self.cancel.cancelled

    @property
    def expired(self) -> bool:
        return self.deadline is not None and time.perf_counter() >= self.deadline

    def __call__(self) -> bool:
        return self.cancelled or self.expired
