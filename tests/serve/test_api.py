"""The whole API of the real server (a child process) through httpx: readiness, styles, jobs, progress
streams, results, cancellation, the synchronous endpoint and the metrics."""

from __future__ import annotations

import base64
import contextlib
import io
import subprocess
import sys
import time

import httpx
from PIL import Image

from .helpers import CONTENT, STYLE, WAIT, assert_error

LONG = {"steps": 400, "style_weight": 21.0}  # runs until cancelled; another style weight: never batched with others


@contextlib.contextmanager
def busy_worker(api):
    """The worker busy with a long job (so that jobs submitted meanwhile stay queued), cancelled on exit."""
    blocker = api.submit(LONG)
    api.wait(blocker, until=("running",))
    try:
        yield blocker
    finally:
        api.delete(f"/v1/jobs/{blocker}")


def wait_idle(api, timeout: float = WAIT) -> None:
    """Until no run is in progress (a cancelled job's run may still be ending its iteration)."""
    end = time.monotonic() + timeout
    while api.metrics()["nst_fast_runs_in_progress"] or api.metrics()["nst_fast_queue_depth"]:
        assert time.monotonic() < end, "the worker stayed busy"
        time.sleep(0.05)


def test_readiness_before_and_after_the_warm_up(server, api):
    assert_error(server.early_readyz, 503, "warming up")
    ready = api.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {"status": "ready"}
    health = httpx.get(f"{server.url}/healthz")  # no token needed
    assert health.status_code == 200 and health.json()["status"] == "alive"
    assert_error(httpx.get(f"{server.url}/readyz"), 401, "token")  # every other endpoint needs it


def test_styles_are_stored_listed_used_and_deleted(api):
    created = api.post("/v1/styles", files={"image": ("s.png", STYLE)})
    assert created.status_code == 201, created.text
    style = created.json()
    assert style["width"] == 64 and style["height"] == 64
    assert style["id"] in [s["id"] for s in api.get("/v1/styles").json()["styles"]]
    job = api.submit({"steps": 2}, style=None, style_id=style["id"])
    assert api.wait(job)["status"] == "done"
    assert api.job(job)["style_id"] == style["id"]
    assert api.delete(f"/v1/styles/{style['id']}").json() == {"id": style["id"], "deleted": True}
    assert style["id"] not in [s["id"] for s in api.get("/v1/styles").json()["styles"]]
    assert_error(api.delete(f"/v1/styles/{style['id']}"), 404, "no style")
    gone = api.post("/v1/jobs", files={"content": ("c.png", CONTENT)}, data={"style_id": style["id"]})
    assert_error(gone, 404, "no style")


def test_a_job_streams_progress_and_previews_then_its_final_status(api):
    with busy_worker(api):
        job = api.submit({"steps": 5})
        assert api.job(job)["status"] == "queued"
        with contextlib.closing(_events_in_background(api, job, preview=2)) as reader:
            pass  # the stream is open before the job starts
    events = reader.result()
    kinds = [k for k, _ in events]
    assert kinds[0] == "status" and events[0][1]["status"] == "queued"
    assert kinds[-1] == "status" and events[-1][1]["status"] == "done"
    assert ("status", "running") in [(k, d["status"]) for k, d in events if k == "status"]
    steps = [d["step"] for k, d in events if k == "progress"]
    assert steps == [1, 2, 3, 4, 5]
    progress = [d for k, d in events if k == "progress"]
    assert all(d["total"] == 5 and d["loss"] > 0 and d["elapsed"] >= 0 for d in progress)
    assert progress[-1]["eta"] == 0 and progress[0]["eta"] > 0
    previews = [d for k, d in events if k == "preview"]
    assert [d["step"] for d in previews] == [2, 4, 5]  # every 2 steps, and the last
    for preview in previews:
        image = Image.open(io.BytesIO(base64.b64decode(preview["jpeg"])))
        assert image.format == "JPEG" and image.size == (64, 48)
    final = api.job(job)
    assert final["status"] == "done" and final["step"] == final["total"] == 5 and final["error"] is None
    assert final["loss"] > 0 and final["elapsed"] > 0 and final["eta"] is None
    # A finished job's stream is its final status alone.
    assert api.events(job) == [("status", final)]


def _events_in_background(api, job_id, preview=None):
    """Read a job's events in a thread; ``.result()`` waits for the end of the stream."""
    from concurrent.futures import ThreadPoolExecutor

    streams = api.metrics()["nst_fast_event_streams"]
    pool = ThreadPoolExecutor(1)
    future = pool.submit(api.events, job_id, preview)
    end = time.monotonic() + WAIT
    while api.metrics()["nst_fast_event_streams"] <= streams:  # open before the caller goes on
        assert time.monotonic() < end and not future.done(), "the event stream did not open"
        time.sleep(0.02)

    class Reader:
        def result(self):
            return future.result(timeout=WAIT)

        def close(self):
            pool.shutdown(wait=False)

    return Reader()


def test_results_in_every_format(api):
    job = api.submit({"steps": 2})
    assert api.wait(job)["status"] == "done"
    for fmt, pillow, media in (
        ("png", "PNG", "image/png"),
        ("jpg", "JPEG", "image/jpeg"),
        ("webp", "WEBP", "image/webp"),
        ("tif", "TIFF", "image/tiff"),
    ):
        response = api.get(f"/v1/jobs/{job}/result", params={"format": fmt})
        assert response.status_code == 200 and response.headers["content-type"] == media
        image = Image.open(io.BytesIO(response.content))
        assert image.format == pillow and image.size == (64, 48) and image.mode == "RGB"
    assert_error(api.get(f"/v1/jobs/{job}/result", params={"format": "bmp"}), 422, "format")


def test_cancelling_a_queued_and_a_running_job(api):
    with busy_worker(api) as running:
        queued = api.submit({"steps": 5, "style_weight": 23.0})
        with contextlib.closing(_events_in_background(api, running)) as reader:
            cancelled = api.delete(f"/v1/jobs/{queued}")
            assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
            stopped = api.delete(f"/v1/jobs/{running}")
            assert stopped.status_code == 200 and stopped.json()["status"] == "cancelled"
            assert reader.result()[-1][1]["status"] == "cancelled"  # its stream ends, told
    for job in (queued, running):
        assert api.job(job)["status"] == "cancelled"
        assert_error(api.get(f"/v1/jobs/{job}/result"), 409, "cancelled")
    assert api.delete(f"/v1/jobs/{running}").json()["status"] == "cancelled"  # again: the same
    wait_idle(api)  # the cancelled run stopped: the worker is free
    done = api.submit({"steps": 1})
    assert api.wait(done)["status"] == "done"
    assert_error(api.delete(f"/v1/jobs/{done}"), 409, "done")


def test_a_job_cancelled_in_a_batch_leaves_its_batch_mates_running(api):
    steps = 120
    with busy_worker(api):
        first, second = api.submit({"steps": steps}), api.submit({"steps": steps})  # compatible: one batch
    end = time.monotonic() + WAIT
    while not all(api.job(j)["status"] == "running" for j in (first, second)):  # running together
        assert time.monotonic() < end and api.job(first)["status"] != "done", "the two jobs did not run as one batch"
        time.sleep(0.02)
    before_step = api.job(second)["step"]
    before = api.metrics()["nst_fast_iterations_total"]
    assert api.delete(f"/v1/jobs/{first}").json()["status"] == "cancelled"
    mate = api.wait(second)
    assert mate["status"] == "done" and mate["step"] == steps
    cancelled = api.job(first)
    assert cancelled["status"] == "cancelled"
    assert_error(api.get(f"/v1/jobs/{first}/result"), 409, "cancelled")
    assert api.get(f"/v1/jobs/{second}/result").status_code == 200
    # The cancelled image left the batch: after it, each iteration optimized one image, not two.
    together = cancelled["step"] - before_step + 2  # iterations of both since `before` (at most; +1 each way)
    counted = api.metrics()["nst_fast_iterations_total"] - before
    assert counted <= 2 * together + (steps - cancelled["step"]), (counted, before_step, cancelled["step"])
    assert cancelled["step"] < steps - 10, "cancel earlier: the check needs iterations after it"


def test_the_synchronous_endpoint_answers_with_the_image_or_504(api):
    files = {"content": ("c.png", CONTENT), "style": ("s.png", STYLE)}
    response = api.post("/v1/stylize", files=files, data={"options": '{"steps": 2}'}, params={"format": "jpg"})
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg", response.text
    assert Image.open(io.BytesIO(response.content)).size == (64, 48)
    assert api.job(response.headers["x-job-id"])["status"] == "done"
    slow = api.post("/v1/stylize", files=files, data={"options": '{"steps": 400}'}, params={"timeout": 1})
    message = assert_error(slow, 504, "not done within 1 s")
    job = message.split()[1]
    assert api.job(job)["status"] == "cancelled"


def test_metrics_equal_what_was_done(api):
    wait_idle(api)
    before = api.metrics()
    jobs = [api.submit({"steps": 3, "style_weight": w}) for w in (30.0, 31.0, 32.0)]  # three batches of one
    for job in jobs:
        assert api.wait(job)["status"] == "done"
    with busy_worker(api) as blocker:
        queued = api.submit({"steps": 3})
        api.delete(f"/v1/jobs/{queued}")
    assert_error(api.get("/v1/jobs/00000000-0000-4000-8000-000000000000"), 404)
    wait_idle(api)
    after = api.metrics()

    def grew(name):
        return after[name] - before.get(name, 0)

    assert grew("nst_fast_jobs_submitted_total") == 5
    assert grew("nst_fast_jobs_finished_total{status=done}") == 3
    assert grew("nst_fast_jobs_finished_total{status=cancelled}") == 2
    assert grew("nst_fast_jobs_finished_total{status=failed}") == 0
    assert grew("nst_fast_job_latency_seconds_count") == 3
    assert grew("nst_fast_batch_size_count") == 4 and grew("nst_fast_batch_size_sum") == 4  # the blocker too
    blocker_steps = api.job(blocker)["step"]
    assert grew("nst_fast_iterations_total") in (9 + blocker_steps, 9 + blocker_steps + 1)  # +1: its last, ending
    assert grew("nst_fast_requests_rejected_total{code=404}") == 1
    assert grew("nst_fast_jobs{status=done}") == 3 and grew("nst_fast_jobs{status=cancelled}") == 2
    assert after["nst_fast_queue_depth"] == 0 and after["nst_fast_jobs_running"] == 0
    assert after["nst_fast_event_streams"] == 0
    assert after["nst_fast_iterations_per_second"] > 0
    assert 100 * 2**20 < after["nst_fast_memory_bytes{kind=resident}"] < 8 * 2**30


def test_the_core_never_imports_the_serve_extra_and_its_absence_is_one_line(tmp_path):
    check = (
        "import sys, nst_fast, nst_fast.cli, nst_fast.cli.serve\n"
        "loaded = [m for m in ('fastapi', 'starlette', 'uvicorn', 'prometheus_client') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", check], check=True, timeout=WAIT)
    without = (
        "import sys\n"
        "sys.modules['fastapi'] = None  # as if the serve extra were not installed\n"
        "from nst_fast.cli import main\n"
        f"sys.exit(main(['serve', '--data-dir', {str(tmp_path)!r}]))\n"
    )
    run = subprocess.run([sys.executable, "-c", without], check=False, capture_output=True, text=True, timeout=WAIT)
    assert run.returncode == 1 and run.stdout == ""
    assert run.stderr.count("\n") == 1 and 'pip install "nst-fast[serve]"' in run.stderr, run.stderr
