"""Style targets kept in memory: a bounded LRU cache of :class:`~nst_fast.Stylizer` objects.

A Stylizer holds one style's targets at every scale of one set of options (and its own copy of the
network), so the cache is keyed by the style image's SHA-256 and the options; the least recently used
entry is dropped beyond the capacity. A Stylizer is safe to share between threads, and one being built
is built once: a second request for it waits for the first.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import threading
from collections.abc import Callable
from pathlib import Path

from ..options import Options
from ..stylizer import Stylizer


def options_key(options: Options) -> str:
    """The options as canonical JSON: equal for equal options."""
    return json.dumps(dataclasses.asdict(options), sort_keys=True)


class StyleCache:
    def __init__(self, capacity: int, on_lookup: Callable[[str], object] = lambda result: None):
        self.capacity, self.on_lookup = capacity, on_lookup
        self._lock = threading.Lock()
        self._entries: collections.OrderedDict[tuple[str, str], Stylizer] = collections.OrderedDict()
        self._building: dict[tuple[str, str], threading.Lock] = {}

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def get(self, sha: str, path: Path, options: Options) -> Stylizer:
        """The Stylizer of the style image at ``path`` (whose SHA-256 is ``sha``) with ``options``."""
        key = (sha, options_key(options))
        with self._lock:
            if (found := self._hit(key)) is not None:
                return found
            building = self._building.setdefault(key, threading.Lock())
        with building:  # one build per key; others wait for it here
            with self._lock:
                if (found := self._hit(key)) is not None:
                    return found
            self.on_lookup("miss")
            try:
                stylizer = Stylizer(str(path), options)
            except BaseException:
                with self._lock:
                    self._building.pop(key, None)
                raise
            with self._lock:  # in the cache before the build lock goes: a waiter finds it there
                self._entries[key] = stylizer
                while len(self._entries) > self.capacity:
                    self._entries.popitem(last=False)
                self._building.pop(key, None)
        return stylizer

    def _hit(self, key) -> Stylizer | None:
        stylizer = self._entries.get(key)
        if stylizer is not None:
            self._entries.move_to_end(key)
            self.on_lookup("hit")
        return stylizer

    def drop(self, sha: str) -> None:
        """Forget every entry of the style ``sha`` (a running job keeps the one it has)."""
        with self._lock:
            for key in [k for k in self._entries if k[0] == sha]:
                del self._entries[key]
