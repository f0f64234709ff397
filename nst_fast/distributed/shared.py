"""The state that every Ray Serve replica of the service shares: one actor, and its clients in the replicas.

With several replicas (:mod:`.replicas`), the service's state is in one place, a :class:`SharedState`
actor that the ``nst-fast serve --ray`` driver starts on its own node, and the replicas reach it
through its handle:

- **The job store**: the same SQLite database as in one process (:class:`~nst_fast.serve.jobs.JobStore`,
  in ``--data-dir``), with the actor its only writer. Every replica's worker claims queued jobs from it
  (one transaction: the oldest queued job and its compatible batch-mates), so any replica runs any job,
  none runs one twice, and the queue's limit is one limit. :class:`StoreClient` is the replica's
  ``service.store``: the JobStore's methods, called in the actor.
- **Who is alive**: each replica sends a heartbeat every ``lease / 4`` seconds (:meth:`SharedState.heartbeat`)
  with what it runs; a replica not heard from for ``lease`` seconds is gone, and the jobs it was
  running go back in the queue (after :data:`~nst_fast.serve.service.MAX_ATTEMPTS` interrupted runs, a
  job fails instead, as after restarts in one process). The heartbeat's answer names the replica's
  jobs that are not its own any more (cancelled through another replica, or requeued after a lost
  lease), which it drops from its run, and whether the service is shutting down.
- **Progress events**: a replica publishes its jobs' events (progress, previews, status) to the actor
  (:class:`BusHub`, in order, in batches); each replica with open event streams subscribes to their jobs
  and receives their events by long polling (:meth:`SharedState.next`), then hands them to its streams
  as in one process. Previews are made only when some stream, on any replica, wants one; the last
  progress of each running job is kept for polls through other replicas.

Uploads and results are files in the data directory, which every replica must reach at the same path.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import queue
import threading
import time

from ..serve.events import EventHub
from ..serve.jobs import FINISHED, RUNNING, JobStore, view

log = logging.getLogger("nst_fast.serve")

LEASE = 30.0  # seconds without a heartbeat after which a replica is gone and its running jobs are queued again
CALL_TIMEOUT = 60.0  # seconds a replica waits for the shared state to answer
POLL = 5.0  # seconds a replica's long poll for events waits at most
HUB_TIMEOUT = 60.0  # seconds after which a replica that stopped polling for events is forgotten
WISHES_TTL = 0.5  # seconds a replica keeps what previews the streams of a job want
HUB_BUFFER = 10_000  # events kept for a replica between two polls (its streams keep the newest 64 each)
FINISHED_KEPT = 10_000  # finished jobs remembered, so that late progress of their runs is not kept

# The JobStore methods that replicas call (StoreClient); the others are the actor's own.
STORE_METHODS = (
    "add_job",
    "get_job",
    "jobs",
    "counts",
    "claim",
    "finish",
    "requeue",
    "running",
    "expired",
    "delete_jobs",
    "unfinished",
    "finished_ids",
    "add_style",
    "get_style",
    "styles",
    "delete_style",
    "style_shas_in_use",
)


def _preview_due(every: int | None, step: int, total: int) -> bool:
    return every is not None and (step % every == 0 or step == total)


class _Subscriber:
    """One replica's events, between two of its polls."""

    def __init__(self) -> None:
        self.events: collections.deque = collections.deque(maxlen=HUB_BUFFER)
        self.arrived = asyncio.Event()
        self.seen = time.monotonic()


class SharedState:
    """What the replicas share (module docstring). A plain class: ``ray.remote(SharedState)`` makes the
    actor (an async actor: its methods run one at a time in its event loop, so the database has one
    writer), and it can be used without Ray too.

    ``database``: the SQLite file; ``lease``: seconds without a heartbeat after which a replica is gone;
    ``max_attempts``: interrupted runs after which a job fails rather than being queued again.
    """

    def __init__(self, database: str, lease: float = LEASE, max_attempts: int = 3):
        self.store = JobStore(database)
        self.lease, self.max_attempts = lease, max_attempts
        now = time.monotonic()
        # Replicas: id → when last heard from, and what it said. The owners of jobs already running when
        # this state was made (after a restart of the actor) get one lease to show that they are alive.
        self.replicas: dict[str, dict] = {
            job.owner: {"seen": now, "info": {}} for job in self.store.running() if job.owner is not None
        }
        self.subscribers: dict[str, _Subscriber] = {}
        # job id → replica id → preview interval (None: no previews) → streams asking
        self.subscriptions: dict[str, dict[str, collections.Counter]] = {}
        self.progress: dict[str, dict] = {}  # job id → its last progress event (running jobs)
        # Jobs finished lately, whose runs elsewhere may still report progress until they hear of it.
        self.finished: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.draining: dict | None = None  # {"grace": seconds, "now": bool} once the service shuts down

    # The job store.

    async def store_call(self, name: str, args: tuple = (), kwargs: dict | None = None):
        """``JobStore.<name>(*args, **kwargs)`` (one of :data:`STORE_METHODS`)."""
        if name not in STORE_METHODS:
            raise AttributeError(f"the shared job store has no method {name!r}")
        if name == "claim" and (owner := (kwargs or {}).get("owner")) is not None:
            self._heard_from(owner)  # a replica that claims is alive, even before its first heartbeat
        return getattr(self.store, name)(*args, **(kwargs or {}))

    async def requeue_gone(self, everyone: bool = False) -> tuple[list[str], list[str]]:
        """Queue again the running jobs of replicas not heard from within the lease (``everyone``: of every
        replica, when none runs: at start-up and after shutdown); ids (requeued, failed)."""
        now = time.monotonic()
        for replica in [r for r, v in self.replicas.items() if everyone or now - v["seen"] > self.lease]:
            del self.replicas[replica]
        requeued, failed = self.store.requeue_interrupted(self.max_attempts, live=set(self.replicas))
        for job_id in requeued + failed:
            self.progress.pop(job_id, None)
            job = self.store.get_job(job_id)
            if job is not None:
                self._publish(job_id, "status", view(job))
        if requeued or failed:
            log.warning("%d job(s) of gone replicas queued again, %d failed", len(requeued), len(failed))
        return requeued, failed

    def close(self) -> None:
        self.store.close()

    # Replicas.

    def _heard_from(self, replica: str, info: dict | None = None) -> None:
        entry = self.replicas.setdefault(replica, {"seen": 0.0, "info": {}})
        entry["seen"] = time.monotonic()
        if info is not None:
            entry["info"] = info

    async def heartbeat(self, replica: str, info: dict, running: list[str]) -> dict:
        """A replica is alive, running ``running`` (job ids); it is told which of them are not its own any
        more (``drop``) and whether the service is shutting down (``drain``). Replicas gone meanwhile
        have their jobs queued again."""
        self._heard_from(replica, info)
        await self.requeue_gone()
        mine = (
            {j.id for j in self.store.jobs(running) if j.status == RUNNING and j.owner == replica} if running else set()
        )
        return {"drop": [j for j in running if j not in mine], "drain": self.draining}

    async def live_replicas(self) -> dict[str, dict]:
        """Replicas heard from within the lease: id → what their last heartbeat said (and ``age``, seconds)."""
        now = time.monotonic()
        return {
            r: {**v["info"], "age": now - v["seen"]} for r, v in self.replicas.items() if now - v["seen"] <= self.lease
        }

    async def drain(self, grace: float | None) -> None:
        """The service shuts down: replicas stop taking jobs and give running ones ``grace`` seconds; again
        with None: no more grace (a second signal)."""
        if grace is None:
            self.draining = {**(self.draining or {"grace": 0.0}), "now": True}
        else:
            self.draining = {"grace": grace, "now": False}

    # Events.

    async def subscribe(self, replica: str, job_id: str, preview_every: int | None) -> None:
        """A stream on ``replica`` follows ``job_id`` (previews every ``preview_every`` steps, or none)."""
        self._subscriber(replica)
        self.subscriptions.setdefault(job_id, {}).setdefault(replica, collections.Counter())[preview_every] += 1

    async def unsubscribe(self, replica: str, job_id: str, preview_every: int | None) -> None:
        replicas = self.subscriptions.get(job_id, {})
        counts = replicas.get(replica)
        if counts is None:
            return
        counts[preview_every] -= 1
        if counts[preview_every] <= 0:
            del counts[preview_every]
        if not counts:
            del replicas[replica]
        if not replicas:
            self.subscriptions.pop(job_id, None)

    async def publish(self, events: list[tuple[str, str, dict]]) -> None:
        """Events ``(job id, kind, data)``, in the order of the list, to the replicas that follow the jobs."""
        for job_id, kind, data in events:
            self._publish(job_id, kind, data)

    def _publish(self, job_id: str, kind: str, data: dict) -> None:
        if kind == "progress":
            if job_id not in self.finished:
                self.progress[job_id] = data
        elif kind == "status" and data.get("status") != RUNNING:
            self.progress.pop(job_id, None)
            if data.get("status") in FINISHED:
                self.finished[job_id] = None
                while len(self.finished) > FINISHED_KEPT:
                    self.finished.popitem(last=False)
        for replica, counts in self.subscriptions.get(job_id, {}).items():
            if kind == "preview" and not any(_preview_due(e, data["step"], data["total"]) for e in counts):
                continue
            subscriber = self.subscribers.get(replica)
            if subscriber is not None:
                subscriber.events.append((job_id, kind, data))
                subscriber.arrived.set()

    async def preview_wishes(self, job_id: str) -> list[int]:
        """The preview intervals that the streams of ``job_id`` ask for, on every replica."""
        wishes = {e for counts in self.subscriptions.get(job_id, {}).values() for e in counts if e is not None}
        return sorted(wishes)

    async def last_progress(self, job_id: str) -> dict | None:
        progress = self.progress.get(job_id)
        if progress is None:
            return None
        return {k: progress.get(k) for k in ("step", "total", "loss", "elapsed", "eta")}

    async def next(self, replica: str, timeout: float = POLL) -> list[tuple[str, str, dict]]:
        """The events for ``replica``'s streams since its last call, waiting up to ``timeout`` seconds for one."""
        subscriber = self._subscriber(replica)
        if not subscriber.events:
            subscriber.arrived.clear()
            try:
                await asyncio.wait_for(subscriber.arrived.wait(), timeout)
            except asyncio.TimeoutError:
                pass
        subscriber.seen = time.monotonic()
        events = list(subscriber.events)
        subscriber.events.clear()
        self._forget_silent()
        return events

    def _subscriber(self, replica: str) -> _Subscriber:
        subscriber = self.subscribers.get(replica)
        if subscriber is None:
            subscriber = self.subscribers[replica] = _Subscriber()
        subscriber.seen = time.monotonic()
        return subscriber

    def _forget_silent(self) -> None:
        """Replicas that stopped polling (they died) no longer get events."""
        now = time.monotonic()
        for replica in [r for r, s in self.subscribers.items() if now - s.seen > HUB_TIMEOUT]:
            del self.subscribers[replica]
            for job_id in list(self.subscriptions):
                self.subscriptions[job_id].pop(replica, None)
                if not self.subscriptions[job_id]:
                    del self.subscriptions[job_id]


def _wait(ref, timeout: float = CALL_TIMEOUT):
    """The value of an actor call, from a thread (never the event loop): without ``ray.get``, which in an
    async actor such as a Serve replica warns of blocking even in another thread."""
    return ref.future().result(timeout=timeout)


class StoreClient:
    """A replica's job store (``service.store``): :class:`~nst_fast.serve.jobs.JobStore`'s methods, run by the
    shared state. Call from threads, not the event loop."""

    def __init__(self, actor, owner: str):
        self.actor, self.owner = actor, owner

    def _call(self, name: str, *args, **kwargs):
        return _wait(self.actor.store_call.remote(name, args, kwargs))

    def requeue_interrupted(self, max_attempts: int) -> tuple[list[str], list[str]]:
        """At a replica's start: the jobs of replicas that are gone go back in the queue (the shared
        state's own limit of attempts applies)."""
        return _wait(self.actor.requeue_gone.remote())

    def close(self) -> None:
        """Nothing: the shared store outlives the replicas (the driver closes it)."""


def _forward(name: str):
    def method(self, *args, **kwargs):
        return self._call(name, *args, **kwargs)

    method.__name__ = name
    method.__doc__ = f"``JobStore.{name}``, in the shared state."
    return method


for _name in STORE_METHODS:
    setattr(StoreClient, _name, _forward(_name))


class BusHub(EventHub):
    """A replica's event hub (``service.hub``): events of its workers go to the shared state, and its
    streams receive the events of their jobs from there, whichever replica published them.

    One thread sends the published events in order (batched while a call is under way); another long-polls
    for this replica's events and hands them to its streams (:class:`~nst_fast.serve.events.EventHub`).
    """

    def __init__(self, actor, replica: str):
        super().__init__()
        self.actor, self.replica = actor, replica
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()
        self._subscribed: dict = {}  # stream → its subscription call (awaited by opened)
        self._wishes: dict[str, tuple[float, list[int]]] = {}
        self._wishes_lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._send, name="nst-fast events out", daemon=True),
            threading.Thread(target=self._receive, name="nst-fast events in", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Stop both threads: the events published so far are sent first (for a few seconds at most); the
        poll under way ends by itself."""
        self._stop.set()
        self._outbox.put(None)
        self._threads[0].join(timeout=5)

    # Streams on this replica.

    def open(self, job_id: str, preview_every: int | None = None):
        stream = super().open(job_id, preview_every)
        self._subscribed[stream] = self.actor.subscribe.remote(self.replica, job_id, preview_every)
        return stream

    async def opened(self, stream) -> None:
        ref = self._subscribed.pop(stream, None)
        if ref is not None:
            await ref

    def close(self, stream) -> None:
        super().close(stream)
        self._subscribed.pop(stream, None)
        self.actor.unsubscribe.remote(self.replica, stream.job_id, stream.preview_every)

    def last_progress(self, job_id: str) -> dict | None:
        return _wait(self.actor.last_progress.remote(job_id))

    # Events of this replica's workers.

    def publish(self, job_id: str, kind: str, data: dict) -> None:
        self._outbox.put((job_id, kind, data))

    def wants_preview(self, job_id: str, step: int, total: int) -> bool:
        return any(_preview_due(every, step, total) for every in self._preview_wishes(job_id))

    def publish_preview(self, job_id: str, step: int, total: int, make) -> None:
        if self.wants_preview(job_id, step, total):
            self.publish(job_id, "preview", make())

    def _preview_wishes(self, job_id: str) -> list[int]:
        now = time.monotonic()
        with self._wishes_lock:
            cached = self._wishes.get(job_id)
        if cached is not None and now - cached[0] < WISHES_TTL:
            return cached[1]
        try:
            wishes = _wait(self.actor.preview_wishes.remote(job_id))
        except Exception:  # noqa: BLE001 — no preview this time; progress goes on
            log.warning("could not ask the shared state which previews job %s's streams want", job_id)
            wishes = []
        with self._wishes_lock:
            self._wishes = {j: w for j, w in self._wishes.items() if now - w[0] < 60}
            self._wishes[job_id] = (now, wishes)
        return wishes

    def _send(self) -> None:
        while True:
            event = self._outbox.get()
            batch = [] if event is None else [event]
            while True:
                try:
                    event = self._outbox.get_nowait()
                except queue.Empty:
                    break
                if event is not None:
                    batch.append(event)
            if batch:
                try:
                    _wait(self.actor.publish.remote(batch))
                except Exception:  # noqa: BLE001 — the streams miss these events; their jobs' records are right
                    log.exception("could not publish %d event(s) to the shared state", len(batch))
            if self._stop.is_set() and self._outbox.empty():
                return

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                events = _wait(self.actor.next.remote(self.replica, POLL), POLL + CALL_TIMEOUT)
            except Exception:  # noqa: BLE001 — the shared state is out of reach for a while
                if not self._stop.is_set():
                    log.exception("could not receive events from the shared state")
                    self._stop.wait(1.0)
                continue
            for job_id, kind, data in events:
                if kind == "preview":
                    EventHub.publish_preview(self, job_id, data["step"], data["total"], lambda d=data: d)
                else:
                    EventHub.publish(self, job_id, kind, data)


__all__ = ["LEASE", "STORE_METHODS", "BusHub", "SharedState", "StoreClient"]
