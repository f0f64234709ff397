"""What a run reports after each iterate, and the ready-made receivers of those reports."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .atomic import atomic_write_text
from .image import save_image, tensor_to_pil
from .memory import process_status_kb


class Iterate:
    """One step of an optimization, as passed to a ``callback``.

    ``image`` is the live iterate (1×3×H×W in [0, 1]); clone it to keep it past the callback. (In a
    tiled scale it is the whole canvas with the current tile blended in, made when first read.)
    ``loss`` and ``losses`` may live on the device until read: reading them on a GPU waits for the
    step to finish, so a callback that reads them only every N steps keeps the GPU busy.
    ``elapsed`` is host time since the loop started (on a GPU, the work may still be queued).
    ``indices``, for a batch (:meth:`~nst_fast.Stylizer.stylize_many`), says whose image each row of
    ``image`` is: its position in the list of contents (rows leave when their image is cancelled).
    """

    __slots__ = ("step", "steps", "elapsed", "device", "indices", "_image", "_loss", "_losses")

    def __init__(
        self,
        step: int,
        steps: int,
        loss,
        losses: dict,
        elapsed: float,
        image: torch.Tensor | Callable[[], torch.Tensor],
        device: torch.device | None = None,
        indices: tuple[int, ...] | None = None,
    ):
        self.step, self.steps, self.elapsed, self._image = step, steps, elapsed, image
        self.indices = indices
        self.device = image.device if isinstance(image, torch.Tensor) else device
        self._loss, self._losses = loss, losses

    @property
    def image(self) -> torch.Tensor:
        if callable(self._image):
            self._image = self._image()
        return self._image

    @property
    def loss(self) -> float:
        if isinstance(self._loss, torch.Tensor):
            self._loss = self._loss.item()
        return self._loss

    @property
    def losses(self) -> dict[str, float]:
        self._losses = {k: v.item() if isinstance(v, torch.Tensor) else v for k, v in self._losses.items()}
        return self._losses

    def shifted(self, done: int, total: int, elapsed: float, image=None, indices=None) -> Iterate:
        """This iterate as a step of a larger run that had done ``done`` steps of ``total`` in ``elapsed``
        seconds before it began (a scale of a pyramid, a tile); ``image`` (a tensor, or a function that
        makes one when read) replaces the image it shows; ``indices`` (a sequence) maps the batch
        positions of :attr:`indices` to the larger run's."""
        shown = self._image if image is None else image
        mapped = self.indices
        if indices is not None:
            mapped = tuple(indices[i] for i in (self.indices or range(len(indices))))
        return Iterate(
            done + self.step, total, self._loss, self._losses, elapsed + self.elapsed, shown, self.device, mapped
        )

    def to_pil(self):
        return tensor_to_pil(self.image)

    def __repr__(self) -> str:
        return f"Iterate(step={self.step}/{self.steps}, loss={self.loss:.6g}, elapsed={self.elapsed:.3f})"


Callback = Callable[[Iterate], object]


class ProgressBar:
    """A tqdm progress bar with the loss, on a terminal; a plain line every ``every`` steps elsewhere."""

    def __init__(self, steps: int, desc: str = "stylize", every: int = 25, file=None):
        self.file = file or sys.stderr
        self.tty = self.file.isatty()
        self.every = every
        self.desc = desc
        self.bar = tqdm(total=steps, desc=desc, unit="it", file=self.file, dynamic_ncols=True) if self.tty else None

    def __call__(self, it: Iterate) -> None:
        report = it.step % self.every == 0 or it.step == it.steps
        if self.bar is not None:
            if report or it.step == 1:  # reading the loss waits for a GPU: not every step
                self.bar.set_postfix(loss=f"{it.loss:.4g}", refresh=False)
            self.bar.update(it.step - self.bar.n)
        elif report:
            terms = " ".join(f"{k}={v:.4g}" for k, v in it.losses.items())
            rate = it.step / it.elapsed if it.elapsed > 0 else float("nan")
            print(
                f"{self.desc}: step {it.step}/{it.steps} loss={it.loss:.4g} {terms} ({rate:.2f} it/s)",
                file=self.file,
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class SaveEvery:
    """Save the iterate every ``every`` steps beside ``output``, as ``<stem>.step<N><suffix>``."""

    def __init__(self, output, every: int, **save_args):
        self.output, self.every, self.save_args = Path(output), every, save_args
        self.saved: list = []

    def __call__(self, it: Iterate) -> None:
        if it.step % self.every == 0:
            path = self.output.with_name(f"{self.output.stem}.step{it.step:05d}{self.output.suffix}")
            self.saved.append(save_image(it.image, path, **self.save_args))


class JsonTrace:
    """Record each iterate's loss terms, elapsed time and peak memory; :meth:`write` saves them as JSON.

    Reading the loss every step waits for a GPU each step: a trace costs some speed there.
    """

    def __init__(self):
        self.records: list[dict] = []

    def __call__(self, it: Iterate) -> None:
        self.records.append(
            {
                "step": it.step,
                "loss": it.loss,
                **it.losses,
                "elapsed": round(it.elapsed, 6),
                "peak_memory_mb": _peak_memory_mb(it.device),
            }
        )

    def write(self, path) -> None:
        atomic_write_text(path, json.dumps({"iterations": self.records}, indent=1) + "\n")


def _peak_memory_mb(device: torch.device | None) -> float | None:
    if device is not None and device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = process_status_kb("VmHWM")
    return None if peak is None else peak / 1024


class Callbacks:
    """Several callbacks as one."""

    def __init__(self, *callbacks):
        self.callbacks = [c for c in callbacks if c is not None]

    def __call__(self, it: Iterate) -> None:
        for callback in self.callbacks:
            callback(it)
