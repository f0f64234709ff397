"""The service's settings: limits, places and defaults, fixed when it starts (``nst-fast serve`` flags)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from ..options import Options

# Request options a client may not set: the server decides them (device, batching, the decoding limit), or
# they name files on the server (weights, an init image), which nothing in a request may.
SERVER_OPTIONS = frozenset({"device", "batch_size", "max_pixels", "weights", "weights_preprocessing"})


@dataclass(frozen=True)
class ServeConfig:
    """Everything ``nst-fast serve`` is told; :func:`nst_fast.serve.create_app` builds the service from it."""

    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 8000
    devices: tuple[str, ...] = ("auto",)  # one worker each
    defaults: Options = field(default_factory=Options)  # a request's options are changes to these
    token: str | None = None  # bearer token required on every endpoint but /healthz (and the static page)
    max_queue: int = 100  # queued jobs (not counting running ones); beyond: 429
    max_pixels: int = 2**24  # uploads above it are refused before decoding, and so are larger outputs
    max_steps: int = 2000  # iterations a job's plan may take, over every scale and tile
    max_upload_mb: float = 20.0  # per uploaded file
    job_timeout: float = 600.0  # seconds a job may run (queue time not counted); then it fails
    batch_size: int = 4  # compatible queued jobs optimized together, at most (1: no batching)
    style_cache: int = 4  # styles × option sets whose targets (a Stylizer each) stay in memory
    retention: float = 7 * 86400.0  # seconds a finished job's record and result are kept
    grace: float = 30.0  # on SIGTERM, seconds running jobs get to finish before they are stopped
    preview_size: int = 256  # longest side of the JPEG previews in progress streams
    warmup_delay: float = 0.0  # seconds before the warm-up starts (tests see the not-ready state)

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir))
        for name in ("max_queue", "max_pixels", "max_steps", "batch_size", "style_cache", "preview_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("max_upload_mb", "job_timeout", "retention"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        if self.grace < 0 or self.warmup_delay < 0:
            raise ValueError("grace and warmup_delay must not be negative")
        if not self.devices:
            raise ValueError("at least one device is needed")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)

    def replace(self, **changes) -> ServeConfig:
        return dataclasses.replace(self, **changes)
