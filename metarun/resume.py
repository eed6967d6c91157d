"""Continuing a run: its last checkpoint, checked against the config before anything is written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from hydra.utils import get_class
from omegaconf import OmegaConf

from metarun.checkpoint import load_checkpoint
from metarun.errors import MetarunError
from metarun.logging.local import read_metrics
from metarun.schemas import MetarunConfig, schema_for

# Config sections that must match for a checkpoint to be continued (they shape the model, the
# data or the random streams); train.steps, logging and the device may change.
RESUME_MUST_MATCH = ("algo", "backbone", "dataset", "task", "seed", "checkpoint")


_ABSENT = object()


def _schema_defaults(config: dict) -> dict:
    """The schema defaults of the run's ``algo``, ``dataset`` and ``backbone`` and of the root
    sections, as plain data by section."""
    out = _plain(OmegaConf.structured(MetarunConfig))
    for group in ("algo", "dataset", "backbone"):
        target = (config.get(group) or {}).get("_target_")
        schema = schema_for(group, target) if isinstance(target, str) else None
        out[group] = _plain(OmegaConf.structured(schema)) if schema is not None else {}
    return out


def _plain(node) -> dict:
    return OmegaConf.to_container(node, resolve=False, enum_to_str=True)


def _differences(a: Any, b: Any, default: Any = _ABSENT, prefix: str = "") -> list[str]:
    """Dotted keys where ``a`` (the checkpoint's config) and ``b`` (this run's) differ.

    An option the checkpoint lacks was added to metarun after it was written; every option is
    added with a default that reproduces what metarun did before it existed (the rule for
    contributors, docs/architecture.md), so the run may keep it at its schema ``default``."""
    if isinstance(a, dict) and isinstance(b, dict):
        default = default if isinstance(default, dict) else {}
        return [
            d
            for k in sorted(set(a) | set(b))
            for d in _differences(
                a.get(k, _ABSENT), b.get(k, _ABSENT), default.get(k, _ABSENT), f"{prefix}{k}."
            )
        ]
    if a is _ABSENT and default is not _ABSENT and b == default:
        return []
    return [] if a == b else [prefix.rstrip(".")]


def _as_renamed(saved: dict, config: dict) -> dict:
    """``saved`` with its algorithm class named as this run names it, when this run's class
    declares that it ``replaces`` the saved one (FOMAML, ANIL, Meta-SGD and MAML++ were
    ``metarun.algorithms.MAML`` with options before they had classes of their own; the options
    are still compared)."""
    old, new = (saved.get("algo") or {}).get("_target_"), (config.get("algo") or {}).get("_target_")
    if old == new or old not in getattr(get_class(new), "replaces", ()):  # new: already built
        return saved
    return {**saved, "algo": {**saved["algo"], "_target_": new}}


# What a checkpoint must hold for a run to continue from it (checkpoints written by metarun do).
RESUME_KEYS = ("optimizer", "scheduler", "rng", "loop")
LOOP_KEYS = {"sums", "count", "best_value", "best_step"}  # the loop's own state in "loop"


def resume_checkpoint(config: dict, run_dir: Path, device: torch.device) -> dict:
    """``run_dir``'s last checkpoint, checked against ``config``, with the best weights of the
    run (``best_model``) when it validated. Reads only: a refusal leaves the folder as it was."""
    path = run_dir / "checkpoints" / "last.pt"
    checkpoint = load_checkpoint(path)
    missing = [k for k in RESUME_KEYS if k not in checkpoint]
    loop = checkpoint.get("loop")
    if not missing and (not isinstance(loop, dict) or not LOOP_KEYS <= set(loop)):
        missing = ["loop." + k for k in sorted(LOOP_KEYS - set(loop or {}))] or ["loop"]
    if missing:
        raise MetarunError(
            f"cannot resume {run_dir}: {path} lacks {', '.join(missing)} (written by another "
            "tool, or only weights); start a new run from its weights with "
            f"train.init_from={path}"
        )
    defaults = _schema_defaults(config)
    saved = _as_renamed(checkpoint["config"], config)
    changed = [
        d
        for key in RESUME_MUST_MATCH
        for d in _differences(saved.get(key), config.get(key), defaults.get(key), f"{key}.")
    ]
    if changed:
        raise MetarunError(
            f"cannot resume {run_dir}: the config differs from the checkpoint's in "
            f"{', '.join(changed)}; resume with the run's original overrides (see its "
            ".hydra/overrides.yaml)"
        )
    if loop["best_step"] is not None:  # the meta-test at the end needs the best weights
        best_path = run_dir / "checkpoints" / "best.pt"
        if not best_path.is_file():
            raise MetarunError(
                f"cannot resume {run_dir}: {best_path} (the best weights, step "
                f"{loop['best_step']}, which the meta-test uses) is missing; restore it, or start "
                f"a new run from the last weights with train.init_from={path}"
            )
        checkpoint["best_model"] = load_checkpoint(best_path, device)["model"]
    read_metrics(run_dir / "metrics.jsonl")  # the resumed run rewrites it: it must be readable
    return checkpoint
