"""Each image's attempts in a run, recorded by the workers in the output directory.

``OUT_DIR/.nst-fast/attempts/RUN/NAME.jsonl`` holds one JSON line per event of the image ``NAME``:
``start`` (a worker begins it), ``wrote`` (its output was renamed into place), ``found`` (a retry found
it written by an attempt whose worker then died), ``failed``. Only one attempt of an image runs at a
time (Ray retries a task after its worker died), so each file has one writer at a time.

The driver never sees an attempt whose worker was killed; these records let a retry count the
attempts before it (an image whose worker died :data:`MAX_ATTEMPTS` times is failed, not retried
for ever) and show afterwards who wrote what, and how often.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path

ATTEMPTS_DIR = Path(".nst-fast") / "attempts"
# Attempts of one image in one run before it is failed: its worker died during each of them (killed by
# the out-of-memory killer, a crash, a node lost), and another try would most likely end the same way.
MAX_ATTEMPTS = 3


def run_dir(out_dir: str | os.PathLike, run: str) -> Path:
    return Path(out_dir) / ATTEMPTS_DIR / run


def worker_name() -> str:
    """This process as ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Attempts:
    """The attempt records of one image in one run."""

    def __init__(self, out_dir: str | os.PathLike, run: str, name: str):
        self.path = run_dir(out_dir, run) / f"{name}.jsonl"

    def starts(self) -> int:
        """How many attempts have begun this image in this run."""
        return sum(event["event"] == "start" for event in self.events())

    def events(self) -> list[dict]:
        try:
            lines = self.path.read_text().splitlines()
        except FileNotFoundError:
            return []
        # A worker killed while appending leaves at most its last line cut short.
        return [json.loads(line) for line in lines if line.endswith("}")]

    def record(self, event: str, **fields) -> None:
        line = json.dumps({"event": event, "worker": worker_name(), "time": time.time(), **fields})
        with open(self.path, "a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())  # before the work it announces: a retry must see it


def read_run(out_dir: str | os.PathLike, run: str) -> dict[str, list[dict]]:
    """Every image's events in ``run``, by output name."""
    directory = run_dir(out_dir, run)
    if not directory.is_dir():
        return {}
    return {
        p.name.removesuffix(".jsonl"): Attempts(out_dir, run, p.name.removesuffix(".jsonl")).events()
        for p in sorted(directory.glob("*.jsonl"))
    }


def start_run(out_dir: str | os.PathLike, run: str, keep: str | None) -> None:
    """Make ``run``'s folder, and remove the records of every earlier run but ``keep`` (the last one)."""
    parent = Path(out_dir) / ATTEMPTS_DIR
    if parent.is_dir():
        for entry in parent.iterdir():
            if entry.name not in (run, keep):
                shutil.rmtree(entry, ignore_errors=True)
    run_dir(out_dir, run).mkdir(parents=True, exist_ok=True)
