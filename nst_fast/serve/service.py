"""The service behind the HTTP routes: accepting styles and jobs, reporting them, cancelling, cleaning up.

One :class:`Service` per app. It owns the data directory (:mod:`.storage`), the job store
(:mod:`.jobs`), the style cache (:mod:`.styles`), the progress streams (:mod:`.events`), the metrics
(:mod:`.metrics`) and the workers (:mod:`.scheduler`); the routes (:mod:`.app`) only translate HTTP.
As Ray Serve replicas (:mod:`nst_fast.distributed.replicas`), each replica has a Service of its own
whose job store and event hub are clients of one shared state (:mod:`nst_fast.distributed.shared`).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from ..errors import ImageError, NstError
from ..image import load_image
from ..plan import resolve_device
from .admission import ApiError, admit, request_options
from .config import ServeConfig
from .events import EventHub
from .jobs import DONE, QUEUED, RUNNING, UNFINISHED, Job, JobStore, StyleRecord, view
from .metrics import Metrics
from .scheduler import Scheduler
from .storage import DataDir
from .styles import StyleCache, options_key

log = logging.getLogger("nst_fast.serve")

MAX_ATTEMPTS = 3  # runs of a job interrupted by a crash before it is failed rather than run again
ORPHAN_AGE = 600.0  # seconds an unreferenced file is left alone (its request may not have committed yet)


class Service:
    def __init__(self, config: ServeConfig, store: JobStore | None = None, hub: EventHub | None = None):
        """``store`` and ``hub``: the job store and the event hub, when not this process's own (a SQLite
        database in the data directory; streams of this process's workers only)."""
        self.config = config
        self.devices = [resolve_device(d) for d in config.devices]
        self.data = DataDir(config.data_dir)
        self.store = store if store is not None else JobStore(self.data.database)
        self.hub = hub if hub is not None else EventHub()
        self.styles = StyleCache(config.style_cache, lambda result: self.metrics.style_lookups.labels(result).inc())
        self.metrics = Metrics(self)
        self.scheduler = Scheduler(self)
        self.draining = False
        self.on_fatal: Callable[[str], object] = lambda message: None  # the server exits (set by .server)
        self._stop = threading.Event()
        self._janitor: threading.Thread | None = None
        self._started = False

    # Lifecycle.

    def start(self) -> None:
        """Requeue interrupted jobs, clean up, start the workers and the janitor (once: again does nothing)."""
        if self._started:
            return
        self._started = True
        report_interrupted(*self.store.requeue_interrupted(MAX_ATTEMPTS))
        self.clean_up()
        self.scheduler.start()
        self._janitor = threading.Thread(target=self._clean_up_every, name="nst-fast janitor", daemon=True)
        self._janitor.start()

    def drain(self, grace: float) -> None:
        """Stop accepting jobs (and report not ready); let running ones finish within ``grace`` seconds, then
        stop them (they stay queued, with the rest, for the next start); end every progress stream."""
        self.draining = True
        self.scheduler.drain(grace)
        self.hub.end_all({"error": "the server is shutting down; queued jobs stay queued"})

    def close(self) -> None:
        if not self.draining:
            self.drain(0)
        self._stop.set()
        if self._janitor is not None:
            self._janitor.join(timeout=10)
        self.store.close()

    def fatal(self, message: str) -> None:
        self.on_fatal(message)

    # What a metrics scrape reads (metrics.ServiceState).

    def job_counts(self) -> dict[str, int]:
        return self.store.counts()

    def open_streams(self) -> int:
        return self.hub.open_streams

    def cached_styles(self) -> int:
        return len(self.styles)

    def runs_in_progress(self) -> int:
        return self.scheduler.runs_in_progress()

    @property
    def ready(self) -> bool:
        return self.scheduler.ready.is_set() and not self.draining

    # Styles.

    def add_style(self, data: bytes) -> StyleRecord:
        """Store a style image and compute its targets for the server's default options (cached)."""
        sha, path = self.data.save_style(data)
        height, width = self._decode(path, "image")
        try:
            self.styles.get(sha, path, self.config.defaults.replace(device=str(self.devices[0])))
        except NstError as e:
            raise ApiError(422, f"image: {e}") from None
        record = StyleRecord(str(uuid.uuid4()), sha, time.time(), width, height)
        self.store.add_style(record)
        return record

    def style(self, style_id: str) -> StyleRecord:
        record = self.store.get_style(style_id) if _is_id(style_id) else None
        if record is None:
            raise ApiError(404, f"no style {style_id!r}")
        return record

    def delete_style(self, style_id: str) -> None:
        record = self.store.delete_style(style_id) if _is_id(style_id) else None
        if record is None:
            raise ApiError(404, f"no style {style_id!r}")
        if not any(r.sha == record.sha for r in self.store.styles()):
            self.styles.drop(record.sha)  # its file goes when no unfinished job needs it (clean_up)

    # Jobs.

    def check_accepting(self) -> None:
        if self.draining:
            raise ApiError(503, "the server is shutting down; try again later", {"Retry-After": "30"})
        if self.store.counts()[QUEUED] >= self.config.max_queue:
            raise self._queue_full()

    def _queue_full(self) -> ApiError:
        return ApiError(
            429,
            f"the queue is full ({self.config.max_queue} jobs); try again later",
            {"Retry-After": str(self.scheduler.retry_after())},
        )

    def submit(self, content: bytes, style: bytes | None, style_id: str | None, options_text: str | None) -> Job:
        """Admit a job (or raise :class:`ApiError`); it is queued when this returns."""
        self.check_accepting()
        options = request_options(options_text, self.config.defaults)
        if (style is None) == (style_id is None):
            raise ApiError(400, "give exactly one of style (an image file) and style_id")
        if style_id is not None:
            record = self.style(style_id)
            style_sha, style_shape = record.sha, (record.height, record.width)
        else:
            style_sha, path = self.data.save_style(style)
            style_shape = self._decode(path, "style")
        job_id = str(uuid.uuid4())
        upload = self.data.save_upload(job_id, content)
        try:
            height, width = self._decode(upload, "content")
            plan = admit(options, (height, width), self.devices[0], self.config, style_shape)
            key = plan.batch_key
            batch_key = None if key is None else json.dumps([style_sha, options_key(options), key])
            job = Job(
                job_id, QUEUED, time.time(), None, None, style_id, style_sha, json.loads(options_key(options)),
                batch_key, height, width, plan.total_steps, 0, None, None, 0,
            )  # fmt: skip
            if not self.store.add_job(job, max_queued=self.config.max_queue):
                raise self._queue_full()
        except BaseException:
            upload.unlink(missing_ok=True)
            raise
        self.metrics.submitted.inc()
        self.scheduler.wake()
        return job

    def job(self, job_id: str) -> Job:
        job = self.store.get_job(job_id) if _is_id(job_id) else None
        if job is None:
            raise ApiError(404, f"no job {job_id!r}")
        return job

    def view(self, job: Job) -> dict:
        """A job's record as the API shows it, with its live progress while it runs (here, or, as a replica,
        on another replica: its last progress event)."""
        progress = None
        if job.status == RUNNING:
            running = self.scheduler.live(job.id)
            progress = running.progress() if running is not None else self.hub.last_progress(job.id)
        return view(job, progress)

    def publish_status(self, job_id: str) -> None:
        job = self.store.get_job(job_id)
        if job is not None:
            self.hub.publish(job_id, "status", self.view(job))

    def finish_job(self, job_id, status, error=None, step=None, loss=None, started=None, owner=None) -> bool:
        """Give an unfinished job its final status, count it, and tell its streams; False when it had
        finished already (or, with ``owner``, is no longer running as that owner's)."""
        if error is not None:  # the server's paths are its own
            error = " ".join(error.replace(f"{self.data.root}/", "").split())
        if not self.store.finish(job_id, status, error, step=step, loss=loss, owner=owner):
            return False
        self.metrics.finished.labels(status).inc()
        job = self.store.get_job(job_id)
        if status == DONE and job is not None:
            self.metrics.latency.observe(max(0.0, job.finished - job.created))
        self.data.upload(job_id).unlink(missing_ok=True)
        if job is not None:
            self.hub.publish(job_id, "status", self.view(job))
        return True

    def cancel(self, job_id: str) -> Job:
        job = self.job(job_id)
        if job.status in UNFINISHED:
            self.scheduler.cancel(job_id)
            job = self.job(job_id)
        return job

    def result(self, job_id: str) -> Path:
        job = self.job(job_id)
        if job.status != DONE:
            why = f": {job.error}" if job.error else ""
            raise ApiError(409, f"job {job_id} is {job.status}{why}; its result exists once it is done")
        path = self.data.result(job_id)
        if not path.is_file():
            raise ApiError(410, f"the result of job {job_id} is gone")
        return path

    # Retention.

    def clean_up(self) -> None:
        """Delete finished jobs older than the retention, with their results, and files no record needs."""
        expired = self.store.expired(before=time.time() - self.config.retention)
        for job_id in expired:
            self.data.remove_job_files(job_id)
        self.store.delete_jobs(expired)
        unfinished = {j.id for j in self.store.unfinished()}
        kept = self.store.finished_ids()
        self.data.sweep(unfinished, kept, self.store.style_shas_in_use(), min_age=ORPHAN_AGE)

    def _clean_up_every(self) -> None:
        period = max(1.0, min(60.0, self.config.retention / 4))
        while not self._stop.wait(period):
            try:
                self.clean_up()
            except Exception:
                log.exception("clean-up failed")

    # Uploads.

    def _decode(self, path: Path, name: str) -> tuple[int, int]:
        """Decode an uploaded image (its type by its bytes, never its name) with the server's pixel limit;
        its (height, width), or :class:`ApiError` naming the field."""
        try:
            image = load_image(path, self.config.max_pixels, copy=False)
        except ImageError as e:
            path.unlink(missing_ok=True)
            message = str(e).replace(str(path), name)  # the server's paths are its own
            if "too large" in message or "too small" in message:
                raise ApiError(422, message.replace("; --max-pixels raises the limit", "")) from None
            raise ApiError(415, f"{name}: {message}") from None
        return tuple(image.shape[-2:])


def report_interrupted(requeued: list, failed: list) -> None:
    """Log what a start found interrupted: jobs queued again, and jobs failed after MAX_ATTEMPTS runs."""
    if requeued or failed:
        log.warning(
            "%d interrupted job(s) queued again, %d failed after %d interruptions",
            len(requeued),
            len(failed),
            MAX_ATTEMPTS,
        )


def _is_id(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text
    except ValueError:
        return False
