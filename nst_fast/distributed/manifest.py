"""The manifest of a collection in its output directory: the settings it was stylized with and each
image's status, so that a rerun resumes where a run stopped and never mixes two settings' outputs.

``OUT_DIR/nst-fast-manifest.json`` holds the options, the style's fingerprint (sha256 of each style
file's bytes, and the blend), the output settings, and per output file name: its source, its status
(``pending``: handed to the cluster; ``done``; ``failed``, with the reason), which worker wrote it and
how long its run took. It is written atomically (a crash leaves the previous version whole).

A rerun with other settings is refused (:class:`SettingsChanged`, one line) unless told to overwrite.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

from ..atomic import atomic_write_text
from ..errors import OptionsError
from ..options import Options

MANIFEST_NAME = "nst-fast-manifest.json"
FORMAT_VERSION = 1


class SettingsChanged(OptionsError):
    """The output directory holds a collection stylized with other settings (or outputs of unknown ones)."""


def file_identity(path: str | os.PathLike) -> str:
    """Which file is at ``path`` now: ``"inode:mtime_ns"``, or ``""`` when there is none. Every output is
    written into a new file and renamed over the old one, so a write always changes the identity."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return ""
    return f"{st.st_ino}:{st.st_mtime_ns}"


def settings_of(
    options: Options, styles: Sequence[bytes], blend: Sequence[float], output: dict[str, object]
) -> dict[str, object]:
    """What decides every output's pixels and encoding, as JSON-ready data."""
    return json.loads(
        json.dumps(
            {
                "options": dataclasses.asdict(options),
                "style": {"sha256": [hashlib.sha256(data).hexdigest() for data in styles], "blend": list(blend)},
                "output": output,
            }
        )
    )


def describe_changes(old: dict, new: dict) -> str:
    """The differences between two settings, on one line: ``steps 3 → 5, the style images``."""
    changes = []
    old_options, new_options = old.get("options", {}), new.get("options", {})
    for name in sorted(set(old_options) | set(new_options)):
        before, after = old_options.get(name, "(none)"), new_options.get(name, "(none)")
        if before != after:
            changes.append(f"{name} {_shown(before)} → {_shown(after)}")
    old_style, new_style = old.get("style", {}), new.get("style", {})
    if old_style.get("sha256") != new_style.get("sha256"):
        changes.append("the style images")
    elif old_style.get("blend") != new_style.get("blend"):
        changes.append(f"style blend {_shown(old_style.get('blend'))} → {_shown(new_style.get('blend'))}")
    for name in sorted(set(old.get("output", {})) | set(new.get("output", {}))):
        before, after = old.get("output", {}).get(name), new.get("output", {}).get(name)
        if before != after:
            changes.append(f"{name} {_shown(before)} → {_shown(after)}")
    return ", ".join(changes)


def _shown(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


class Manifest:
    """The manifest of ``out_dir``: :meth:`open` it for a run, :meth:`record` results, :meth:`save` it."""

    def __init__(self, out_dir: Path, settings: dict, images: dict[str, dict], run: str, existed: bool):
        self.out_dir, self.settings, self.images, self.run, self.existed = out_dir, settings, images, run, existed
        self.path = out_dir / MANIFEST_NAME
        self.previous_run: str | None = None  # the id of the run that wrote the manifest before this one
        self.overwrite = False
        self._saved_at = 0.0
        self._save_seconds = 0.0

    @classmethod
    def open(cls, out_dir: Path, settings: dict, run: str, overwrite: bool = False) -> Manifest:
        """The manifest for a run with ``settings``: the one in ``out_dir`` when its settings are these,
        a new one when there is none or ``overwrite``; otherwise :class:`SettingsChanged`."""
        path = out_dir / MANIFEST_NAME
        if not path.exists():
            manifest = cls(out_dir, settings, {}, run, existed=False)
            manifest.overwrite = overwrite
            return manifest
        try:
            data = json.loads(path.read_text())
            old_settings, images, previous = data["settings"], data["images"], data.get("run")
            if data.get("version") != FORMAT_VERSION or not isinstance(images, dict):
                raise ValueError(f"version {data.get('version')!r}")
        except (OSError, ValueError, KeyError, TypeError) as e:
            if overwrite:
                manifest = cls(out_dir, settings, {}, run, existed=True)
                manifest.overwrite = True
                return manifest
            reason = " ".join(str(e).split())
            raise SettingsChanged(
                f"cannot read the manifest {path} ({type(e).__name__}: {reason}); --overwrite starts afresh"
            ) from None
        if overwrite:
            manifest = cls(out_dir, settings, {}, run, existed=True)
        elif old_settings != settings:
            raise SettingsChanged(
                f"{out_dir} was stylized with other settings ({describe_changes(old_settings, settings)}); "
                "rerun with --overwrite to redo every image with these, or choose another output directory"
            )
        else:
            manifest = cls(out_dir, settings, images, run, existed=True)
        manifest.previous_run, manifest.overwrite = previous, overwrite
        return manifest

    def resume(self, jobs: Sequence[tuple[str, str]]) -> tuple[list[tuple[str, str, str]], list[str]]:
        """Split ``jobs`` ((output name, source path) pairs) into what this run must do — (name, source,
        the output's identity now) — and what it skips: images done (their output still there), and
        images a stopped run had handed out whose output has been written since (a write makes a new file,
        and a run writes only with the settings this manifest holds). The rest are recorded as pending.

        Outputs already there with no manifest were made with settings nobody recorded: refused
        (:class:`SettingsChanged`) unless overwriting."""
        if not self.existed and not self.overwrite:
            found = [name for name, _ in jobs if (self.out_dir / name).exists()]
            if found:
                listed = ", ".join(found[:3]) + (", ..." if len(found) > 3 else "")
                raise SettingsChanged(
                    f"{self.out_dir} already holds {len(found)} of the outputs ({listed}) and no {MANIFEST_NAME}, "
                    "so their settings are unknown; --overwrite replaces them, or choose another output directory"
                )
        todo, skipped = [], []
        for name, source in jobs:
            entry = self.images.get(name)
            current = file_identity(self.out_dir / name)
            if entry is not None and entry.get("source") == source and current:
                if entry["status"] == "done":
                    skipped.append(name)
                    continue
                if entry["status"] == "pending" and current != entry.get("before", ""):
                    entry.update(status="done", error=None, worker="an earlier run that stopped")
                    skipped.append(name)
                    continue
            self.images[name] = {"source": source, "status": "pending", "before": current, "run": self.run}
            todo.append((name, source, current))
        return todo, skipped

    def record(self, name: str, status: str, error: str | None, seconds: float | None, worker: str) -> None:
        entry = self.images[name]
        entry.update(status=status, error=error, seconds=seconds, worker=worker, run=self.run)

    def save(self) -> None:
        start = time.perf_counter()
        data = {"version": FORMAT_VERSION, "run": self.run, "settings": self.settings, "images": self.images}
        atomic_write_text(self.path, json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
        self._saved_at = time.monotonic()
        self._save_seconds = time.perf_counter() - start

    def save_if_due(self, interval: float = 1.0) -> None:
        """Save at most every ``interval`` seconds, and at most 10% of the time: with 100,000 images the
        file is megabytes, and results arrive many times a second."""
        if time.monotonic() - self._saved_at >= max(interval, 10 * self._save_seconds):
            self.save()
