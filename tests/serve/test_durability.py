"""Nothing accepted is lost: a graceful shutdown (SIGTERM) leaves queued jobs queued and exits 0; after
``kill -9`` and a restart on the same data directory, finished results are served and queued and
interrupted jobs run to the end."""

from __future__ import annotations

import sqlite3
import time

from .helpers import WAIT, Api, assert_error, start_server

ARGS = ("--batch-size", "1", "--grace", str(WAIT))


def statuses(data) -> dict[str, str]:
    """Each job's status as the database holds it (read with the server stopped or running)."""
    with sqlite3.connect(data / "jobs.sqlite3") as db:
        return dict(db.execute("SELECT id, status FROM jobs").fetchall())


def test_sigterm_then_kill_9_then_restart_loses_nothing(tmp_path):
    data = tmp_path / "data"
    # 1. A finished job, a running one and two queued when SIGTERM comes.
    with start_server(tmp_path, *ARGS, data_dir=data) as first:
        first.wait_ready()
        api = Api(first.url)
        done = api.submit({"steps": 2})
        assert api.wait(done)["status"] == "done"
        result = api.get(f"/v1/jobs/{done}/result").content
        running = api.submit({"steps": 10})
        queued = [api.submit({"steps": 3, "style_weight": w}) for w in (40.0, 41.0)]
        api.wait(running, until=("running",))
        first.process.send_signal(15)
        # Draining: not ready, no new jobs; the running job finishes within the grace period.
        end = time.monotonic() + WAIT
        while api.get("/readyz").status_code == 200:
            assert time.monotonic() < end
            time.sleep(0.02)
        assert_error(api.get("/readyz"), 503, "shutting down")
        assert_error(api.post("/v1/jobs", files={"content": ("c.png", b"x")}), 503, "shutting down")
        assert first.process.wait(WAIT) == 0, first.stderr()
    after_sigterm = statuses(data)
    assert after_sigterm[done] == "done" and after_sigterm[running] == "done"
    assert [after_sigterm[j] for j in queued] == ["queued", "queued"]

    # 2. Restarted, given more work, and killed with -9 while it has some.
    second = start_server(tmp_path, *ARGS, data_dir=data)
    try:
        second.wait_ready()
        api = Api(second.url)
        more = [api.submit({"steps": 20, "style_weight": w}) for w in (42.0, 43.0)]
    finally:
        second.kill()
    after_kill = statuses(data)
    unfinished = [j for j in queued + more if after_kill[j] in ("queued", "running")]
    assert unfinished, "every job finished before the kill: nothing was tested"

    # 3. Restarted again: the old result is served, and every accepted job completes.
    with start_server(tmp_path, *ARGS, data_dir=data) as third:
        third.wait_ready()
        api = Api(third.url)
        assert api.get(f"/v1/jobs/{done}/result").content == result
        for job in queued + more:
            final = api.wait(job)
            assert final["status"] == "done", final
            assert api.get(f"/v1/jobs/{job}/result").status_code == 200
        assert api.job(running)["status"] == "done"
        assert third.terminate() == 0, third.stderr()
    assert set(statuses(data).values()) == {"done"}


def test_a_run_stuck_in_one_long_operation_does_not_hold_the_shutdown(monkeypatch):
    """After the grace period, runs stop at their next iteration; one inside a single long operation (an
    iteration at print size on a CPU) is waited for STOP_WAIT seconds at most: its job is put back in the
    queue from the drain, and the process can exit (its worker is a daemon thread)."""
    import threading
    import time
    from types import SimpleNamespace

    import nst_fast.serve.scheduler as scheduler

    requeued, published = [], []
    store = SimpleNamespace(owner=None, requeue=lambda ids, owner=None: requeued.extend(ids))
    service = SimpleNamespace(config=None, store=store, publish_status=published.append)
    drain = scheduler.Scheduler(service)
    forever = threading.Event()
    worker = threading.Thread(target=forever.wait, daemon=True)  # a worker that never reaches an iteration
    worker.start()
    drain._threads.append(worker)
    job = SimpleNamespace(id="00000000-0000-4000-8000-000000000001")
    drain._running[job.id] = SimpleNamespace(job=job, finished=False, stop=None)
    monkeypatch.setattr(scheduler, "STOP_WAIT", 0.5)
    start = time.monotonic()
    drain.drain(0)
    assert time.monotonic() - start < 3
    assert drain._running[job.id].stop == scheduler.STOP_SHUTDOWN
    assert requeued == [job.id] and published == [job.id]
    forever.set()
