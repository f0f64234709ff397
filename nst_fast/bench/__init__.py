"""Measurements shared by ``nst-fast bench`` and the pytest-benchmark suites in benchmarks/.

- :mod:`.machine`: what a measurement ran on (:func:`machine_info`), device synchronisation, the images;
- :mod:`.steps`: one iteration per backend × precision × size (:func:`measure_step`, :func:`run`), the
  engine's whole loop (:func:`measure_loop`);
- :mod:`.memory`: peak memory (:class:`PeakMemory`, :func:`allocator_peak`) and the estimate against it
  (:func:`measure_memory`);
- :mod:`.quality`: time-to-quality against the reference (:func:`time_to_quality`);
- :mod:`.report`: table, JSON and plot.

Every timing synchronises the device before reading the clock, follows warm-up iterations, and is
reported as the median of its rounds. Peak memory is what a configuration adds at its peak, from
building the backend (network, targets) to the last timed iteration: the CUDA allocator's peak on a
GPU, the process's peak resident set on a CPU — where each configuration runs in a process of its own.
"""

from .machine import IMAGES_ENV, default_images, machine_info, synchronize
from .memory import PeakMemory, allocator_peak, measure_memory
from .quality import Quality, time_to_quality
from .report import format_table, plot, save_json, save_rows_json
from .steps import (
    Measurement,
    configurations,
    measure_batch,
    measure_loop,
    measure_step,
    measure_step_isolated,
    run,
)

__all__ = [
    "IMAGES_ENV",
    "Measurement",
    "PeakMemory",
    "Quality",
    "allocator_peak",
    "configurations",
    "default_images",
    "format_table",
    "machine_info",
    "measure_batch",
    "measure_loop",
    "measure_memory",
    "measure_step",
    "measure_step_isolated",
    "plot",
    "run",
    "save_json",
    "save_rows_json",
    "synchronize",
    "time_to_quality",
]
