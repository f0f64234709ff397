"""Load at CI scale: 16 concurrent clients × 4 jobs (64 px, 2 iterations) through benchmarks/serve_load.py's
driver, with batching on. Every job completes exactly once, with no error; the resident memory stays
bounded; clients that drop their event streams leave none open."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import pytest

from .helpers import CONTENT, STYLE, WAIT, Api, start_server

ROOT = Path(__file__).resolve().parents[2]
CLIENTS, JOBS, STEPS = 16, 4, 2


def load_driver():
    spec = importlib.util.spec_from_file_location("serve_load", ROOT / "benchmarks" / "serve_load.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("load")
    with start_server(tmp, "--batch-size", "4", "--max-queue", str(CLIENTS * JOBS)) as process:
        process.wait_ready()
        api = Api(process.url)
        yield api
        api.client.close()
        assert process.terminate() == 0, process.stderr()


def test_dropped_event_streams_leave_nothing_open(loaded):
    job = loaded.submit({"steps": 200, "style_weight": 60.0})
    for _ in range(3):  # three clients that read the first event and hang up
        with loaded.stream("GET", f"/v1/jobs/{job}/events", params={"preview": 1}) as response:
            assert next(response.iter_lines()).startswith("event: status")
    loaded.delete(f"/v1/jobs/{job}")
    end = time.monotonic() + 60
    while loaded.metrics()["nst_fast_event_streams"] != 0:
        assert time.monotonic() < end, "event streams of gone clients stayed open"
        time.sleep(0.05)


def test_sixteen_clients_four_jobs_each_complete_exactly_once(loaded):
    driver = load_driver()
    end = time.monotonic() + WAIT
    while loaded.metrics()["nst_fast_runs_in_progress"]:  # the cancelled job of the test before
        assert time.monotonic() < end
        time.sleep(0.05)
    before = loaded.metrics()
    run = driver.run_load(loaded.url, CLIENTS, JOBS, CONTENT, STYLE, {"steps": STEPS}, timeout=WAIT)
    after = loaded.metrics()
    print(
        f"\n{CLIENTS}×{JOBS} jobs: {run['requests_per_second']:.2f} requests/s, {run['jobs_per_second']:.2f} jobs/s, "
        f"latency p50 {run['latency_p50']:.2f} s, p95 {run['latency_p95']:.2f} s, "
        f"mean batch {(after['nst_fast_batch_size_sum'] - before['nst_fast_batch_size_sum']) / max(1, after['nst_fast_batch_size_count'] - before['nst_fast_batch_size_count']):.2f}"
    )
    assert run["errors"] == [] and run["unfinished_clients"] == 0
    jobs = run["jobs"]
    assert len(jobs) == CLIENTS * JOBS and len({j["id"] for j in jobs}) == CLIENTS * JOBS
    assert all(j["status"] == "done" and j["attempts"] == 1 and j["result_bytes"] > 0 for j in jobs)

    def grew(name):
        return after[name] - before[name]

    assert grew("nst_fast_jobs_finished_total{status=done}") == CLIENTS * JOBS
    assert grew("nst_fast_jobs_finished_total{status=failed}") == 0
    assert grew("nst_fast_batch_size_sum") == CLIENTS * JOBS  # each job in exactly one run
    assert grew("nst_fast_iterations_total") == CLIENTS * JOBS * STEPS  # and each run once
    assert grew("nst_fast_batch_size_count") < CLIENTS * JOBS  # some ran together
    assert after["nst_fast_event_streams"] == 0 and after["nst_fast_queue_depth"] == 0
    grown = after["nst_fast_memory_bytes{kind=resident}"] - before["nst_fast_memory_bytes{kind=resident}"]
    assert grown < 512 * 2**20, f"the resident set grew by {grown / 2**20:.0f} MiB"
