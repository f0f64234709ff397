"""Running the app under uvicorn: the URL printed when ready, and a graceful shutdown on SIGTERM.

SIGTERM (or Ctrl-C) drains the service first — readiness goes 503 and no job is accepted, running
jobs get ``--grace`` seconds to finish and are then stopped and queued again, queued jobs stay queued
in the database — and only then stops uvicorn, so the process exits 0. A second signal ends the grace
period at once.
"""

from __future__ import annotations

import asyncio
import sys
import threading

import uvicorn

from .app import create_app
from .config import ServeConfig
from .service import Service


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, service: Service, grace: float):
        super().__init__(config)
        self.service, self.grace = service, grace
        self.exit_code = 0
        self._draining: threading.Thread | None = None

    def handle_exit(self, sig: int, frame) -> None:
        # Not uvicorn's: it would stop listening at once, and re-raise the signal at exit (exit code -15).
        if self._draining is None:
            self._draining = threading.Thread(target=self._drain, args=(self.grace,), daemon=True)
            self._draining.start()
        else:  # a second signal: no more grace
            threading.Thread(target=self.service.scheduler.drain, args=(0,), daemon=True).start()

    def _drain(self, grace: float) -> None:
        self.service.drain(grace)
        self.should_exit = True

    def fail(self, message: str) -> None:
        """The service cannot work (its warm-up failed): exit non-zero."""
        print(f"nst-fast: error: {message}", file=sys.stderr, flush=True)
        self.exit_code = 1
        self.should_exit = True

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if self.should_exit or not self.servers:
            return
        host, port = self.servers[0].sockets[0].getsockname()[:2]
        url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/"
        print(f"nst-fast: listening on {url} (warming up)", flush=True)
        asyncio.get_running_loop().create_task(self._announce_ready(url))

    async def _announce_ready(self, url: str) -> None:
        ready = self.service.scheduler.ready
        while not ready.is_set():
            if self.should_exit:
                return
            await asyncio.sleep(0.05)
        print(f"nst-fast: ready at {url}", flush=True)


def serve(config: ServeConfig) -> int:
    """Serve until SIGTERM or Ctrl-C; the exit code (0 after a graceful shutdown)."""
    service = Service(config)
    app = create_app(config, service)
    server = _Server(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            log_level="warning",
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=5,  # after the drain, streams have ended: only stragglers are left
        ),
        service,
        config.grace,
    )
    service.on_fatal = server.fail
    server.run()
    return server.exit_code
