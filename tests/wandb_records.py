"""Reads an offline W&B transaction log (``run-<id>.wandb``) so tests can see what was logged.

The file is a 7-byte header (``:W&B``, magic 0xBEE1, version) followed by LevelDB-log framed
records (4-byte CRC, 2-byte length, 1-byte type, in 32 KiB blocks), each a serialized
``wandb.proto.wandb_internal_pb2.Record``.
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK, HEADER = 32768, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: Path, timeout: float = 30.0) -> list[wandb_internal_pb2.Record]:
    """The records of a finished run's log, once W&B's service has written all of them.

    ``run.finish()`` returns before the service process has necessarily flushed the log (seen
    in CI for a run made in the test's own process, where the service outlives the run); the
    log is complete once its ``exit`` record is there, so wait for that, up to ``timeout``.
    """
    deadline = time.monotonic() + timeout
    while True:
        records = _parse(path)
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            return records
        assert time.monotonic() < deadline, f"{path} has no exit record after {timeout} s"
        time.sleep(0.1)


def _parse(path: Path) -> list[wandb_internal_pb2.Record]:
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    records, pending, pos = [], b"", HEADER
    while pos + HEADER <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < HEADER:  # block trailer padding
            pos += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if kind == 0 and length == 0:
            pos += left_in_block
            continue
        if pos + HEADER + length > len(data):  # a record still being written
            break
        chunk = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind in (FULL, FIRST):
            pending = chunk
        else:
            pending += chunk
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def logged_history(path: Path) -> list[dict]:
    """Every ``wandb.log`` call as a dict of key -> value (``_step`` included)."""
    rows = []
    for record in read_records(path):
        if record.WhichOneof("record_type") == "history":
            key = lambda item: item.key or "/".join(item.nested_key)  # noqa: E731
            rows.append({key(item): json.loads(item.value_json) for item in record.history.item})
    return rows


def run_summary(path: Path) -> dict:
    summary = {}
    for record in read_records(path):
        if record.WhichOneof("record_type") == "summary":
            for item in record.summary.update:
                summary[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return summary


def run_config(path: Path) -> dict:
    """The run's config as logged at init (top-level keys -> values)."""
    return {item.key: json.loads(item.value_json) for item in run_info(path).config.update}


def run_info(path: Path) -> wandb_internal_pb2.RunRecord:
    for record in read_records(path):
        if record.WhichOneof("record_type") == "run":
            return record.run
    raise AssertionError(f"no run record in {path}")
