"""What a run reports after each iterate, and the ready-made receivers of those reports."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass
class Iterate:
    """One step of an optimization, as passed to a ``callback``.

    ``image`` is the live iterate (1×3×H×W in [0, 1]); clone it to keep it past the callback.
    """

    step: int
    steps: int
    loss: float
    losses: dict[str, float]
    elapsed: float
    image: torch.Tensor = field(repr=False)

    def to_pil(self):
        from .image import tensor_to_pil

        return tensor_to_pil(self.image)


Callback = Callable[[Iterate], object]


class ProgressBar:
    """A tqdm progress bar with the loss, on a terminal; a plain line every ``every`` steps elsewhere."""

    def __init__(self, steps: int, desc: str = "stylize", every: int = 25, file=None):
        from tqdm.auto import tqdm

        self.file = file or sys.stderr
        self.tty = self.file.isatty()
        self.every = every
        self.desc = desc
        self.bar = tqdm(total=steps, desc=desc, unit="it", file=self.file, dynamic_ncols=True) if self.tty else None

    def __call__(self, it: Iterate) -> None:
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{it.loss:.4g}", refresh=False)
            self.bar.update(it.step - self.bar.n)
        elif it.step % self.every == 0 or it.step == it.steps:
            terms = " ".join(f"{k}={v:.4g}" for k, v in it.losses.items())
            rate = it.step / it.elapsed if it.elapsed > 0 else float("nan")
            print(f"{self.desc}: step {it.step}/{it.steps} loss={it.loss:.4g} {terms} ({rate:.2f} it/s)",
                  file=self.file, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
