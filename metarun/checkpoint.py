"""Checkpoints written atomically (temporary file, fsync, rename) with the config inside.

A checkpoint holds everything needed to continue a run exactly: model, optimizer, scheduler, the
step, every random-number state (python, numpy, torch, the task sampler's generator), the loop's
partial metric sums and its best-so-far record, and the resolved config.
"""

from __future__ import annotations

import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metarun.atomic import atomic_write
from metarun.errors import MetarunError


def rng_state(sampler: torch.Generator) -> dict[str, Any]:
    """Every random state a run draws from, in types ``weights_only`` loading accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
        "torch": torch.get_rng_state(),
        "sampler": sampler.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], sampler: torch.Generator) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    sampler.set_state(state["sampler"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, **content: Any) -> None:
    """Write ``content`` (``step``, ``model``, ``optimizer``, ``config``, ...) atomically."""
    atomic_write(path, lambda f: torch.save(content, f))


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint without unpickling arbitrary objects (``weights_only=True``)."""
    if not path.is_file():
        raise MetarunError(f"no checkpoint at {path}; check the path")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive
        raise MetarunError(
            f"{path} is not a checkpoint file (truncated, or not written by metarun); use "
            "another checkpoint (best.pt or last.pt of the run)"
        )
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
        raise MetarunError(
            f"{path} is not a readable metarun checkpoint ({str(e).splitlines()[0][:160]}); "
            "use another checkpoint (best.pt or last.pt of the run)"
        ) from None
    if not isinstance(checkpoint, dict) or not {"config", "model", "step"} <= set(checkpoint):
        raise MetarunError(
            f"{path} is a PyTorch file but not a metarun checkpoint (no config, model and step)"
        )
    kinds = {"config": dict, "model": dict, "step": int}
    wrong = [k for k, kind in kinds.items() if not isinstance(checkpoint[k], kind)]
    if not wrong:
        model = checkpoint["model"]
        wrong = [f"model.{k}" for k, v in model.items() if not isinstance(v, torch.Tensor)]
    if wrong:
        raise MetarunError(
            f"{path} is a PyTorch file but not a metarun checkpoint ({wrong[0]} is not what "
            "metarun writes there); use another checkpoint (best.pt or last.pt of the run)"
        )
    return checkpoint


def check_weights(model: torch.nn.Module, checkpoint: dict, source: str) -> None:
    """Say in one line which weights of ``checkpoint["model"]`` do not fit ``model`` (names and
    shapes), if any."""
    own, theirs = model.state_dict(), checkpoint["model"]
    problems = [f"{k} missing" for k in sorted(set(own) - set(theirs))]
    problems += [f"{k} not in this model" for k in sorted(set(theirs) - set(own))]
    problems += [
        f"{k} is {tuple(theirs[k].shape)}, not {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(theirs))
        if theirs[k].shape != own[k].shape
    ]
    if problems:
        config = checkpoint.get("config", {})
        algo = config.get("algo", {}).get("_target_", "?").rsplit(".", 1)[-1]
        more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise MetarunError(
            f"{source}: its weights ({algo}, step {checkpoint.get('step', '?')}) do not fit this "
            f"model ({'; '.join(problems[:3])}{more}); use a checkpoint of the same algo and "
            "backbone options"
        )


def load_model_state(model: torch.nn.Module, checkpoint: dict, source: str) -> None:
    """Load ``checkpoint["model"]`` into ``model`` once :func:`check_weights` found it fits
    (weights the model declares ``training_only`` and lacks, left out)."""
    drop, own = tuple(getattr(model, "training_only", ())), model.state_dict()
    if drop:
        kept = {k: v for k, v in checkpoint["model"].items() if k in own or not k.startswith(drop)}
        checkpoint = {**checkpoint, "model": kept}
    check_weights(model, checkpoint, source)
    model.load_state_dict(checkpoint["model"])


def remove_partial_writes(folder: Path) -> list[Path]:
    """Delete temporary files a killed checkpoint write left (never read: last.pt is intact)."""
    leftovers = sorted(folder.glob(".*.pt.*.tmp")) if folder.is_dir() else []
    for path in leftovers:
        path.unlink(missing_ok=True)
    return leftovers


def load_weights(model: torch.nn.Module, source: str | Path) -> tuple[Path, int, str]:
    """Copy the model weights of another run's checkpoint into ``model`` (``train.init_from``).

    ``source`` is a checkpoint file or a run folder (its ``checkpoints/best.pt``). Only the
    weights: this run's optimizer, schedule, step and random streams start afresh. A checkpoint
    of the same algorithm gives every weight; one of another algorithm (pre-training, then
    ProtoNet: P>M>F) gives its backbone (:func:`load_backbone`). Returns the file read, the step
    it was written at and what was taken, in words."""
    path = Path(source).expanduser()
    if path.is_dir():
        path = path / "checkpoints" / "best.pt"
    try:
        checkpoint = load_checkpoint(path)
    except MetarunError as e:
        raise MetarunError(f"train.init_from={source}: {e}") from None
    if _algorithm(checkpoint) == type(model).__name__:
        load_model_state(model, checkpoint, f"train.init_from={source}")
        return path, int(checkpoint["step"]), "all weights"
    return (
        path,
        int(checkpoint["step"]),
        load_backbone(model, checkpoint, f"train.init_from={source}"),
    )


def _algorithm(checkpoint: dict) -> str:
    return str(checkpoint.get("config", {}).get("algo", {}).get("_target_", "?")).rsplit(".")[-1]


#: The part of a backbone that belongs to the algorithm using it, not to its features: MAML's
#: output layer, sized by the way; a backbone from another algorithm's run may lack it.
OUTPUT_LAYER = "backbone.head."


def load_backbone(model: torch.nn.Module, checkpoint: dict, source: str) -> str:
    """Copy the backbone weights (``backbone.*``) of another algorithm's checkpoint into
    ``model``; the feature weights must all be there with their shapes, an output layer
    (:data:`OUTPUT_LAYER`) and the algorithm's own weights start fresh where the checkpoint has
    none. Returns what was taken and what was not, in words."""
    own, theirs = model.state_dict(), checkpoint["model"]
    wanted = [k for k in own if k.startswith("backbone.")]
    given = {k: v for k, v in theirs.items() if k.startswith("backbone.")}
    fresh = [k for k in wanted if k not in given]
    problems = [f"{k} missing" for k in fresh if not k.startswith(OUTPUT_LAYER)]
    taken = [k for k in wanted if k in given]
    problems += [
        f"{k} is {tuple(given[k].shape)}, not {tuple(own[k].shape)}"
        for k in taken
        if given[k].shape != own[k].shape and not k.startswith(OUTPUT_LAYER)
    ]
    if problems or not taken:
        more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
        why = "; ".join(problems[:3]) + more if problems else "it has no backbone weights"
        raise MetarunError(
            f"{source}: its backbone ({_algorithm(checkpoint)}, step {checkpoint['step']}) does "
            f"not fit this model's ({why}); use a checkpoint of the same backbone and dataset"
        )
    resized = [k for k in taken if given[k].shape != own[k].shape]  # an output layer of another way
    state = dict(own)
    state.update({k: given[k] for k in taken if k not in resized})
    model.load_state_dict(state)
    unused = sorted({k.split(".")[0] for k in theirs if not k.startswith("backbone.")})
    new = sorted({k.rsplit(".", 1)[0] for k in fresh + resized} | _own_parts(own))
    note = f"the backbone of a {_algorithm(checkpoint)} checkpoint"
    if new:
        note += f"; new: {', '.join(new)}"
    if unused:
        note += f"; not used: {', '.join(unused)}"
    return note


def _own_parts(state: dict) -> set[str]:
    """The learner's own weights outside its backbone (ProtoNet's scale, Meta-SGD's steps)."""
    return {k.split(".")[0] for k in state if not k.startswith("backbone.")}
