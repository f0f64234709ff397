"""One run over a collection: :func:`stylize_dataset` checks the inputs, resumes from the manifest,
runs the Ray Data pipeline (:mod:`.batch`) and follows it with one progress bar; :class:`Summary`."""

from __future__ import annotations

import logging
import math
import os
import secrets
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic import refuse_overwriting_inputs
from ..errors import OptionsError, counted
from ..image import check_output_path, load_image
from ..options import INITS, Options
from ..plan import check_style_size
from . import attempts
from .batch import plan_batches, stylize_batches
from .cluster import actor_resources, check_installed, connected
from .manifest import MANIFEST_NAME, Manifest, settings_of

logger = logging.getLogger(__name__)


@dataclass
class Summary:
    """What a run did: output names stylized now, skipped (done before), failed (with the reason)."""

    out_dir: Path
    total: int
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    resources: str | None = None  # the actor pool, when one ran

    @property
    def ok(self) -> bool:
        """Whether every image is done (now or before)."""
        return not self.failed

    def lines(self) -> list[str]:
        """The summary as lines: the counts and wall time, then each failure with its reason."""
        head = (
            f"{self.total} images: {len(self.done)} stylized, {len(self.skipped)} skipped (done before), "
            f"{len(self.failed)} failed, in {self.seconds:.1f} s"
        )
        if self.done and self.seconds > 0:
            head += f" ({len(self.done) / self.seconds:.2f} images/s"
            head += f" on {self.resources})" if self.resources else ")"
        return [head, *(f"failed: {name}: {reason}" for name, reason in sorted(self.failed.items()))]


def stylize_dataset(
    paths: Iterable[str | os.PathLike],
    style: str | os.PathLike | Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    options: Options | None = None,
    *,
    style_blend: Sequence[float] | None = None,
    format: str = "png",
    bit_depth: int = 8,
    quality: int | None = None,
    address: str | None = None,
    actors: int | None = None,
    actor_cpus: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    on_result: Callable[[dict], object] | None = None,
    ray_init_args: dict | None = None,
) -> Summary:
    """Stylize the images ``paths`` with ``style`` into ``out_dir`` on a Ray cluster, with Ray Data.

    Each output is ``out_dir/<name>.<format>``, written atomically by the actor that stylized it;
    ``out_dir`` and the content images must be reachable, at the same paths, by every node (the style
    images are read here and sent). A manifest in ``out_dir`` (:mod:`.manifest`) makes a rerun skip
    what is done and refuse other settings unless ``overwrite``.

    Ray: the one this process is connected to already; else ``address`` (``"auto"``, ``"host:port"``,
    ``"ray://host:10001"``); else a local Ray started for the run and shut down after it (``ray_init_args``
    go to ``ray.init``). ``actors`` and ``actor_cpus`` size the actor pool (:func:`.cluster.actor_resources`).

    ``progress`` shows one bar for the whole run on stderr; ``on_result(row)`` is called, on this
    process, with each image's result as it comes back (``output``, ``source``, ``status``, ``error``,
    ``seconds``, ``worker``, ``wrote``). Returns a :class:`Summary`; an image that failed is in its
    ``failed``, not an exception. Interrupted, the manifest keeps what was done; a rerun goes on.
    """
    start = time.perf_counter()
    check_installed()
    options = options or Options()
    out_dir = Path(os.path.abspath(os.fspath(out_dir)))
    if not out_dir.is_dir():
        raise OptionsError(f"the output directory must exist: {out_dir}")
    jobs = _jobs(paths, out_dir, format, bit_depth)
    if quality is not None and not 1 <= quality <= 100:
        raise OptionsError(f"quality must be between 1 and 100, got {quality}")
    style_paths, styles = _read_styles(style, options)
    inputs = [source for _, source in jobs] + style_paths + ([] if options.init in INITS else [options.init])
    refuse_overwriting_inputs([out_dir / name for name, _ in jobs], inputs, "choose another output directory")
    blend = _blend(style_blend, len(styles))
    output = {"format": format, "bit_depth": bit_depth, "quality": quality}
    settings = settings_of(options, [data for _, data in styles], [w / max(blend) for w in blend], output)
    run = time.strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(3)
    manifest = Manifest.open(out_dir, settings, run, overwrite=overwrite)
    todo, skipped = manifest.resume(jobs)
    manifest.save()  # what this run hands out is recorded before any of it is done
    summary = Summary(out_dir, len(jobs), skipped=skipped)
    if todo:
        save_args = {"bit_depth": bit_depth, **({} if quality is None else {"quality": quality})}
        batches = plan_batches(todo, options)
        with connected(address, ray_init_args) as ray:
            resources = actor_resources(ray, options, actors, actor_cpus, len(batches))
            summary.resources = resources.describe()
            logger.info(
                f"{len(todo)} of {len(jobs)} images to stylize ({len(skipped)} done before), in {len(batches)} "
                f"batches, on Ray with {summary.resources}"
            )
            attempts.start_run(out_dir, run, keep=manifest.previous_run)
            results = stylize_batches(
                batches,
                styles=styles,
                blend=blend,
                options=options,
                out_dir=out_dir,
                run=run,
                save_args=save_args,
                resources=resources,
            )
            _follow(results, manifest, summary, {name: source for name, source, _ in todo}, progress, on_result)
        _remove_temporaries(out_dir, [name for name, _, _ in todo] + [MANIFEST_NAME])
    summary.seconds = time.perf_counter() - start
    return summary


def _follow(results, manifest: Manifest, summary: Summary, sources: dict[str, str], progress: bool, on_result) -> None:
    """Record each result in the manifest and the summary as it comes back, with one bar for the run."""
    from tqdm.auto import tqdm

    tty = sys.stderr.isatty()
    bar = tqdm(
        total=len(sources),
        desc="stylized",
        unit="img",
        file=sys.stderr,
        disable=not progress,
        dynamic_ncols=True,
        mininterval=0.5 if tty else 30,  # in a log file, a line every 30 s
    )
    seen = set()
    try:
        for row in results:
            name = row["output"]
            if name in seen:  # a retried task's row for an image whose first row came back: counted once
                continue
            seen.add(name)
            error = row["error"] or None
            manifest.record(name, row["status"], error, row["seconds"], row["worker"])
            if row["status"] == "done":
                summary.done.append(name)
            else:
                summary.failed[name] = error or "unknown error"
                bar.set_postfix(failed=len(summary.failed), refresh=False)
            bar.update(1)
            manifest.save_if_due()
            if on_result is not None:
                on_result({**row, "source": sources[name]})
        for name in sources.keys() - seen:  # the pipeline ended without it: never silently lost
            reason = "no result came back from the cluster"
            manifest.record(name, "failed", reason, None, "")
            summary.failed[name] = reason
    finally:
        bar.close()
        manifest.save()
        results.close()


def _jobs(paths, out_dir: Path, fmt: str, bit_depth: int) -> list[tuple[str, str]]:
    """(output name, absolute source path) per image; every node resolves the same absolute paths."""
    if isinstance(paths, (str, os.PathLike)):
        raise OptionsError("paths must be a list of image paths (expand a directory or glob first)")
    sources = [os.path.abspath(os.path.expanduser(os.fspath(p))) for p in paths]
    if not sources:
        raise OptionsError("no images to stylize")
    names = [f"{Path(source).stem}.{fmt}" for source in sources]
    check_output_path(out_dir / names[0], bit_depth)  # the format, the bit depth, a writable directory
    if len(set(names)) != len(names):
        repeated = sorted({n for n in names if names.count(n) > 1})
        raise OptionsError(f"content images share a name, so their outputs would collide: {', '.join(repeated[:3])}")
    return list(zip(names, sources))


def _read_styles(style, options: Options) -> tuple[list[Path], list[tuple[str, bytes]]]:
    """The style images' paths, and each one's suffix and bytes, after checking here that it is an image
    that every scale of the run can use (or every actor would fail alike)."""
    styles = list(style) if isinstance(style, (list, tuple)) else [style]
    if not styles:
        raise OptionsError("at least one style image is needed")
    paths, read = [], []
    for path in styles:
        if not isinstance(path, (str, os.PathLike)):
            raise OptionsError(f"on Ray, style images are given as paths, not {type(path).__name__}")
        path = Path(path).expanduser()
        check_style_size(options, *load_image(path, options.max_pixels).shape[-2:])
        paths.append(path)
        read.append((path.suffix, path.read_bytes()))
    return paths, read


def _blend(style_blend: Sequence[float] | None, count: int) -> list[float]:
    blend = [1.0] * count if style_blend is None else [float(w) for w in style_blend]
    if len(blend) != count:
        raise OptionsError(f"{counted(len(blend), 'style blend weight')} given for {counted(count, 'style image')}")
    if not all(math.isfinite(w) and w >= 0 for w in blend) or max(blend) <= 0:
        raise OptionsError(f"style blend weights must be finite, non-negative and not all zero, got {blend}")
    return blend


def _remove_temporaries(out_dir: Path, names: list[str]) -> None:
    """Remove the temporary files (``.NAME.XXXXXXXX.tmp``, beside their target) that killed workers left
    before renaming them into place: never an output, only its unfinished copy."""
    names_set = set(names)
    with os.scandir(out_dir) as entries:
        for entry in entries:
            name = entry.name
            if name.startswith(".") and name.endswith(".tmp") and name[1:-4].rsplit(".", 1)[0] in names_set:
                Path(entry.path).unlink(missing_ok=True)
