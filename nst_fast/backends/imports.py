"""Importing torch._dynamo without leaking a run's tensors."""

from __future__ import annotations

import importlib
import sys
import threading


def import_off_the_stack(name: str = "torch._dynamo") -> None:
    """Import module ``name`` in a thread of its own, where none of our frames is on the stack.

    Importing torch._dynamo leaves reference cycles through the frames on the stack at the time, and
    with them every tensor those frames hold when they return: imported from inside the first
    checkpointed step (as torch.utils.checkpoint does), that was the run's optimizer state and image,
    121 MiB at 256 px and growing with the image, held until a full garbage collection. torch.compile
    and torch.optim's optimizers import it too: every loop calls this before it builds either. Not to
    be called while importing a module that the import needs: the thread would wait for that import's
    lock.
    """
    if name in sys.modules:
        return
    failed: list[BaseException] = []

    def run() -> None:
        try:
            importlib.import_module(name)
        except BaseException as e:  # raised in the caller's thread below
            failed.append(e)

    thread = threading.Thread(target=run, name=f"import {name}")
    thread.start()
    thread.join()
    if failed:
        raise failed[0]
