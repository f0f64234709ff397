"""The server's limits, on a server of its own: a full queue (429), the job timeout, and the retention of
finished jobs."""

from __future__ import annotations

import time

import pytest

from .helpers import CONTENT, STYLE, Api, assert_error, start_server

RETENTION = 6.0  # seconds


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    """(client, data directory) of a server with a queue of 2, a 2 s job timeout and a 15 s retention."""
    tmp = tmp_path_factory.mktemp("limits")
    hours = RETENTION / 3600
    with start_server(
        tmp, "--max-queue", "2", "--job-timeout", "2", "--batch-size", "1", "--retention-hours", hours
    ) as process:
        process.wait_ready()
        api = Api(process.url)
        yield api, tmp / "data"
        api.client.close()
        assert process.terminate() == 0, process.stderr()


def test_a_full_queue_answers_429_and_a_long_job_times_out(limited):
    api, _ = limited
    accepted, refused = [], None
    for i in range(6):  # one may be running already; two may wait
        response = api.post(
            "/v1/jobs",
            files={"content": ("c.png", CONTENT), "style": ("s.png", STYLE)},
            data={"options": f'{{"steps": 400, "style_weight": {50 + i}}}'},
        )
        if response.status_code == 429:
            refused = response
            break
        assert response.status_code == 202, response.text
        accepted.append(response.json()["id"])
    assert refused is not None, f"{len(accepted)} jobs accepted with --max-queue 2"
    assert_error(refused, 429, "queue is full")
    assert int(refused.headers["retry-after"]) >= 1
    assert 2 <= len(accepted) <= 3
    for job in accepted[1:]:
        api.delete(f"/v1/jobs/{job}")
    first = api.wait(accepted[0])
    assert first["status"] == "failed"
    assert "timed out" in first["error"] and "2 s" in first["error"]
    assert 0 < first["step"] < 400
    assert api.metrics()["nst_fast_jobs_finished_total{status=failed}"] == 1


def test_finished_jobs_and_their_files_go_after_the_retention(limited):
    api, data = limited
    job = api.submit({"steps": 1})
    assert api.wait(job)["status"] == "done"
    assert api.get(f"/v1/jobs/{job}/result").status_code == 200
    assert (data / "results" / f"{job}.png").is_file()
    end = time.monotonic() + RETENTION + 60
    while api.get(f"/v1/jobs/{job}").status_code == 200:
        assert time.monotonic() < end, "the finished job outlived the retention"
        time.sleep(0.25)
    assert_error(api.get(f"/v1/jobs/{job}"), 404, "no job")
    assert_error(api.get(f"/v1/jobs/{job}/result"), 404, "no job")
    assert list((data / "results").iterdir()) == [] and list((data / "uploads").iterdir()) == []
    assert api.metrics()["nst_fast_jobs{status=done}"] == 0
