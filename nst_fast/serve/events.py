"""Progress events of running jobs, fanned out to the clients that follow them (Server-Sent Events).

The workers publish from their threads; each open stream is a bounded buffer read by one response in
the event loop. A slow client loses old progress events (the buffer keeps the newest), never the final
status event, which is the last one a stream gets. A stream closed by its client is removed when its
response ends, so dropped clients hold nothing.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

BUFFER = 64  # events a slow client may fall behind by


@dataclass(frozen=True)
class Event:
    kind: str  # "status", "progress", "preview"; "end": the server ends the stream (shutting down)
    data: dict


@dataclass(eq=False)
class Stream:
    """One client's view of one job's events; read with :meth:`next` in the event loop."""

    job_id: str
    loop: asyncio.AbstractEventLoop
    preview_every: int | None  # a preview every this many steps (None: none)
    events: collections.deque = field(default_factory=lambda: collections.deque(maxlen=BUFFER))
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def _push(self, event: Event) -> None:  # in the event loop
        self.events.append(event)
        self.arrived.set()

    async def next(self, timeout: float) -> Event | None:
        """The next event, or None when none came within ``timeout`` seconds."""
        if not self.events:
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), timeout)
            except TimeoutError:
                return None
        return self.events.popleft()


class EventHub:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._streams: dict[str, set[Stream]] = collections.defaultdict(set)

    def open(self, job_id: str, preview_every: int | None = None) -> Stream:
        """A stream of ``job_id``'s events from now on; call in the event loop, await :meth:`opened`, and
        :meth:`close` it."""
        stream = Stream(job_id, asyncio.get_running_loop(), preview_every)
        with self._lock:
            self._streams[job_id].add(stream)
        return stream

    async def opened(self, stream: Stream) -> None:
        """Once this returns, ``stream`` receives every event published from then on (here at once; a
        hub shared between processes waits for its subscription)."""

    def last_progress(self, job_id: str) -> dict | None:
        """The last progress of a job running elsewhere (a hub shared between processes); None here."""
        return None

    def close(self, stream: Stream) -> None:
        with self._lock:
            streams = self._streams.get(stream.job_id)
            if streams is not None:
                streams.discard(stream)
                if not streams:
                    del self._streams[stream.job_id]

    @property
    def open_streams(self) -> int:
        with self._lock:
            return sum(len(s) for s in self._streams.values())

    def publish(self, job_id: str, kind: str, data: dict) -> None:
        """Send an event to every stream of ``job_id``; from any thread."""
        with self._lock:
            streams = list(self._streams.get(job_id, ()))
        for stream in streams:
            _deliver(stream, Event(kind, data))

    def wants_preview(self, job_id: str, step: int, total: int) -> bool:
        with self._lock:
            return any(_preview_due(s, step, total) for s in self._streams.get(job_id, ()))

    def publish_preview(self, job_id: str, step: int, total: int, make: Callable[[], dict]) -> None:
        """Send ``make()`` (made once) as a preview event to the streams that asked for one at ``step``."""
        with self._lock:
            streams = [s for s in self._streams.get(job_id, ()) if _preview_due(s, step, total)]
        if streams:
            event = Event("preview", make())
            for stream in streams:
                _deliver(stream, event)

    def end_all(self, data: dict) -> None:
        """End every stream (the server is shutting down): each gets an "end" event."""
        with self._lock:
            streams = [s for group in self._streams.values() for s in group]
        for stream in streams:
            _deliver(stream, Event("end", data))


def _preview_due(stream: Stream, step: int, total: int) -> bool:
    return stream.preview_every is not None and (step % stream.preview_every == 0 or step == total)


def _deliver(stream: Stream, event: Event) -> None:
    try:
        stream.loop.call_soon_threadsafe(stream._push, event)
    except RuntimeError:  # its loop is closed: the server is gone, and the stream with it
        pass
