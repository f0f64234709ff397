"""(c) time-to-quality: wall time until a loop's output reaches the float32 reference loss that the
reference reaches after 300 L-BFGS iterations (every other loop is judged by that loss, off the clock)."""

from __future__ import annotations

from bench_utils import SMOKE, default_images, sizes

from nst_fast import bench


def test_time_to_quality(record_machine):
    size = sizes("256", "64")[0]
    steps = 10 if SMOKE else 300
    results = record_machine.pedantic(
        lambda: bench.time_to_quality(size=size, steps=steps, images=default_images()), rounds=1, iterations=1
    )
    record_machine.extra_info.update(size=size, steps=steps, results=[vars(r) for r in results])
    reference = next(r for r in results if r.backend == "reference")
    assert reference.seconds_to_target is not None and reference.seconds_to_target <= reference.reference_seconds
