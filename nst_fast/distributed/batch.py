"""The Ray Data pipeline: a dataset of batches of images, stylized by a pool of actors that each hold one
:class:`~nst_fast.Stylizer` (the network and the style's targets, computed once per actor).

The driver groups the images into batches of the same planned shape (:func:`plan_batches`), one row of
the dataset per batch, so that ``Stylizer.stylize_many`` optimizes each batch as one; ``map_batches``
hands the rows to a pool of :class:`StylizeBatches` actors (``ActorPoolStrategy``), and each actor
writes its outputs itself, atomically, into the output directory, and returns one small row per image:
its status, its reason if it failed, its worker and time. Images never travel through the object store.

Fault tolerance is Ray's: Ray Data creates the pool's actors with ``max_restarts=-1`` and
``max_task_retries=-1``, so a killed actor is restarted and its unfinished batches are retried on
whichever actor is free. (Ray 2.60 deprecates passing these through ``map_batches``; its defaults are
what is wanted.) What Ray cannot know, the actors check themselves (:mod:`.attempts`): a retry does not
write again an output that the dead attempt had written, and an image whose worker died
:data:`~.attempts.MAX_ATTEMPTS` times is failed rather than retried for ever.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..errors import NstError
from ..image import longest_side_shape
from ..options import Options
from ..plan import schedule
from .attempts import MAX_ATTEMPTS, Attempts, worker_name
from .cluster import ActorResources
from .manifest import file_identity

# Rotations that the EXIF orientation tag asks for which swap width and height.
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)


def plan_batches(todo: Sequence[tuple[str, str, str]], options: Options) -> list[list[dict]]:
    """``todo`` ((output name, source, output identity) triples) as batches of at most ``batch_size``
    images whose runs have the same shape at every scale (the images in a batch are optimized as one).
    An image whose header cannot be read goes alone: its worker reports why."""
    size = options.batch_size
    items = [{"output": name, "source": source, "before": before} for name, source, before in todo]
    if size == 1:
        return [[item] for item in items]
    with ThreadPoolExecutor(max_workers=16) as pool:  # headers only; on a network file system, in parallel
        keys = list(pool.map(lambda item: _planned_shape(item["source"], options), items))
    groups: dict[object, list[dict]] = {}
    for i, (item, key) in enumerate(zip(items, keys)):
        groups.setdefault(("alone", i) if key is None else key, []).append(item)
    return [members[i : i + size] for members in groups.values() for i in range(0, len(members), size)]


def _planned_shape(path: str, options: Options) -> tuple | None:
    """The image's (height, width) at every scale of the schedule, from its header; None if unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            width, height = image.size
            if image.getexif().get(0x0112) in _SWAPPING_ORIENTATIONS:
                width, height = height, width
    except Exception:  # noqa: BLE001 — the worker reads it again and reports the error
        return None
    return tuple(longest_side_shape(height, width, size) for size, _ in schedule(options))


class StylizeBatches:
    """The callable class of ``map_batches``: one instance per actor, one :class:`Stylizer` per instance.

    Each call receives rows of batches (column ``images``: a batch as JSON) and returns one row per
    image: ``output``, ``status`` (``done`` or ``failed``), ``error``, ``seconds``, ``worker``, ``wrote``.
    """

    def __init__(
        self,
        styles: list[tuple[str, bytes]],
        blend: list[float],
        options: Options,
        out_dir: str,
        run: str,
        save_args: dict,
        threads: int,
    ):
        import torch

        # This actor's process is its own: its threads are the CPUs that Ray reserved for it, which torch
        # would otherwise not know (it would start one thread per core of the node).
        torch.set_num_threads(threads)
        self.out_dir, self.run, self.save_args = Path(out_dir), run, save_args
        self.stylizer, self.init_error = None, None
        try:
            self.stylizer = self._stylizer(styles, blend, options)
        except Exception as e:  # noqa: BLE001 — reported with each image, not as an actor that dies at birth
            self.init_error = f"the worker could not start: {_one_line(e)}"

    @staticmethod
    def _stylizer(styles: list[tuple[str, bytes]], blend: list[float], options: Options):
        from ..stylizer import Stylizer

        # The style files' bytes came from the driver (the ones fingerprinted in the manifest); read
        # here from files, as in one process, so that every format reads the same.
        with tempfile.TemporaryDirectory(prefix="nst-fast-style-") as tmp:
            paths = []
            for i, (suffix, data) in enumerate(styles):
                path = Path(tmp) / f"style{i}{suffix}"
                path.write_bytes(data)
                paths.append(path)
            return Stylizer(paths, options, style_blend=blend)

    def __call__(self, batch: dict) -> dict[str, list]:
        rows = []
        for text in batch["images"]:
            rows.extend(self._stylize(json.loads(str(text))))
        return {key: [row[key] for row in rows] for key in ("output", "status", "error", "seconds", "worker", "wrote")}

    def _stylize(self, images: list[dict]) -> list[dict]:
        """Stylize one batch; return a row per image, in order."""
        rows: dict[str, dict] = {}
        ready = []  # (image entry, its attempts, loaded tensor, attempts before this one)
        for image in images:
            name = image["output"]
            attempts = Attempts(self.out_dir, self.run, name)
            current = file_identity(self.out_dir / name)
            if current and current != image["before"]:
                # Written by an attempt of this run whose worker then died: written once, not twice.
                attempts.record("found")
                rows[name] = _row(name, "done", None, None, wrote=False)
                continue
            if self.init_error is not None:
                rows[name] = self._failed(attempts, name, self.init_error)
                continue
            before = attempts.starts()
            if before >= MAX_ATTEMPTS:
                reason = f"its worker died during each of {before} attempts (out of memory? a crash?)"
                rows[name] = self._failed(attempts, name, reason)
                continue
            attempts.record("start")
            try:
                content = self._load(image["source"])
            except Exception as e:  # noqa: BLE001 — this image fails, the others go on
                rows[name] = self._failed(attempts, name, _one_line(e))
                continue
            ready.append((image, attempts, content, before))
        # A retried batch runs image by image: if one of them kills its worker, only that one is retried.
        retried = any(before for *_, before in ready)
        for group in [[r] for r in ready] if retried else [ready] if ready else []:
            self._optimize(group, rows)
        return [rows[image["output"]] for image in images]

    def _load(self, source: str):
        from ..image import load_image

        content = load_image(source, self.stylizer.options.max_pixels)
        self.stylizer.plan(content).check_fits()  # too small, too large for the memory: this image only
        return content

    def _optimize(self, group: list, rows: dict[str, dict]) -> None:
        from ..image import save_image

        start = time.perf_counter()

        def save(index: int, result) -> None:  # each image as soon as its batch is done
            image, attempts, _, _ = group[index]
            save_image(result, self.out_dir / image["output"], **self.save_args)
            attempts.record("wrote")
            rows[image["output"]] = _row(image["output"], "done", None, time.perf_counter() - start, wrote=True)

        try:
            self.stylizer.stylize_many([content for _, _, content, _ in group], on_result=save)
        except Exception as e:  # noqa: BLE001 — the batch's unwritten images fail with it
            for image, attempts, _, _ in group:
                if image["output"] not in rows:
                    rows[image["output"]] = self._failed(attempts, image["output"], _one_line(e))

    @staticmethod
    def _failed(attempts: Attempts, name: str, reason: str) -> dict:
        attempts.record("failed", error=reason)
        return _row(name, "failed", reason, None, wrote=False)


def _row(name: str, status: str, error: str | None, seconds: float | None, wrote: bool) -> dict:
    return {
        "output": name,
        "status": status,
        "error": error or "",
        "seconds": math.nan if seconds is None else seconds,
        "worker": worker_name(),
        "wrote": wrote,
    }


def _one_line(error: Exception) -> str:
    text = " ".join(str(error).split())
    return text if isinstance(error, NstError) else f"{type(error).__name__}: {text}"


def stylize_batches(
    batches: list[list[dict]],
    *,
    styles: list[tuple[str, bytes]],
    blend: list[float],
    options: Options,
    out_dir: Path,
    run: str,
    save_args: dict,
    resources: ActorResources,
) -> Iterator[dict]:
    """Run the pipeline; yield each image's row as its batch comes back (in completion order).

    Ray Data streams: the driver holds the small result rows only, and an actor is handed a batch when
    it has room (a few queued at most), so memory stays bounded however many images there are."""
    import ray.data

    dataset = ray.data.from_items(
        [{"images": json.dumps(batch)} for batch in batches], override_num_blocks=len(batches)
    )
    dataset.context.enable_progress_bars = False  # one bar for the whole run: the caller's
    stylized = dataset.map_batches(
        StylizeBatches,
        batch_size=1,  # one batch of images per call: one optimization
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=resources.actors, initial_size=resources.starting),
        num_cpus=resources.cpus if resources.reserve_cpus else None,
        num_gpus=resources.gpus or None,
        fn_constructor_kwargs={
            "styles": styles,
            "blend": blend,
            "options": options,
            "out_dir": os.fspath(out_dir),
            "run": run,
            "save_args": save_args,
            "threads": resources.cpus,
        },
    )
    rows = iter(stylized.iter_rows())
    try:
        for row in rows:
            yield {**row, "seconds": None if math.isnan(row["seconds"]) else float(row["seconds"])}
    finally:
        close = getattr(rows, "close", None)
        if close is not None:  # stops the pipeline, and its actors, when the caller stops early
            close()
