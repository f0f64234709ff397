"""The reachable peak (nst_fast.bench.peak): measured, and a measurement's fraction of it."""

from __future__ import annotations

import pytest

from nst_fast import Options
from nst_fast.bench.flops import options_flops
from nst_fast.bench.peak import Peak, _sides, efficiency, measure_bandwidth, measure_peak, measure_peaks


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


def test_the_peak_is_the_best_of_several_sides_none_a_power_of_two():
    # Powers of two alias in the caches (a 4096² bf16 product here: 203-357 GFLOP/s against ~400 at
    # 768²-1536²); the sides double from 768, and a device smaller than that uses its cap.
    assert _sides(6144) == [768, 1536, 3072, 6144] and _sides(16384)[-1] == 12288
    assert _sides(1000) == [768] and _sides(256) == [256]
    # No side is long enough (min_product_seconds = inf): every side up to the cap is measured, and the
    # peak is the best side's median.
    peak = measure_peak("fp32", "cpu", rounds=3, round_seconds=0.01, max_side=1536, min_product_seconds=float("inf"))
    assert sorted(peak.by_side) == [768, 1536]
    assert peak.flops_per_s == max(peak.by_side.values()) == peak.by_side[peak.side]
    # A side long enough ends the search: with min_product_seconds = 0 only the first is measured.
    assert list(measure_peak("fp32", "cpu", rounds=1, round_seconds=0.01, min_product_seconds=0).by_side) == [768]


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
