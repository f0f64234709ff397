"""The files of the data directory: uploads, style images and results, each written atomically.

Layout under ``--data-dir``: ``jobs.sqlite3`` (:mod:`.jobs`), ``uploads/<job id>`` (content images as
uploaded, until their job finishes), ``styles/<sha256>`` (style images, by content, so that a style sent
with many jobs is stored and cached once), ``results/<job id>.png``. Names are made here from random ids
and hashes only: nothing in a request names a path.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from ..atomic import atomic_save


class DataDir:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.uploads, self.styles, self.results = self.root / "uploads", self.root / "styles", self.root / "results"
        for folder in (self.root, self.uploads, self.styles, self.results):
            folder.mkdir(parents=True, exist_ok=True)

    @property
    def database(self) -> Path:
        return self.root / "jobs.sqlite3"

    def upload(self, job_id: str) -> Path:
        return self.uploads / job_id

    def style(self, sha: str) -> Path:
        return self.styles / sha

    def result(self, job_id: str) -> Path:
        return self.results / f"{job_id}.png"

    def save_upload(self, job_id: str, data: bytes) -> Path:
        return atomic_save(self.upload(job_id), lambda f: f.write(data))

    def save_style(self, data: bytes) -> tuple[str, Path]:
        """Store a style image by its SHA-256 (once: the same bytes are the same file); returns (sha, path)."""
        sha = hashlib.sha256(data).hexdigest()
        path = self.style(sha)
        if not path.is_file():
            atomic_save(path, lambda f: f.write(data))
        return sha, path

    def remove_job_files(self, job_id: str) -> None:
        for path in (self.upload(job_id), self.result(job_id)):
            path.unlink(missing_ok=True)

    def sweep(self, unfinished_jobs: set[str], kept_jobs: set[str], styles_in_use: set[str], min_age: float) -> int:
        """Delete files that no record needs: uploads of finished or unknown jobs, results of unknown jobs,
        style images no stored style or unfinished job names, and temporaries a crash left. Files younger
        than ``min_age`` seconds are kept: a request stores its files before it commits their record.
        Returns how many were deleted."""
        unneeded = [
            *(p for p in self.uploads.iterdir() if p.name not in unfinished_jobs),
            *(p for p in self.results.iterdir() if p.name.removesuffix(".png") not in kept_jobs),
            *(p for p in self.styles.iterdir() if p.name not in styles_in_use),
        ]
        removed, now = 0, time.time()
        for path in unneeded:
            try:
                if now - path.stat().st_mtime >= min_age:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                pass
        return removed
