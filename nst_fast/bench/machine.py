"""What a measurement ran on, and on what images."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import torch

from .. import _ext
from ..image import load_image
from ..samples import sample_content, sample_style

IMAGES_ENV = "NST_FAST_IMAGES"  # a directory with tubingen.jpg and starry_night.jpg (the project's ../shared/images)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work: every timing reads the clock after this."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def machine_info() -> dict:
    """What the numbers were measured on: CPU, GPU, driver, versions, threads, commit."""
    return {
        "host_cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "driver": _nvidia_driver(),
        "commit": _git_commit(),
        "extension": _ext.AVAILABLE,
    }


def default_images() -> tuple[torch.Tensor, torch.Tensor]:
    """The benchmark's photo and painting: tubingen.jpg and starry_night.jpg from the directory that
    ``NST_FAST_IMAGES`` names when it has them, else the built-in samples."""
    folder = os.environ.get(IMAGES_ENV)
    if folder and all((Path(folder) / name).is_file() for name in ("tubingen.jpg", "starry_night.jpg")):
        return load_image(Path(folder) / "tubingen.jpg"), load_image(Path(folder) / "starry_night.jpg")
    return load_image(sample_content()), load_image(sample_style())


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _nvidia_driver() -> str | None:
    if not torch.cuda.is_available():
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        )
        return out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
