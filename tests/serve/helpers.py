"""What the tests of the server share: starting the real server (a child process on a free loopback
port), an httpx client for it with the steps the tests repeat, and the check of an error answer.

Every wait is bounded: WAIT seconds for a job (generous: the suite also runs niced beside other work).
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'nst-fast[serve]'")
httpx = pytest.importorskip("httpx", reason="the tests of the server need httpx (the test extra)")

from nst_fast.serve.metrics import parse_samples
from nst_fast.serve.process import ServerProcess

TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
WAIT = 300.0  # seconds any one job may take to finish here, at most
FINAL = ("done", "failed", "cancelled")
# Small and quick: 64 px results, 5 iterations; the style weight varies only to make jobs incompatible.
SERVER_ARGS = ["--device", "cpu", "--size", "64", "--steps", "5"]


def png(width: int, height: int, seed: int = 0) -> bytes:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray((rng.random((height, width, 3)) * 255).astype("uint8")).save(buffer, format="PNG")
    return buffer.getvalue()


CONTENT = png(64, 48, seed=1)
STYLE = png(64, 64, seed=2)


def start_server(tmp_path: Path, *args, env: dict | None = None, data_dir: Path | None = None) -> ServerProcess:
    data_dir = data_dir or tmp_path / "data"
    return ServerProcess(
        [*SERVER_ARGS, "--data-dir", data_dir, *args], log=tmp_path / f"server-{time.monotonic_ns()}.log", env=env
    )


class Api:
    """An httpx client for a test server, with the steps the tests repeat."""

    def __init__(self, url: str, headers: dict | None = None):
        self.url = url
        self.client = httpx.Client(base_url=url, headers=headers or {}, timeout=120)

    def __getattr__(self, name):  # get, post, delete, stream: the client's
        return getattr(self.client, name)

    def submit(self, options: dict | None = None, content: bytes = CONTENT, style: bytes | None = STYLE, **data):
        files = {"content": ("c.png", content)}
        if style is not None:
            files["style"] = ("s.png", style)
        if options is not None:
            data["options"] = json.dumps(options)
        response = self.client.post("/v1/jobs", files=files, data=data)
        assert response.status_code == 202, response.text
        body = response.json()
        assert body["status"] == "queued" and response.headers["location"] == f"/v1/jobs/{body['id']}"
        return body["id"]

    def job(self, job_id: str) -> dict:
        response = self.client.get(f"/v1/jobs/{job_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def wait(self, job_id: str, until=FINAL, timeout: float = WAIT) -> dict:
        """Poll until the job's status is one of ``until``."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            job = self.job(job_id)
            if job["status"] in until:
                return job
            time.sleep(0.05)
        raise AssertionError(f"job {job_id} still {job['status']} after {timeout} s, not {until}")

    def events(self, job_id: str, preview: int | None = None, timeout: float = WAIT) -> list[tuple[str, dict]]:
        """The job's event stream, read to its end: [(kind, data), ...]."""
        events, kind = [], None
        params = {} if preview is None else {"preview": preview}
        end = time.monotonic() + timeout
        with self.client.stream("GET", f"/v1/jobs/{job_id}/events", params=params, timeout=timeout) as response:
            assert response.status_code == 200, response.read()
            assert response.headers["content-type"].startswith("text/event-stream")
            for line in response.iter_lines():
                assert time.monotonic() < end, f"the stream of {job_id} ran past {timeout} s"
                if line.startswith("event:"):
                    kind = line[6:].strip()
                elif line.startswith("data:"):
                    events.append((kind, json.loads(line[5:])))
        return events

    def metrics(self) -> dict[str, float]:
        response = self.client.get("/metrics")
        assert response.status_code == 200, response.text
        return parse_samples(response.text)

    def wait_healthy(self) -> None:
        """The server still answers (after a bad request): /readyz is 200."""
        response = self.client.get("/readyz")
        assert response.status_code == 200, response.text


def assert_error(response, status: int, *words: str) -> str:
    """``response`` is ``status`` with a one-line JSON error that mentions ``words``."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert set(body) == {"error"}, body
    message = body["error"]
    assert message and "\n" not in message and "Traceback" not in message, message
    for word in words:
        assert word.lower() in message.lower(), (word, message)
    return message
