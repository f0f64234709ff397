"""``nst-fast serve`` as a child process: started on a free loopback port, its URL read from what it
prints, stopped by signal. What the tests and the load benchmark run the real server with."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

LISTENING = re.compile(r"listening on (http://\S+/)")
READY = re.compile(r"ready at (http://\S+/)")


class ServerProcess:
    """``python -m nst_fast serve --port 0 ARGS...``; :attr:`url` once it listens.

    Its stdout is read by a thread (the URL lines); its stderr goes to ``log`` (a file), for the reasons
    of a failure.
    """

    def __init__(self, args: list[str], log: str | Path, env: dict[str, str] | None = None, timeout: float = 120):
        self.log = Path(log)
        self.lines: list[str] = []
        self._listening, self._ready = threading.Event(), threading.Event()
        self.url: str | None = None
        command = [sys.executable, "-m", "nst_fast", "serve", "--host", "127.0.0.1", "--port", "0", *map(str, args)]
        with open(self.log, "ab") as stderr:
            self.process = subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=stderr,
                stdin=subprocess.DEVNULL,
                text=True,
                env={**os.environ, **(env or {})},
            )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._wait(self._listening, timeout):
            self.kill()
            raise RuntimeError(f"the server did not start listening within {timeout} s: {self.stderr()}")

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))
            if match := LISTENING.search(line):
                self.url = match.group(1).rstrip("/")
                self._listening.set()
            if READY.search(line):
                self._ready.set()

    def _wait(self, event: threading.Event, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if event.wait(0.05):
                return True
            if self.process.poll() is not None:
                return event.is_set()
        return False

    def wait_ready(self, timeout: float = 180) -> None:
        """Until it prints that it is ready (weights loaded, warm-up step run)."""
        if not self._wait(self._ready, timeout):
            raise RuntimeError(f"the server was not ready within {timeout} s: {self.stderr()}")

    def stderr(self) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return text[-3000:] or "(nothing on stderr)"

    def terminate(self, timeout: float = 120) -> int:
        """SIGTERM, and its exit code once it has drained and exited."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise RuntimeError(f"the server did not exit within {timeout} s of SIGTERM") from None

    def kill(self) -> None:
        """SIGKILL (``kill -9``): no clean-up of any kind."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(30)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        if self.process.poll() is None:
            try:
                self.terminate(timeout=60)
            except RuntimeError:
                pass
