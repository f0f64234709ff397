"""The server most tests share (session-scoped), and its client. Helpers: .helpers."""

from __future__ import annotations

import pytest

# The test modules import .helpers, which skips them where the serve extra or httpx is missing;
# so this file imports them only when a fixture runs.


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """The server most tests share: a token, a 1 MB upload limit, limits that the tests reach, batches of 4.
    Its warm-up is held back 3 s, so that the readiness test sees it not ready first."""
    import httpx

    from .helpers import AUTH, TOKEN, start_server

    tmp = tmp_path_factory.mktemp("server")
    process = start_server(
        tmp,
        "--token", TOKEN, "--max-upload-mb", "1", "--max-pixels", 10**9, "--max-steps", "500", "--batch-size", "4",
        env={"NST_FAST_SERVE_WARMUP_DELAY": "3"},
    )  # fmt: skip
    try:
        # What /readyz said right after it started listening: before the warm-up.
        process.early_readyz = httpx.get(f"{process.url}/readyz", headers=AUTH, timeout=60)
        process.wait_ready()
        yield process
        assert process.terminate() == 0, process.stderr()
    finally:
        process.kill()


@pytest.fixture(scope="session")
def api(server):
    from .helpers import AUTH, Api

    client = Api(server.url, AUTH)
    yield client
    client.client.close()
