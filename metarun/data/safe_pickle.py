"""Reading dataset pickles without letting them run code.

A pickle names the functions that rebuild its objects, and ``pickle.load`` calls them: a
downloaded ``.pkl`` can run anything. The datasets we read as pickles (miniImageNet's caches,
CIFAR-100's python batches) hold only dicts, lists, strings, bytes, numbers and numpy arrays, so
the unpickler here resolves only the few numpy names those need and refuses every other one
before it is called.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any, BinaryIO

from metarun.errors import MetarunError

# (module, name) pairs a numpy array or dtype pickle refers to (numpy 1 and 2 spell the module
# differently), OrderedDict, which some writers use for the class dictionary, and
# _codecs.encode, which protocol-2 pickles written by Python 3 use to rebuild bytes from text.
ALLOWED = {
    (module, name)
    for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name in ("_reconstruct", "scalar")
} | {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: BinaryIO, source: str, encoding: str) -> None:
        super().__init__(file, encoding=encoding)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in ALLOWED:
            return super().find_class(module, name)
        raise MetarunError(
            f"{self.source} asks to run {module}.{name} while unpickling; a dataset file holds "
            "only arrays and plain containers, so it was refused (the file is not what it "
            "claims to be: delete it and get it from a source you trust)"
        )


def looks_like_html(head: bytes) -> bool:
    """True for the start of an HTML page (a login or virus-scan page saved as the file)."""
    text = head.lstrip()[:256].lower()
    return text.startswith((b"<!doctype html", b"<html", b"<head", b"<?xml")) or b"<html" in text


def load_pickle(data: bytes | BinaryIO | Path, source: str, encoding: str = "ASCII") -> Any:
    """Unpickle ``data`` (bytes, a binary file or a path) admitting only arrays and containers.

    ``source`` names the file in error messages. ``encoding`` is for Python 2 pickles
    (CIFAR-100's batches need ``"latin1"``)."""
    if isinstance(data, Path):
        with open(data, "rb") as f:
            return load_pickle(f, source, encoding)
    file = io.BytesIO(data) if isinstance(data, bytes) else data
    head = file.read(512)
    file.seek(-len(head), io.SEEK_CUR)
    if looks_like_html(head):
        raise MetarunError(
            f"{source} is an HTML page, not the dataset file (a download that returned a "
            "login or virus-scan page); download the file itself"
        )
    try:
        return _RestrictedUnpickler(file, source, encoding).load()
    except MetarunError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise MetarunError(
            f"{source} is not a readable pickle ({type(e).__name__}: {str(e)[:120]}); it may be "
            "truncated: delete it and get it again"
        ) from None
