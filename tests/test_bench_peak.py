"""The reachable peak (nst_fast.bench.peak): measured, and a measurement's fraction of it."""

from __future__ import annotations

import pytest

from nst_fast import Options
from nst_fast.bench.flops import options_flops
from nst_fast.bench.peak import Peak, efficiency, measure_bandwidth, measure_peak, measure_peaks


def test_measure_peak_times_a_matrix_product():
    peak = measure_peak("bf16", "cpu", rounds=3, round_seconds=0.01, max_side=256)
    assert peak.side == 256 and peak.dtype == "bfloat16" and peak.products_per_round >= 1
    assert len(peak.flops_per_s_all) == 3 and peak.flops_per_s in peak.flops_per_s_all
    assert 1e8 < peak.flops_per_s < 1e14  # a CPU core does more than 0.1 GFLOP/s and less than 100 TFLOP/s
    # TF32 is a GPU format; fp16 measures as its own precision; repeats are measured once.
    peaks = measure_peaks(["fp32", "tf32", "fp32"], "cpu", rounds=1, round_seconds=0.01, max_side=128)
    assert list(peaks) == ["fp32"]
    with pytest.raises(ValueError, match="TF32 is a CUDA format"):
        measure_peak("tf32", "cpu")
    with pytest.raises(ValueError, match="no matrix-product peak"):
        measure_peak("int8", "cpu")


def test_bandwidth_is_bytes_moved_per_second():
    bandwidth = measure_bandwidth("cpu", mib=8, rounds=2)
    assert bandwidth["mib"] == 8 and 1e8 < bandwidth["bytes_per_s"] < 1e13


def test_efficiency_is_achieved_over_the_peak_of_its_precision():
    peaks = {"bf16": Peak("bf16", "bfloat16", "cpu", 4096, 2, 5, 500e9, [500e9] * 5)}
    work = options_flops(Options(), 384, 512).total
    e = efficiency(384, 512, 0.75, "bf16", peaks)
    assert e["flops_per_iteration"] == work
    assert e["achieved_flops_per_s"] == pytest.approx(work / 0.75)
    assert e["fraction_of_peak"] == pytest.approx(work / 0.75 / 500e9)
    assert e["peak_precision"] == "bf16" and e["flops"]["total"] == work
    unmeasured = efficiency(384, 512, 0.75, "fp32", peaks)
    assert unmeasured["fraction_of_peak"] is None and unmeasured["peak_precision"] is None
