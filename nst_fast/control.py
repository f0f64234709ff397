"""Stopping a run from outside: a cancellation token, and the deadline of ``Options.max_time``.

A run checks its :class:`Stop` between iterations (never inside one), so a stop takes effect within one
iteration's time. A deadline is spent over the run's parts (scales, tiles) in proportion to their
planned work (:meth:`Stop.share`), so that a run short of time still does every part, each shorter,
and ends inside its budget. A cancelled run raises :class:`~nst_fast.errors.Cancelled` and returns nothing; a run
past its deadline ends early and returns the best image it has, at full size.
"""

from __future__ import annotations

import threading
import time

import torch


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
    """Whether a run must stop now: cancelled, or past ``max_time`` seconds from when this was made.

    A batch's run may also carry one token per image (``members``): an image whose token is cancelled
    leaves the batch between two iterations (:meth:`wanted`) while the others go on; the run as a
    whole stops when every image has left it.
    """

    def __init__(
        self, max_time: float | None = None, cancel: Cancel | None = None, members: list[Cancel | None] | None = None
    ):
        self.cancel = cancel
        self.members = members
        self.deadline = None if max_time is None else time.perf_counter() + max_time

    @property
    def cancelled(self) -> bool:
        """The run's own token is cancelled, or every image's."""
        if self.cancel is not None and self.cancel.cancelled:
            return True
        return bool(self.members) and all(m is not None and m.cancelled for m in self.members)

    def wanted(self, positions: list[int]) -> list[int]:
        """Of a batch's images (their positions in ``members``), those not cancelled, in order."""
        if self.members is None:
            return positions
        return [p for p in positions if self.members[p] is None or not self.members[p].cancelled]

    @property
    def expired(self) -> bool:
        return self.deadline is not None and time.perf_counter() >= self.deadline

    def __call__(self) -> bool:
        return self.cancelled or self.expired

    def subset(self, positions: list[int]) -> Stop:
        """This stop for a batch that holds only the images at ``positions`` (the others left it)."""
        if self.members is None:
            return self
        part = Stop(cancel=self.cancel, members=[self.members[p] for p in positions])
        part.deadline = self.deadline
        return part

    def share(self, fraction: float) -> Stop:
        """The stop of a part of the run that may spend ``fraction`` of the time left to its deadline
        (the whole run's deadline when it has none), cancelled with it."""
        if self.deadline is None or fraction >= 1:
            return self
        part = Stop(cancel=self.cancel, members=self.members)
        now = time.perf_counter()
        part.deadline = now + fraction * max(0.0, self.deadline - now)
        return part


class Plateau:
    """Whether an optimization has stopped improving: its best loss fell by less than ``tol`` (a fraction
    of it) over the last ``window`` iterations — for a batch, every image's.

    The best loss may live on the device: it is read only once every ``window`` iterations, so that a GPU
    loop is not synchronised every step.
    """

    WINDOW = 10

    def __init__(self, tol: float | None, window: int = WINDOW):
        self.tol, self.window = tol, window
        self._previous = None

    def reached(self, step: int, best_loss: torch.Tensor | float) -> bool:
        """After iteration ``step`` (from 1), given the best loss so far (per image, for a batch)."""
        if self.tol is None or step % self.window:
            return False
        now = torch.as_tensor(best_loss).detach().to("cpu", torch.float64)
        previous, self._previous = self._previous, now
        if previous is None or previous.shape != now.shape:  # (a batch that lost images starts a new window)
            return False
        gained = (previous - now) / previous.abs()
        return bool((gained < self.tol).all())
