"""The workers: one thread per device, each running the oldest queued job with its compatible batch-mates.

Jobs are compatible when their style, options and planned shape at every scale are equal (their
``batch_key``, made at admission): a worker claims up to ``batch_size`` of them, as many as the batch's
plan fits in memory, and optimizes them as one batch (:meth:`nst_fast.Stylizer.stylize_many`).

Stopping a job inside a batch: each job's image has a token of its own
(:meth:`~nst_fast.Stylizer.stylize_many`'s ``cancel_each``), cancelled once the job is cancelled
(``DELETE``), past ``--job-timeout`` or finished elsewhere. Its record is finished at once (cancelled or
failed, its stream told), and its image leaves the batch at the next iteration — its batch-mates go on
without it, as they would have, and faster. On shutdown, runs not finished within the grace period are
stopped as a whole (the batch's own token) and their jobs queued again.

As a Ray Serve replica, the store is shared by the replicas and names this replica the owner of the jobs
it claims; a job finished elsewhere meanwhile (cancelled through another replica) is dropped from its
run with :meth:`Scheduler.abandon`, like a job cancelled here.
"""

from __future__ import annotations

import base64
import io
import logging
import threading
import time
import traceback
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..control import Cancel
from ..errors import Cancelled, NstError
from ..image import load_image, save_image, tensor_to_pil
from ..options import Options
from ..plan import Plan
from ..samples import sample_style
from ..stylizer import Stylizer
from .jobs import CANCELLED, DONE, FAILED, Job

log = logging.getLogger("nst_fast.serve")

STOP_CANCEL, STOP_TIMEOUT, STOP_SHUTDOWN = "cancel", "timeout", "shutdown"
# After the grace period, seconds that stopped runs get to reach their next iteration and put their jobs
# back in the queue themselves; a run inside one long operation (an iteration at print size on a CPU) is
# not waited for longer: its jobs are put back from here, and its worker, a daemon thread, ends with the
# process.
STOP_WAIT = 10.0


@dataclass(eq=False)
class Running:
    """A job being optimized, and what its run has reported."""

    job: Job
    started: float  # time.monotonic()
    deadline: float
    step: int = 0
    loss: float | None = None
    stop: str | None = None  # why the run must stop for this job (STOP_*), once it must
    finished: bool = False  # its record has its final status
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def progress(self) -> dict:
        elapsed = self.elapsed
        total = self.job.total
        eta = elapsed / self.step * (total - self.step) if self.step else None
        return {"step": self.step, "total": total, "loss": self.loss, "elapsed": round(elapsed, 3), "eta": eta}


class _JobCancel(Cancel):
    """One job's token in its batch's run: cancelled when set, or once the job no longer wants its image
    (finished — cancelled here or elsewhere —, or past its deadline). A shutdown stops the whole run
    instead (the batch's token), so that every job of it goes back in the queue."""

    def __init__(self, member: Running):
        super().__init__()
        self.member = member

    @property
    def cancelled(self) -> bool:
        m = self.member
        wanted = not m.finished and m.stop in (None, STOP_SHUTDOWN) and time.monotonic() < m.deadline
        return super().cancelled or not wanted


class Scheduler:
    """The workers of a :class:`~nst_fast.serve.service.Service`."""

    def __init__(self, service):
        self.service = service
        self.config = service.config
        self.ready = threading.Event()
        self.failure: str | None = None  # why the warm-up failed
        self._wake = threading.Condition()
        self._claiming = True
        self._running: dict[str, Running] = {}
        self._running_lock = threading.Lock()
        self._cancels: list[Cancel] = []  # each running batch's own token (shutdown stops them)
        self._threads: list[threading.Thread] = []
        self._warmed = 0
        self._mean_run = 5.0  # seconds per batch, smoothed (for Retry-After)

    # Lifecycle.

    def start(self) -> None:
        for device in self.service.devices:
            thread = threading.Thread(target=self._work, args=(device,), name=f"nst-fast worker {device}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def wake(self) -> None:
        with self._wake:
            self._wake.notify_all()

    def drain(self, grace: float) -> None:
        """Claim nothing more; give running jobs ``grace`` seconds, then stop their runs (their jobs go
        back in the queue); wait for the workers to end, at most :data:`STOP_WAIT` seconds."""
        self._claiming = False
        self.wake()
        end = time.monotonic() + grace
        while self.running_count() and time.monotonic() < end:
            time.sleep(0.05)
        with self._running_lock:
            for m in self._running.values():
                m.stop = m.stop or STOP_SHUTDOWN
            for cancel in self._cancels:
                cancel.cancel()
        end = time.monotonic() + STOP_WAIT
        for thread in self._threads:
            thread.join(timeout=max(0.0, end - time.monotonic()))
        stuck = self.running_ids()
        if stuck:
            log.warning("%d job(s) still running after the grace period go back in the queue", len(stuck))
            store = self.service.store
            store.requeue(stuck, owner=store.owner)  # as their worker would; it may not get there before exit
            for job_id in stuck:
                self.service.publish_status(job_id)

    def running_count(self) -> int:
        with self._running_lock:
            return len(self._running)

    def runs_in_progress(self) -> int:
        with self._running_lock:
            return len(self._cancels)

    def live(self, job_id: str) -> Running | None:
        with self._running_lock:
            return self._running.get(job_id)

    def running_ids(self) -> list[str]:
        """The jobs this process's workers run now (finished ones whose run goes on excepted)."""
        with self._running_lock:
            return [job_id for job_id, m in self._running.items() if not m.finished]

    def abandon(self, job_ids) -> None:
        """Drop jobs from their runs whose records were finished elsewhere (another process cancelled them,
        or they are not this process's any more): their images leave their runs at the next iteration,
        their records are left as they are, and a run that no job wants any more stops."""
        for job_id in job_ids:
            m = self.live(job_id)
            if m is not None:
                m.stop = m.stop or STOP_CANCEL
                with m.lock:
                    m.finished = True

    def retry_after(self) -> int:
        """Seconds after which a refused client may find room in the queue: about one batch's run."""
        return max(1, min(300, round(self._mean_run)))

    # Cancellation.

    def cancel(self, job_id: str) -> bool:
        """Cancel a queued or running job; False when it had finished already. A running job's image
        leaves its run at the next iteration (the run ends if no batch-mate is left)."""
        running = self.live(job_id)
        if running is not None:
            running.stop = running.stop or STOP_CANCEL
            return self._finish(running, CANCELLED, "cancelled by a client")
        progress = self.service.hub.last_progress(job_id) or {}  # of a run in another process (replicas)
        return self.service.finish_job(
            job_id, CANCELLED, "cancelled by a client", step=progress.get("step"), loss=progress.get("loss")
        )

    # The workers.

    def _work(self, device: torch.device) -> None:
        try:
            self._warm_up(device)
        except Exception as e:  # noqa: BLE001 — reported by /readyz and on stderr; the server exits
            self.failure = f"warm-up on {device} failed: {type(e).__name__}: {' '.join(str(e).split())}"
            log.error("%s", self.failure)
            self.service.fatal(self.failure)
            return
        with self._wake:
            self._warmed += 1
            if self._warmed == len(self.service.devices):
                self.ready.set()
        while True:
            with self._wake:
                if not self._claiming:
                    return
            try:
                jobs = self._claim(device)
            except Exception:  # noqa: BLE001 — the store may be out of reach for a while (a shared one)
                log.exception("claiming jobs failed; trying again in a second")
                jobs = []
            if not jobs:
                with self._wake:
                    if self._claiming:
                        self._wake.wait(timeout=1.0)
                continue
            self._run(device, jobs)

    def _warm_up(self, device: torch.device) -> None:
        """Load the weights and run one step on ``device``: what /readyz waits for."""
        if self.config.warmup_delay:
            time.sleep(self.config.warmup_delay)
        defaults = self.config.defaults
        options = defaults.replace(
            device=str(device),
            size=max(64, defaults.min_size),
            steps=1,
            pyramid_start=0,
            tile=0,
            max_time=None,
            tol=None,
        )
        stylizer = Stylizer(sample_style(64), options)
        stylizer.stylize_tensor(sample_style(64, seed=1))

    def _claim(self, device: torch.device) -> list[Job]:
        """The next batch: the oldest queued job and up to ``batch_size - 1`` compatible ones, as many as
        fit in memory together (the others go back in the queue, at their places)."""
        store = self.service.store
        jobs = store.claim(self.config.batch_size, owner=store.owner)
        if len(jobs) > 1:
            options, shape = _options(jobs[0], device), (jobs[0].height, jobs[0].width)
            keep = len(jobs)
            while keep > 1 and not Plan.resolve(options, shape, device, keep).fits:
                keep -= 1
            store.requeue([j.id for j in jobs[keep:]], undo_attempt=True, owner=store.owner)
            jobs = jobs[:keep]
        return jobs

    def _run(self, device: torch.device, jobs: list[Job]) -> None:
        now = time.monotonic()
        members = [Running(job, now, now + self.config.job_timeout) for job in jobs]
        cancel = Cancel()
        with self._running_lock:
            for m in members:
                self._running[m.job.id] = m
            self._cancels.append(cancel)
        service = self.service
        service.metrics.batch_size.observe(len(members))
        for m in members:
            service.publish_status(m.job.id)
        start = time.perf_counter()
        iterations = 0
        try:
            stylizer = service.styles.get(
                jobs[0].style_sha, service.data.style(jobs[0].style_sha), _options(jobs[0], device)
            )
            contents, live = [], []
            for m in members:
                try:
                    contents.append(load_image(service.data.upload(m.job.id), self.config.max_pixels))
                    live.append(m)
                except NstError as e:
                    self._finish(m, FAILED, str(e))

            def progress(it) -> None:
                nonlocal iterations
                rows = list(it.indices) if it.indices is not None else list(range(len(live)))
                iterations += len(rows)
                service.metrics.iterations.inc(len(rows))
                loss = it.loss / len(rows)  # a batch reports the sum of its images' losses
                now = time.monotonic()
                for m in live:  # a job past its deadline fails now; its image leaves at the next iteration
                    if not m.finished and now >= m.deadline and m.stop is None:
                        m.stop = STOP_TIMEOUT
                        self._finish(m, FAILED, _timeout_message(self.config.job_timeout))
                for row, index in enumerate(rows):
                    m = live[index]
                    if m.finished:
                        continue
                    m.step, m.loss = it.step, loss
                    service.hub.publish(m.job.id, "progress", {"id": m.job.id, **m.progress()})
                    if service.hub.wants_preview(m.job.id, it.step, it.steps):
                        service.hub.publish_preview(
                            m.job.id, it.step, it.steps, lambda r=row, m=m: self._preview(it, r, len(rows), m)
                        )

            def save(index: int, image: torch.Tensor) -> None:
                m = live[index]
                if m.finished:
                    return  # cancelled or timed out while its batch-mates ran: discarded
                path = save_image(image, service.data.result(m.job.id))
                m.step = m.job.total
                if not self._finish(m, DONE) and not self._done_elsewhere(m.job.id):
                    path.unlink(missing_ok=True)

            if live:
                stylizer.stylize_many(
                    contents,
                    progress,
                    batch_size=len(live),
                    cancel=cancel,
                    cancel_each=[_JobCancel(m) for m in live],
                    on_result=save,
                )
        except Cancelled:
            pass  # each job's reason is its own: below
        except NstError as e:
            for m in members:
                self._finish(m, FAILED, str(e))
        except Exception as e:  # noqa: BLE001 — a job's failure is its record's, not the worker's
            log.error("a batch of %d job(s) failed:\n%s", len(members), traceback.format_exc())
            for m in members:
                self._finish(m, FAILED, f"internal error: {type(e).__name__}: {e}")
        finally:
            requeued = []
            for m in members:
                if m.finished:
                    continue
                if m.stop == STOP_SHUTDOWN:
                    requeued.append(m.job.id)
                elif m.stop == STOP_TIMEOUT or time.monotonic() >= m.deadline:
                    self._finish(m, FAILED, _timeout_message(self.config.job_timeout))
                else:
                    self._finish(m, FAILED, "the run ended without a result")
            with self._running_lock:
                for m in members:
                    self._running.pop(m.job.id, None)
                self._cancels.remove(cancel)
            if requeued:
                service.store.requeue(requeued, owner=service.store.owner)
                for job_id in requeued:
                    service.publish_status(job_id)
            seconds = time.perf_counter() - start
            if iterations:
                service.metrics.iteration_rate.set(iterations / seconds)
            self._mean_run = 0.8 * self._mean_run + 0.2 * seconds

    def _done_elsewhere(self, job_id: str) -> bool:
        """Whether another process sharing the store (a replica that took over the job after this one was
        thought gone) finished the job done: then the result file, the same job's result, stays."""
        if self.service.store.owner is None:
            return False
        job = self.service.store.get_job(job_id)
        return job is not None and job.status == DONE

    def _finish(self, m: Running, status: str, error: str | None = None) -> bool:
        with m.lock:
            if m.finished:
                return False
            m.finished = True
        return self.service.finish_job(
            m.job.id, status, error, step=m.step, loss=m.loss, started=m.started, owner=self.service.store.owner
        )

    def _preview(self, it, index: int, batch: int, m: Running) -> dict:
        """A small JPEG of job ``m``'s image (row ``index`` of the ``batch`` rows the run holds now) at
        this iterate."""
        image = it.image
        image = image[index : index + 1] if image.shape[0] == batch else image[:1]
        height, width = image.shape[-2:]
        scale = self.config.preview_size / max(height, width)
        if scale < 1:
            size = (max(1, round(height * scale)), max(1, round(width * scale)))
            image = F.interpolate(image.detach().float(), size=size, mode="bilinear", antialias=True)
        buffer = io.BytesIO()
        tensor_to_pil(image.detach().cpu()).save(buffer, format="JPEG", quality=80)
        return {
            "id": m.job.id,
            "step": it.step,
            "total": it.steps,
            "jpeg": base64.b64encode(buffer.getvalue()).decode(),
        }


def _options(job: Job, device: torch.device) -> Options:
    return Options(**job.options).replace(device=str(device))


def _timeout_message(seconds: float) -> str:
    return f"timed out: the job ran longer than this server's job timeout of {seconds:g} s"
