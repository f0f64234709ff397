"""Measurements shared by ``nst-fast bench`` and the pytest-benchmark suites in benchmarks/.

- :mod:`.machine`: what a measurement ran on (:func:`machine_info`), device synchronisation, the images;
- :mod:`.steps`: one iteration per backend × precision × size (:func:`measure_step`, :func:`run`), the
  engine's whole loop (:func:`measure_loop`);
- :mod:`.memory`: peak memory (:class:`PeakMemory`, :func:`allocator_peak`) and the estimate against it
  (:func:`measure_memory`);
- :mod:`.quality`: time-to-quality against the reference (:func:`time_to_quality`), and the headline:
  images per second of the standard workload to a fixed quality (:func:`measure_throughput`), its
  target cached per workload (:class:`TargetCache`);
- :mod:`.flops`: the FLOPs of one iteration, from VGG-19's layer table and the plan;
- :mod:`.peak`: the device's reachable matrix-product peak per precision, memory bandwidth, and a
  measurement's fraction of peak;
- :mod:`.report`: tables, JSON and plot; :mod:`.compare`: several machines' JSON files side by side.

Every timing synchronises the device before reading the clock, follows warm-up iterations, and is
reported as the median of its rounds. Peak memory is what a configuration adds at its peak, from
building the backend (network, targets) to the last timed iteration: the CUDA allocator's peak on a
GPU, the process's peak resident set on a CPU — where each configuration runs in a process of its own.
"""

from .compare import format_comparison, load_record, markdown_comparison, plot_comparison
from .flops import IterationFlops, iteration_flops, options_flops, run_flops
from .machine import IMAGES_ENV, default_images, device_details, images_source, machine_info, synchronize
from .memory import PeakMemory, allocator_peak, measure_memory
from .peak import Peak, efficiency, measure_bandwidth, measure_peak, measure_peaks
from .quality import Quality, TargetCache, Throughput, measure_throughput, quality_target, time_to_quality
from .report import (
    benchmark_record,
    format_peaks,
    format_quality,
    format_table,
    plot,
    result_rows,
    save_rows_json,
    workload_description,
    write_record,
)
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
    "IterationFlops",
    "Measurement",
    "Peak",
    "PeakMemory",
    "Quality",
    "TargetCache",
    "Throughput",
    "allocator_peak",
    "benchmark_record",
    "configurations",
    "default_images",
    "device_details",
    "efficiency",
    "format_comparison",
    "format_peaks",
    "format_quality",
    "format_table",
    "images_source",
    "iteration_flops",
    "load_record",
    "machine_info",
    "markdown_comparison",
    "measure_bandwidth",
    "measure_batch",
    "measure_loop",
    "measure_memory",
    "measure_peak",
    "measure_peaks",
    "measure_step",
    "measure_step_isolated",
    "measure_throughput",
    "options_flops",
    "plot",
    "plot_comparison",
    "quality_target",
    "result_rows",
    "run",
    "run_flops",
    "save_rows_json",
    "synchronize",
    "time_to_quality",
    "workload_description",
    "write_record",
]
