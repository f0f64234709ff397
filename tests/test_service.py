"""A Stylizer in a long-lived process: shared by threads, run many times, touching no process setting."""

from __future__ import annotations

import os
import threading

import pytest
import torch

from nst_fast import Stylizer
from nst_fast.memory import process_status_kb

STYLE = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(7))
CONTENTS = [torch.rand(1, 3, 48, 64, generator=torch.Generator().manual_seed(s)) for s in (8, 9)]


@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_two_threads_sharing_a_stylizer_get_what_sequential_calls_get(backend):
    stylizer = Stylizer(STYLE, size=64, steps=5, backend=backend, init="content+noise")
    sequential = [stylizer.stylize_tensor(c) for c in CONTENTS]
    results: dict[int, list[torch.Tensor]] = {}
    failures: list[BaseException] = []

    def work(i: int) -> None:
        try:
            results[i] = [stylizer.stylize_tensor(c) for c in CONTENTS]
        except BaseException as e:  # reported below, in the test's thread
            failures.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not failures and sorted(results) == [0, 1]
    for outputs in results.values():
        assert all(torch.equal(a, b) for a, b in zip(outputs, sequential))


def test_a_run_switches_no_process_setting(monkeypatch):
    """PyTorch keeps deterministic mode, TF32 and its thread count for the whole process: a run that
    switched one would change another thread's run."""

    def settings():
        return (
            torch.are_deterministic_algorithms_enabled(),
            torch.backends.cuda.matmul.allow_tf32,
            torch.backends.cudnn.allow_tf32,
            torch.get_num_threads(),
        )

    before = settings()
    for name in ("use_deterministic_algorithms", "set_num_threads"):
        monkeypatch.setattr(torch, name, lambda *a, _name=name, **k: pytest.fail(f"a run called torch.{_name}"))
    seen = []
    for options in ({"deterministic": True}, {"precision": "tf32"}, {"backend": "reference"}, {"checkpoint": "on"}):
        stylizer = Stylizer(STYLE, size=48, steps=2, device="cpu", **options)
        stylizer.stylize_tensor(CONTENTS[0], lambda it: seen.append(settings()))
    assert set(seen) == {before} and settings() == before


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="reads /proc (Linux)")
def test_many_calls_hold_memory_threads_and_files_flat():
    stylizer = Stylizer(STYLE, size=64, steps=2)
    for _ in range(3):  # allocator pools, oneDNN caches, lazy imports: what the first calls set up
        stylizer.stylize_tensor(CONTENTS[0])
    rss, threads, files = process_status_kb("VmRSS"), threading.active_count(), len(os.listdir("/proc/self/fd"))
    for i in range(20):
        stylizer.stylize_tensor(CONTENTS[i % 2])
    grown = process_status_kb("VmRSS") - rss
    assert threading.active_count() == threads and len(os.listdir("/proc/self/fd")) == files
    assert grown < 40 * 1024, f"resident set grew by {grown / 1024:.0f} MiB over 20 calls"
