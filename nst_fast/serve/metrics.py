"""The service's Prometheus metrics, in a registry of its own (one per app: tests run several).

Counters and histograms are updated where things happen (admission, the workers); the state a scrape
reports — jobs by status, queue depth, running jobs, memory, open streams — is read when scraped.
"""

from __future__ import annotations

from typing import Protocol

import torch
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from ..memory import process_status_kb
from .jobs import FINISHED

LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 32)


def parse_samples(text: str) -> dict[str, float]:
    """A /metrics page's samples as {"name{label=value,...}": value}, labels sorted: what the service's
    tests and its load benchmark read."""
    from prometheus_client.parser import text_string_to_metric_families

    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


class Metrics:
    def __init__(self, state: ServiceState):
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.submitted = Counter(
            "nst_fast_jobs_submitted", "Jobs accepted (202) since the server started", registry=registry
        )
        self.finished = Counter(
            "nst_fast_jobs_finished",
            "Jobs that ended since the server started, by final status",
            ["status"],
            registry=registry,
        )
        for status in FINISHED:
            self.finished.labels(status)
        self.rejected = Counter(
            "nst_fast_requests_rejected",
            "Requests refused with an error, by HTTP status code",
            ["code"],
            registry=registry,
        )
        self.iterations = Counter(
            "nst_fast_iterations",
            "Optimizer iterations run, per image (a batch of B images counts B a step)",
            registry=registry,
        )
        self.iteration_rate = Gauge(
            "nst_fast_iterations_per_second", "Image-iterations per second of the last batch run", registry=registry
        )
        self.latency = Histogram(
            "nst_fast_job_latency_seconds",
            "Seconds from a job's submission to its result, of jobs that finished done",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "nst_fast_batch_size", "Jobs optimized together in one run", buckets=BATCH_BUCKETS, registry=registry
        )
        self.style_lookups = Counter(
            "nst_fast_style_cache_lookups",
            "Style-target cache lookups, by result (hit, miss)",
            ["result"],
            registry=registry,
        )
        for result in ("hit", "miss"):
            self.style_lookups.labels(result)
        registry.register(_StateCollector(state))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class ServiceState(Protocol):
    """What a scrape reads from the service."""

    devices: list[torch.device]

    def job_counts(self) -> dict[str, int]: ...
    def open_streams(self) -> int: ...
    def cached_styles(self) -> int: ...
    def runs_in_progress(self) -> int: ...


class _StateCollector:
    """What a scrape reads from the service's state at that moment."""

    def __init__(self, state: ServiceState):
        self.state = state

    def describe(self):
        return []  # read at each scrape; nothing to check when registered

    def collect(self):
        state = self.state
        counts = state.job_counts()
        jobs = GaugeMetricFamily("nst_fast_jobs", "Jobs in the database, by status", labels=["status"])
        for status, n in counts.items():
            jobs.add_metric([status], n)
        yield jobs
        yield GaugeMetricFamily("nst_fast_queue_depth", "Jobs queued, not yet running", value=counts["queued"])
        yield GaugeMetricFamily("nst_fast_jobs_running", "Jobs running now", value=counts["running"])
        yield GaugeMetricFamily(
            "nst_fast_runs_in_progress",
            "Batch runs being optimized now (a cancelled job's run may end after its record did)",
            value=state.runs_in_progress(),
        )
        yield GaugeMetricFamily("nst_fast_event_streams", "Open progress streams (SSE)", value=state.open_streams())
        yield GaugeMetricFamily("nst_fast_cached_styles", "Style targets held in memory", value=state.cached_styles())
        memory = GaugeMetricFamily(
            "nst_fast_memory_bytes",
            "Memory in use: the process's resident set, and each GPU's allocated",
            labels=["kind"],
        )
        for kind, key in (("resident", "VmRSS"), ("resident_peak", "VmHWM")):
            kb = process_status_kb(key)
            if kb is not None:
                memory.add_metric([kind], kb * 1024)
        for device in state.devices:
            if device.type == "cuda":
                memory.add_metric([f"cuda:{device.index or 0}"], torch.cuda.memory_allocated(device))
        yield memory
