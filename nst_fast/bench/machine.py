"""What a measurement ran on, and on what images."""

from __future__ import annotations

import hashlib
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


def device_details(device: str | torch.device = "cpu") -> dict:
    """More of what a figure depends on than :func:`machine_info`: for a CPU its physical cores,
    sockets, flags for the matrix units (AVX-512 BF16, AMX), and the threads torch uses; for a GPU its
    properties, the cuDNN version, the TF32 settings in force, and from nvidia-smi its clocks (now and
    at most), power limit and memory (None where they cannot be read)."""
    dev = torch.device(device)
    details: dict = {"type": dev.type, "torch_threads": torch.get_num_threads()}
    if dev.type == "cpu":
        details.update(_cpu_topology())
        details["mkldnn_bf16"] = bool(getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)())
        return details
    if dev.type == "cuda":
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        details.update(
            name=props.name,
            compute_capability=f"{props.major}.{props.minor}",
            multiprocessors=props.multi_processor_count,
            memory_mib=props.total_memory // 2**20,
            cudnn=torch.backends.cudnn.version(),
            matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32,
            cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
            **_nvidia_smi(index),
        )
    return details


def _cpu_topology() -> dict:
    """Physical cores and sockets (from /proc/cpuinfo), logical CPUs, and the matrix-unit flags."""
    cores, sockets, flags = set(), set(), set()
    physical = core = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key, value = key.strip(), value.strip()
            if key == "physical id":
                physical = value
                sockets.add(value)
            elif key == "core id":
                core = value
                cores.add((physical, core))
            elif key == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile", "fma")
    return {
        "cpu": _cpu_name(),
        "logical_cpus": os.cpu_count(),
        "physical_cores": len(cores) or None,
        "sockets": len(sockets) or None,
        "flags": [f for f in wanted if f in flags],
    }


_SMI_FIELDS = {
    "driver_version": "driver",
    "clocks.sm": "sm_clock_mhz",
    "clocks.max.sm": "sm_clock_max_mhz",
    "clocks.mem": "memory_clock_mhz",
    "clocks.max.mem": "memory_clock_max_mhz",
    "power.limit": "power_limit_w",
    "pstate": "pstate",
}


def _nvidia_smi(index: int) -> dict:
    """The GPU's clocks, power limit and driver from nvidia-smi, or an empty dict without it."""
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--id={index}", "--query-gpu=" + ",".join(_SMI_FIELDS), "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        )
        values = [v.strip() for v in out.stdout.strip().splitlines()[0].split(",")]
    except (OSError, subprocess.SubprocessError, IndexError):
        return {}
    result = {}
    for key, value in zip(_SMI_FIELDS.values(), values):
        try:
            result[key] = float(value) if key.endswith(("_mhz", "_w")) else value
        except ValueError:  # "[N/A]", "[Not Supported]"
            result[key] = None
    return result


def image_digest(image: torch.Tensor) -> str:
    """A short digest of an image's pixels as 8-bit values: the same picture on every machine, however
    it was loaded (a file, the built-in samples)."""
    pixels = (image.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8).contiguous()
    return hashlib.sha256(str(tuple(pixels.shape)).encode() + pixels.numpy().tobytes()).hexdigest()[:16]


def _images_folder() -> Path | None:
    """The folder ``NST_FAST_IMAGES`` names, when it has both images."""
    folder = os.environ.get(IMAGES_ENV)
    if folder and all((Path(folder) / name).is_file() for name in ("tubingen.jpg", "starry_night.jpg")):
        return Path(folder)
    return None


def images_source() -> str:
    """Where :func:`default_images` takes its pair from: the folder's two files, or the built-in samples."""
    return "tubingen.jpg, starry_night.jpg" if _images_folder() else "built-in samples"


def default_images() -> tuple[torch.Tensor, torch.Tensor]:
    """The benchmark's photo and painting: tubingen.jpg and starry_night.jpg from the directory that
    ``NST_FAST_IMAGES`` names when it has them, else the built-in samples."""
    folder = _images_folder()
    if folder:
        return load_image(folder / "tubingen.jpg"), load_image(folder / "starry_night.jpg")
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
