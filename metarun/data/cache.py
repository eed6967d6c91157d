"""Decoded-dataset caches that prove their own contents.

A cache entry is an array file ``<key>.npy`` (memory-mapped on load: pages are read on demand)
and a record ``<key>.json`` beside it holding the array's shape, dtype and SHA-256 digest plus
whatever the dataset needs with it (class names). The record is written last, so an entry
without one is unfinished. On load the digest is computed again (about 0.5 s per GB): a file
that was edited, hand-made, cut short or written by something else does not match, and the entry
is rebuilt from the verified source with one warning line instead of being trusted.

Building is safe when several sweep jobs start at once: lock, look again, build, write to
temporary names and rename. A cache that cannot be written (full disk, read-only folder) costs
the cache, not the run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from filelock import FileLock

from metarun.atomic import atomic_write
from metarun.errors import say, warn

CHUNK = 1 << 24


def digest(array: np.ndarray) -> str:
    """SHA-256 of the array's bytes (C order)."""
    flat = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
    h = hashlib.sha256()
    for start in range(0, flat.size, CHUNK):
        h.update(flat[start : start + CHUNK].data)
    return h.hexdigest()


def _record_path(path: Path) -> Path:
    return path.with_suffix(".json")


Accept = Callable[[np.ndarray, dict], bool]


def read_cache(
    path: Path, report: bool = True, accept: Accept | None = None
) -> tuple[np.ndarray, dict] | None:
    """The array and metadata of a verified entry that ``accept(array, meta)`` (when given)
    takes; None when absent or unusable (then, with ``report``, a warning says why: the caller
    rebuilds it)."""
    record_path = _record_path(path)
    if not path.is_file() and not record_path.is_file():
        return None
    problem = None
    try:
        record = json.loads(record_path.read_text())
        array = np.load(path, mmap_mode="c", allow_pickle=False)
    except (OSError, ValueError) as e:
        problem = f"unreadable ({getattr(e, 'strerror', None) or str(e)[:80]})"
    else:
        if not isinstance(record, dict) or not {"digest", "shape", "dtype"} <= set(record):
            problem = "its record is not a metarun cache record"
        elif list(array.shape) != record["shape"] or str(array.dtype) != record["dtype"]:
            problem = "its shape or type differs from its record"
        elif digest(array) != record["digest"]:
            problem = "its contents do not match their recorded digest"
        elif accept is not None and not accept(array, record.get("meta", {})):
            problem = "it holds another layout than this dataset's"
    if problem is None:
        return array, record.get("meta", {})
    if report:
        warn(
            f"the dataset cache {path} is not usable ({problem}: edited, cut short or not "
            "written by metarun); rebuilding it from the verified source"
        )
    return None


def write_cache(path: Path, array: np.ndarray, meta: dict[str, Any]) -> None:
    """Write an entry: the array first, then its record (which makes the entry valid)."""
    record = {
        "shape": list(array.shape),
        "dtype": str(array.dtype),
        "digest": digest(array),
        "meta": meta,
    }
    _record_path(path).unlink(missing_ok=True)  # a stale record never vouches for a new array
    atomic_write(path, lambda f: np.save(f, array, allow_pickle=False))
    text = json.dumps(record)
    atomic_write(_record_path(path), lambda f: f.write(text.encode()))


def cached(
    path: Path,
    build: Callable[[], tuple[np.ndarray, dict[str, Any]]],
    accept: Accept | None = None,
    what: str | None = None,
) -> tuple[np.ndarray, dict]:
    """The entry at ``path``, built with ``build() -> (array, meta)`` (and written) when it is
    missing, does not verify, or is not what ``accept(array, meta)`` expects. A build of
    ``what`` (e.g. "the glyphs train split (1,200 classes)") says when it starts and what it
    took, on stdout: the first run of a dataset is not silent for half a minute."""
    found = read_cache(path, accept=accept)
    if found is not None:
        return found
    created = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(path) + ".lock")
        lock.acquire()
    except OSError as e:  # an unwritable cache folder: build, do not cache
        warn(f"could not use the dataset cache {path} ({e.strerror or e}); not caching")
        return build()
    try:
        found = read_cache(path, report=False, accept=accept)  # built by a concurrent job?
        if found is not None:
            return found
        started = time.monotonic()
        if what:
            say(f"building {what}, once: it is cached in {path.parent}")
        try:
            array, meta = build()
        except BaseException:  # e.g. the source is missing: leave no folders or lock behind
            if created:
                Path(lock.lock_file).unlink(missing_ok=True)
                for folder in created:  # deepest first
                    with contextlib.suppress(OSError):
                        folder.rmdir()
            raise
        try:
            write_cache(path, array, meta)
        except OSError as e:
            warn(
                f"could not write the dataset cache {path} ({e.strerror or e}); continuing "
                "without it: the next run builds it again"
            )
        if what:
            took = time.monotonic() - started
            say(f"built {what} in {took:.1f} s ({array.nbytes / 1e6:.1f} MB)")
        return array, meta
    finally:
        lock.release()


def cached_selection(
    folder: Path, source: str, names: list[str], build: Callable[[], np.ndarray]
) -> np.ndarray:
    """``build()``, a selection of ``source``'s classes (a split, in the order of ``names``),
    cached as an entry of its own: every process on a machine then maps one file (the page
    cache holds it once) instead of holding a copy, e.g. the N processes of a data-parallel run.
    """
    key = hashlib.sha256(json.dumps([source, names]).encode()).hexdigest()[:16]
    path = folder / f"selection-{key}.npy"
    accept = lambda array, meta: meta.get("names") == names  # noqa: E731
    array = cached(path, lambda: (build(), {"source": source, "names": names}), accept)[0]
    if not isinstance(array, np.memmap) and _record_path(path).is_file():
        # Built just now (and written, its digest taken): map the file, as other processes will.
        array = np.load(path, mmap_mode="c", allow_pickle=False)
    return array
