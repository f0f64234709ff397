"""`nst-fast serve --ray`: the service's API against a Ray Serve deployment of 2 replicas, as one service.

One local Ray for the module (`ray.init(num_cpus=2, include_dashboard=False)`, shut down at its end), and
the real command (a child process) connected to it: `--ray ADDRESS --replicas 2 --replica-cpus 1`, HTTP
on 127.0.0.1 and a free port. Every answer names its replica (X-NST-Fast-Replica), and a request can be
sent to one replica (the serve_multiplexed_model_id header), so a job submitted through one replica is
read, streamed, cancelled and downloaded through the other, and the queue's limit is seen to be one
limit; a killed replica's running job runs again on the other; SIGTERM queues the running jobs again and
removes the deployment. The test process reads the shared state (which replica runs which job) through
the state actor.
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import sqlite3
import threading
import time
from types import SimpleNamespace

import pytest

from .helpers import AUTH, CONTENT, STYLE, TOKEN, WAIT, Api, assert_error, parse_samples, png

ray = pytest.importorskip("ray", reason='Ray is not installed: pip install "nst-fast[ray]"')
pytest.importorskip("ray.serve", reason='Ray Serve is not installed: pip install "nst-fast[ray]"')

from PIL import Image  # noqa: E402 — after the skips

from nst_fast.distributed.replicas import LEASE_ENV, NAMESPACE, STATE_NAME, TARGET_HEADER, Replica  # noqa: E402
from nst_fast.serve.process import ServerProcess  # noqa: E402

REPLICA = "x-nst-fast-replica"
MAX_QUEUE = 3
LONG = 20_000  # steps: a job that runs until cancelled (minutes at least)
LEASE = 8.0  # seconds without a heartbeat after which a replica is gone (30 by default; shorter for the test)
STOPS = 60.0  # seconds within which a cancelled run stops, on either replica (a heartbeat, an iteration)


@pytest.fixture(scope="module")
def ray_local():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def deployment(ray_local, tmp_path_factory):
    """The command serving 2 replicas on the module's Ray: its process, a client, the state actor, the
    data directory, and the two replicas' ids."""
    tmp = tmp_path_factory.mktemp("ray-serve")
    data = tmp / "data"
    args = [
        "--ray", ray_local.get_runtime_context().gcs_address, "--replicas", 2, "--replica-cpus", 1,
        "--device", "cpu", "--size", 64, "--steps", 5, "--data-dir", data, "--token", TOKEN,
        "--max-queue", MAX_QUEUE, "--max-steps", LONG, "--batch-size", 4, "--grace", 1,
    ]  # fmt: skip
    process = ServerProcess(args, log=tmp / "server.log", env={LEASE_ENV: str(LEASE)}, timeout=WAIT)
    try:
        process.wait_ready(WAIT)
        api = Api(process.url, AUTH)
        state = ray.get_actor(STATE_NAME, namespace=NAMESPACE)
        replicas = wait_until(lambda: sorted(r) if len(r := live(state)) == 2 else None, "two replicas heard from")
        yield SimpleNamespace(process=process, api=api, state=state, data=data, replicas=replicas)
        api.client.close()
    finally:
        if process.process.poll() is None:
            process.terminate(timeout=WAIT)
        process.kill()


def replica(response) -> str:
    return response.headers[REPLICA]


def at(api, replica_id: str | None, method: str, path: str, **kwargs):
    """A request sent to one replica (the header that Ray Serve's proxy routes by; None: to any), checked
    that it answered."""
    if replica_id is None:
        return api.request(method, path, **kwargs)
    headers = {**kwargs.pop("headers", {}), TARGET_HEADER: replica_id}
    response = api.request(method, path, headers=headers, **kwargs)
    assert replica(response) == replica_id, (replica(response), replica_id)
    return response


def owner(state, job_id: str) -> str | None:
    """The replica that runs (or ran) a job, as the shared job store records it."""
    return ray.get(state.store_call.remote("get_job", (job_id,), {})).owner


def live(state) -> dict[str, dict]:
    return ray.get(state.live_replicas.remote())


def post_job(api, options: dict, replica_id: str | None):
    files = {"content": ("c.png", CONTENT), "style": ("s.png", STYLE)}
    return at(api, replica_id, "POST", "/v1/jobs", files=files, data={"options": json.dumps(options)})


def submit(api, options: dict, replica_id: str | None) -> str:
    response = post_job(api, options, replica_id)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def wait_until(condition, what: str, timeout: float = WAIT):
    end = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < end, f"{what}: not within {timeout} s"
        time.sleep(0.05)
    return value


def both_busy(d, weights) -> list[str]:
    """Two long jobs running, one on each replica (a replica's worker runs one batch at a time; their
    own style weights: never batched together), each seen making progress through the other replica."""
    jobs = [submit(d.api, {"steps": LONG, "style_weight": w}, r) for w, r in zip(weights, d.replicas)]
    wait_until(lambda: all(d.api.job(j)["status"] == "running" for j in jobs), "both long jobs running")
    owners = [owner(d.state, j) for j in jobs]
    assert set(owners) == set(d.replicas)
    for job, ran_by in zip(jobs, owners):
        elsewhere = next(r for r in d.replicas if r != ran_by)
        path = f"/v1/jobs/{job}"
        wait_until(lambda e=elsewhere, p=path: at(d.api, e, "GET", p).json()["step"] > 0, "progress seen elsewhere")
    return jobs


def cancel_all(d, jobs) -> None:
    for job in jobs:
        d.api.delete(f"/v1/jobs/{job}")
    wait_idle(d)


def metrics(api, replica_id: str) -> dict[str, float]:
    """One replica's /metrics (counters and runs are its own; job counts are the shared store's)."""
    response = at(api, replica_id, "GET", "/metrics")
    assert response.status_code == 200, response.text
    return parse_samples(response.text)


def wait_idle(d, timeout: float = STOPS) -> None:
    """Until neither replica runs anything (each one's own metrics) and nothing is queued."""
    wait_until(
        lambda: all(
            m["nst_fast_runs_in_progress"] == 0 and m["nst_fast_queue_depth"] == 0
            for m in (metrics(d.api, r) for r in d.replicas)
        ),
        "the replicas idle",
        timeout,
    )


class Stream:
    """A job's event stream on one replica, read in a thread: ``events``, ``result()`` at its end."""

    def __init__(self, api, job_id: str, replica_id: str, preview: int | None = None):
        self.events: list[tuple[str, dict]] = []
        self.ended = threading.Event()
        headers = {TARGET_HEADER: replica_id}
        params = {} if preview is None else {"preview": preview}
        self._stream = api.stream("GET", f"/v1/jobs/{job_id}/events", params=params, headers=headers, timeout=WAIT)
        response = self._stream.__enter__()
        assert response.status_code == 200 and replica(response) == replica_id
        self._thread = threading.Thread(target=self._read, args=(response,), daemon=True)
        self._thread.start()

    def _read(self, response) -> None:
        kind = None
        try:
            for line in response.iter_lines():
                if line.startswith("event:"):
                    kind = line[6:].strip()
                elif line.startswith("data:"):
                    self.events.append((kind, json.loads(line[5:])))
        finally:
            self._stream.__exit__(None, None, None)
            self.ended.set()

    def result(self) -> list[tuple[str, dict]]:
        assert self.ended.wait(WAIT), "the event stream did not end"
        return self.events


def test_both_replicas_are_ready_and_say_who_they_are(deployment):
    d = deployment
    # What each replica said in its last heartbeat (sent as it became ready, and every second).

    def all_ready():
        replicas = live(d.state)
        return replicas if all(r["ready"] for r in replicas.values()) else None

    replicas = wait_until(all_ready, "both replicas said ready")
    assert len(replicas) == 2 and len({r["pid"] for r in replicas.values()}) == 2  # two processes
    assert all(r["devices"] == ["cpu"] and r["failure"] is None for r in replicas.values())
    for replica_id in d.replicas:
        ready = at(d.api, replica_id, "GET", "/readyz")
        assert ready.status_code == 200 and ready.json() == {"status": "ready"}, ready.text
    seen = {replica(d.api.get("/healthz")) for _ in range(40)}  # without the header: the proxy spreads them
    assert seen == set(d.replicas)
    health = d.api.client.get("/healthz", headers={"Authorization": ""})
    assert health.status_code == 200 and health.json()["status"] == "alive"
    assert_error(d.api.client.get("/readyz", headers={"Authorization": ""}), 401, "token")


def test_ray_serve_s_health_check_is_the_readiness():
    check = Replica.func_or_class.check_health

    def replica_with(ready: bool, draining: bool = False, failure: str | None = None):
        return SimpleNamespace(
            service=SimpleNamespace(ready=ready, draining=draining, scheduler=SimpleNamespace(failure=failure))
        )

    check(replica_with(ready=True))
    check(replica_with(ready=False, draining=True))  # shutting down: not replaced meanwhile
    with pytest.raises(RuntimeError, match="not ready"):
        check(replica_with(ready=False))
    with pytest.raises(RuntimeError, match="warm-up"):
        check(replica_with(ready=False, failure="warm-up on cpu failed: out of memory"))


def test_a_job_submitted_through_one_replica_is_read_and_downloaded_through_the_other(deployment):
    d = deployment
    first, other = d.replicas
    job = submit(d.api, {"steps": 3}, first)
    wait_until(lambda: at(d.api, other, "GET", f"/v1/jobs/{job}").json()["status"] == "done", "done, seen there")
    read = at(d.api, other, "GET", f"/v1/jobs/{job}").json()
    assert read["step"] == read["total"] == 3 and read["attempts"] == 1 and read["error"] is None
    for replica_id in d.replicas:
        result = at(d.api, replica_id, "GET", f"/v1/jobs/{job}/result")
        assert result.status_code == 200 and result.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(result.content)).size == (64, 48)
    assert owner(d.state, job) in d.replicas


def test_a_style_stored_through_one_replica_is_used_through_the_other(deployment):
    d = deployment
    first, other = d.replicas
    wait_idle(d)
    before = {r: metrics(d.api, r) for r in d.replicas}
    created = at(d.api, first, "POST", "/v1/styles", files={"image": ("s.png", png(64, 64, seed=9))})
    assert created.status_code == 201, created.text
    style = created.json()["id"]
    assert style in [s["id"] for s in at(d.api, other, "GET", "/v1/styles").json()["styles"]]
    response = at(
        d.api,
        other,
        "POST",
        "/v1/jobs",
        files={"content": ("c.png", CONTENT)},
        data={"style_id": style, "options": "{}"},
    )
    assert response.status_code == 202, response.text
    job = response.json()["id"]
    assert at(d.api, first, "GET", f"/v1/jobs/{job}").json()["style_id"] == style
    assert d.api.wait(job)["status"] == "done"
    after = {r: metrics(d.api, r) for r in d.replicas}

    def grew(replica_id, name):
        return after[replica_id][name] - before[replica_id][name]

    # Counters are each replica's own; the job counts are the shared store's.
    assert grew(other, "nst_fast_jobs_submitted_total") == 1 and grew(first, "nst_fast_jobs_submitted_total") == 0
    assert after[first]["nst_fast_jobs{status=done}"] == after[other]["nst_fast_jobs{status=done}"]
    assert grew(first, "nst_fast_jobs{status=done}") == 1
    # The style's targets: computed by the replica that stored it, and again by the one that ran the job
    # if that was the other (each replica caches its own).
    ran_on = owner(d.state, job)
    misses = {r: grew(r, "nst_fast_style_cache_lookups_total{result=miss}") for r in d.replicas}
    assert misses == ({first: 1, other: 0} if ran_on == first else {first: 1, other: 1})
    deleted = at(d.api, other, "DELETE", f"/v1/styles/{style}")
    assert deleted.status_code == 200 and deleted.json() == {"id": style, "deleted": True}
    assert_error(at(d.api, first, "DELETE", f"/v1/styles/{style}"), 404, "no style")


def test_progress_streams_on_both_replicas_follow_a_job_run_on_one(deployment):
    d = deployment
    blockers = both_busy(d, weights=(101.0, 102.0))
    try:
        job = submit(d.api, {"steps": 5}, d.replicas[0])
        streams = [Stream(d.api, job, replica_id, preview=2) for replica_id in d.replicas]
        wait_until(lambda: all(s.events for s in streams), "the streams' first events")  # both open, job queued
    finally:
        cancel_all(d, blockers)
    assert d.api.wait(job)["status"] == "done"
    assert owner(d.state, job) in d.replicas  # so one stream was on the replica that did not run it
    for stream in streams:
        events = stream.result()
        kinds = [k for k, _ in events]
        assert kinds[0] == "status" and events[0][1]["status"] == "queued"
        assert ("status", "running") in [(k, e["status"]) for k, e in events if k == "status"]
        assert kinds[-1] == "status" and events[-1][1]["status"] == "done"
        assert [e["step"] for k, e in events if k == "progress"] == [1, 2, 3, 4, 5]
        previews = [e for k, e in events if k == "preview"]
        assert [p["step"] for p in previews] == [2, 4, 5]  # every 2 steps, and the last
        assert Image.open(io.BytesIO(base64.b64decode(previews[-1]["jpeg"]))).size == (64, 48)


def test_jobs_are_cancelled_through_any_replica(deployment):
    d = deployment
    running = both_busy(d, weights=(111.0, 112.0))
    queued = submit(d.api, {"steps": 5, "style_weight": 113.0}, d.replicas[0])
    cancelled = at(d.api, d.replicas[1], "DELETE", f"/v1/jobs/{queued}")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    # Each running job cancelled through the replica that does not run it: the record at once, the run at
    # that replica's next heartbeat.
    for job in running:
        elsewhere = next(r for r in d.replicas if r != owner(d.state, job))
        response = at(d.api, elsewhere, "DELETE", f"/v1/jobs/{job}")
        assert response.status_code == 200 and response.json()["status"] == "cancelled", response.text
    wait_idle(d)
    for job in [*running, queued]:
        final = d.api.job(job)
        assert final["status"] == "cancelled" and final["error"] == "cancelled by a client", final
        assert_error(d.api.get(f"/v1/jobs/{job}/result"), 409, "cancelled")
    assert d.api.job(queued)["attempts"] == 0  # it never ran, on either replica
    assert all(0 < d.api.job(job)["step"] < LONG for job in running)  # stopped where it was


def test_bad_input_is_a_one_line_4xx_from_either_replica(deployment):
    d = deployment
    for replica_id in d.replicas:
        garbage = at(
            d.api,
            replica_id,
            "POST",
            "/v1/jobs",
            files={"content": ("c.png", b"not an image"), "style": ("s.png", STYLE)},
        )
        assert_error(garbage, 415, "content")
        assert_error(post_job(d.api, {"x": 1}, replica_id), 422, "unknown option")
        assert_error(post_job(d.api, {"steps": -1}, replica_id), 422, "steps")
        assert_error(post_job(d.api, {"weights": "/etc/passwd"}, replica_id), 422, "server")
        assert_error(at(d.api, replica_id, "GET", "/v1/jobs/00000000-0000-4000-8000-000000000000"), 404, "no job")


def test_a_full_queue_is_full_through_every_replica(deployment):
    d = deployment
    blockers = both_busy(d, weights=(141.0, 142.0))
    accepted, refused = [], {}
    try:
        for i in range(2 * MAX_QUEUE + 2):  # through each replica in turn, until both refuse
            replica_id = d.replicas[i % 2]
            response = post_job(d.api, {"steps": LONG, "style_weight": 150.0 + i}, replica_id)
            if response.status_code == 202:
                accepted.append(response.json()["id"])
            else:
                assert_error(response, 429, "queue is full")
                assert int(response.headers["retry-after"]) >= 1
                refused[replica_id] = response
            if len(refused) == 2:
                break
        # One queue of MAX_QUEUE jobs, filled through both replicas; then each refuses.
        assert len(accepted) == MAX_QUEUE and set(refused) == set(d.replicas)
        assert ray.get(d.state.store_call.remote("counts"))["queued"] == MAX_QUEUE
    finally:
        cancel_all(d, blockers + accepted)


def test_a_killed_replica_s_running_job_runs_again_on_another(deployment):
    d = deployment
    job = submit(d.api, {"steps": 150, "style_weight": 161.0}, d.replicas[0])
    d.api.wait(job, until=("running",))
    killed = owner(d.state, job)
    os.kill(live(d.state)[killed]["pid"], signal.SIGKILL)
    assert ray.get(d.state.store_call.remote("get_job", (job,), {})).status == "running", "done before the kill"
    end = time.monotonic() + WAIT
    while True:  # until done; while the proxy still routes to the dead replica, some requests fail
        try:
            response = d.api.get(f"/v1/jobs/{job}")
            if response.status_code == 200 and response.json()["status"] in ("done", "failed", "cancelled"):
                break
        except Exception:  # noqa: BLE001 — a connection to the dead replica
            pass
        assert time.monotonic() < end, "the killed replica's job did not finish elsewhere"
        time.sleep(0.2)
    final = response.json()
    assert final["status"] == "done" and final["step"] == 150 and final["attempts"] >= 2, final
    assert owner(d.state, job) != killed
    wait_until(lambda: d.api.get(f"/v1/jobs/{job}/result").status_code == 200, "its result served")
    # Ray Serve replaced the dead replica: two replicas again, one of them new.
    wait_until(
        lambda: (
            len(r := {k: v for k, v in live(d.state).items() if v["ready"] and k != killed}) == 2
            and set(r) != set(d.replicas)
        ),
        "a replacement replica",
    )


def test_sigterm_queues_running_jobs_again_and_removes_the_deployment(deployment):
    d = deployment
    job = submit(d.api, {"steps": LONG, "style_weight": 171.0}, None)  # one replica was killed and replaced
    d.api.wait(job, until=("running",))
    d.process.process.send_signal(signal.SIGTERM)
    assert d.process.process.wait(WAIT) == 0, d.process.stderr()
    with sqlite3.connect(d.data / "jobs.sqlite3") as db:
        rows = dict(db.execute("SELECT id, status FROM jobs").fetchall())
        (owners,) = db.execute("SELECT COUNT(*) FROM jobs WHERE owner IS NOT NULL AND status = 'queued'").fetchone()
    assert rows[job] == "queued" and "running" not in rows.values() and owners == 0
    with pytest.raises(ValueError):
        ray.get_actor(STATE_NAME, namespace=NAMESPACE)  # the shared state is gone
    from ray import serve

    assert "nst-fast" not in serve.status().applications


@pytest.mark.parametrize(
    "args, words",
    [
        (["--replicas", "2"], "--replicas and --replica-cpus go with --ray"),
        (["--ray", "--device", "cpu,cpu"], "one of auto, cpu or cuda"),
        (["--ray", "--replicas", "0"], "--replicas must be at least 1"),
        (["--ray", "--replica-cpus", "0"], "--replica-cpus must be at least 1"),
    ],
)
def test_bad_replica_flags_are_refused_in_one_line(tmp_path, capsys, args, words):
    from nst_fast.cli import main

    assert main(["serve", "--data-dir", tmp_path, *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err, err
