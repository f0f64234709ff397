"""Fixtures of the benchmark suites."""

from __future__ import annotations

import pytest
from bench_utils import machine_info


@pytest.fixture
def record_machine(benchmark):
    """The benchmark fixture, with the machine, versions and commit in its extra_info."""
    benchmark.extra_info.update(machine_info())
    return benchmark
