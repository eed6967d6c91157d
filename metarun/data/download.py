"""Where dataset files live, and fetching them safely.

Archives are looked for in ``dataset.root`` and then in metarun's cache directory
(``$METARUN_CACHE_DIR``, else the platform's user cache dir, e.g. ``~/.cache/metarun``). Downloads
go through pooch: written to a temporary name, md5-verified, then renamed, so no half-written
file is ever left under the final name. A file lock makes concurrent sweep jobs take turns.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import zipfile
from pathlib import Path

from filelock import FileLock

from metarun.errors import MetarunError

CACHE_ENV = "METARUN_CACHE_DIR"


def cache_dir() -> Path:
    """metarun's own cache folder (downloads when the root is read-only, decoded arrays)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("metarun", appauthor=False))


def is_writable(folder: Path) -> bool:
    """True if ``folder`` (or, when it does not exist yet, the nearest folder above it that does)
    may be written to. Nothing is created: a run that fails leaves no empty folders behind.

    A folder without write permission bits counts as read-only even for root, who could write
    there anyway: a data folder someone made read-only is not ours to fill.
    """
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return False
    return bool(existing.stat().st_mode & 0o222) and os.access(existing, os.W_OK | os.X_OK)


def writable_dir(root: Path, sub: str) -> Path:
    """``root/sub`` where ``root`` is writable, else the same folder under :func:`cache_dir`."""
    for base in (root, cache_dir()):
        if is_writable(base / sub):
            return base / sub
    raise MetarunError(
        f"neither {root / sub} nor {cache_dir() / sub} is writable; set {CACHE_ENV} to a "
        "writable folder"
    )


def md5sum(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class _RichBar:
    """pooch's progress-bar protocol (total, update, reset, close) drawn with rich."""

    def __init__(self, label: str) -> None:
        from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

        self._progress = Progress(
            *Progress.get_default_columns(), DownloadColumn(), TransferSpeedColumn(), transient=True
        )
        self._task = self._progress.add_task(label, total=None)
        self._progress.start()
        self.total = None

    def update(self, n: int) -> None:
        self._progress.update(self._task, advance=n, total=self.total)

    def reset(self) -> None:
        self._progress.reset(self._task, total=self.total)

    def close(self) -> None:
        self._progress.stop()


class DownloadFailed(MetarunError):
    """A file could not be downloaded (no network, a refused URL): the dataset can say what
    else its user can do."""


def searched(root: Path) -> str:
    """Where a dataset file is looked for: ``root``, and the cache when it is another folder."""
    cache = cache_dir()
    return f"{root}" if root.resolve() == cache.resolve() else f"{root} (nor in {cache})"


def fetch(name: str, url: str, md5: str, root: Path, download: bool) -> Path:
    """Path of the verified file ``name``: found in ``root`` or the cache, or downloaded.

    A present file with the wrong checksum is downloaded again once; a download that still does
    not match fails with a message naming the file.
    """
    if root.exists() and not root.is_dir():
        raise MetarunError(f"dataset.root={root} is a file, not a folder; give the folder")
    candidates = [root / name, cache_dir() / name]
    for path in candidates:
        if path.is_file() and md5sum(path) == md5:
            return path
    present = [p for p in candidates if p.is_file()]
    if not download:
        if present:
            raise MetarunError(
                f"{present[0]} has the wrong md5 checksum (expected {md5}); replace it with the "
                f"official file from {url} or set dataset.download=true"
            )
        raise MetarunError(
            f"{name} was not found in {searched(root)} and dataset.download=false; "
            f"put the file there (from {url}) or set dataset.download=true"
        )
    folder = root if is_writable(root) else cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    with FileLock(str(folder / f".{name}.lock")):
        if target.is_file() and md5sum(target) == md5:  # another job fetched it meanwhile
            return target
        _download(url, md5, target)
    return target


def _download(url: str, md5: str, target: Path) -> None:
    import pooch
    import requests

    pooch.get_logger().setLevel("WARNING")  # our own progress bar says what is happening
    try:
        pooch.retrieve(
            url,
            known_hash=f"md5:{md5}",
            fname=target.name,
            path=target.parent,
            progressbar=_RichBar(f"downloading {target.name}"),
        )
    except ValueError as e:  # pooch: the downloaded bytes do not match the known hash
        raise MetarunError(
            f"downloaded {target.name} from {url} but its md5 checksum does not match {md5} "
            "(a changed or broken mirror, or a proxy page); nothing was kept"
        ) from e
    except OSError as e:
        if e.errno is None:  # requests' connection errors are OSErrors without an errno
            raise DownloadFailed(
                f"could not download {target.name} from {url} ({type(e).__name__}); check the "
                f"network, or download it by hand into {target.parent}"
            ) from e
        raise MetarunError(
            f"could not write {target.name} into {target.parent} ({e.strerror}); free space "
            f"there or point dataset.root (or ${CACHE_ENV}) at another folder"
        ) from e
    except requests.RequestException as e:
        raise DownloadFailed(
            f"could not download {target.name} from {url} ({type(e).__name__}); check the "
            f"network, or download it by hand into {target.parent}"
        ) from e


def extract(archive: Path, dest: Path) -> None:
    """Unpack a .tar(.gz) or .zip into ``dest`` once (a marker file remembers it), refusing any
    member that would land outside ``dest`` (absolute paths, ``..``, links out of it)."""
    marker = dest / f".{archive.name}.extracted"
    if marker.is_file():
        return
    dest = dest.resolve()
    try:
        if archive.name.endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                for name in zf.namelist():
                    if not (dest / name).resolve().is_relative_to(dest):
                        raise MetarunError(
                            f"{archive.name} holds the member {name!r}, which points outside "
                            f"{dest}; refusing to unpack it"
                        )
                zf.extractall(dest)
        else:
            with tarfile.open(archive) as tar:
                tar.extractall(dest, filter="data")  # refuses absolute paths, .., unsafe links
    except (tarfile.TarError, zipfile.BadZipFile) as e:
        message = str(e)
        raise MetarunError(
            f"{archive} could not be unpacked ({type(e).__name__}: {message[:160]}); delete it "
            "and download it again"
        ) from None
    marker.touch()
