"""Using trained models: ``metarun-eval`` and ``metarun-predict``.

Both take ``key=value`` arguments like ``metarun``: ``checkpoint=PATH`` (a ``best.pt`` or
``last.pt``) plus config overrides applied on top of the configuration saved in the checkpoint.
"""

from __future__ import annotations

import csv
import io
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
from hydra.utils import get_class
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from rich.console import Console
from rich.table import Table

from metarun.atomic import atomic_write
from metarun.checkpoint import load_checkpoint, load_model_state
from metarun.device import resolve_device
from metarun.errors import MetarunError, print_line, warn
from metarun.experiment import (
    Experiment,
    build,
    build_experiment,
    check_config,
    meta_test,
    seed_everything,
)
from metarun.images import images_in, load_image
from metarun.schemas import MetarunConfig, schema_for
from metarun.usage import USAGE


def _parse(argv: list[str], tool: str, special: dict[str, bool]) -> tuple[dict, list[str]]:
    """Split ``key=value`` args into the tool's own keys and config overrides."""
    own, overrides = {}, []
    for arg in argv:
        if "=" not in arg:
            raise MetarunError(f"{tool} takes key=value arguments, got {arg!r}")
        key, value = arg.split("=", 1)
        if key in special:
            own[key] = value
        else:
            overrides.append(arg)
    missing = [k for k, required in special.items() if required and k not in own]
    if missing:
        raise MetarunError(f"{tool} needs {' '.join(f'{k}=...' for k in missing)}")
    return own, overrides


def checkpoint_config(checkpoint: dict, overrides: list[str]):
    """The checkpoint's config under the schema with the overrides, checked as a run's is,
    evaluated on any available device."""
    try:
        saved = _under_schemas(checkpoint["config"])
        cfg = OmegaConf.merge(OmegaConf.structured(MetarunConfig), saved)
        cfg.device.name = "auto"
        cfg.resume = False
        cfg.train.init_from = None  # the checkpoint's own weights are loaded, not its start
        # Closed to new keys: an override the saved algo/dataset/backbone lacks is a typo.
        OmegaConf.set_struct(cfg, True)
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))
    except OmegaConfBaseException as e:
        where = f"{e.full_key}: " if getattr(e, "full_key", None) else ""
        raise MetarunError(
            f"bad override: {where}{str(e).splitlines()[0]} (keys must exist in the checkpoint's "
            "config, see its .hydra/config.yaml)"
        ) from None
    check_config(cfg)  # the overrides' values, as metarun checks a run's (predict builds no run)
    return cfg


def _under_schemas(config: dict) -> dict:
    """The saved ``algo``, ``dataset`` and ``backbone`` under their group's schema (types and
    value checks apply to overrides, as in a run); a section no schema fits stays as saved."""
    out = dict(config)
    for group in ("algo", "dataset", "backbone"):
        section = config.get(group)
        schema = schema_for(group, section.get("_target_")) if isinstance(section, dict) else None
        if schema is not None:
            try:
                out[group] = OmegaConf.merge(OmegaConf.structured(schema), section)
            except OmegaConfBaseException:  # an older checkpoint's keys: keep it untyped
                pass
    return out


def checkpoint_file(value: str) -> Path:
    """``checkpoint=``: a checkpoint file, or a run folder (its ``checkpoints/best.pt``)."""
    path = Path(value).expanduser()
    return path / "checkpoints" / "best.pt" if path.is_dir() else path


def _run_tool(fn, argv, tool: str) -> None:
    args = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in args):
        print(USAGE[tool])
        return
    if not args:
        print_line(USAGE[tool])
        sys.exit(2)
    try:
        fn(args)
    except MetarunError as e:
        print_line(f"{tool}: error: {e}")
        sys.exit(2)


def load_trained(path: Path, overrides: list[str]) -> Experiment:
    """The experiment of checkpoint ``path`` (its config plus ``overrides``) with its weights,
    built for testing."""
    checkpoint = load_checkpoint(path)
    cfg = checkpoint_config(checkpoint, overrides)
    exp = build_experiment(cfg, run_dir=path.parent.parent, splits=("test",))
    load_model_state(exp.learner, checkpoint, str(path))
    return exp


def evaluate_checkpoint(argv: list[str]) -> dict[str, float]:
    own, overrides = _parse(argv, "metarun-eval", {"checkpoint": True})
    path = checkpoint_file(own["checkpoint"])
    exp = load_trained(path, overrides)
    scores = meta_test(exp)
    shape = exp.eval_shape
    console = Console()
    console.print(
        f"{path}: {exp.cfg.test.episodes} test episodes, {shape.way}-way {shape.shot}-shot,"
        f" {shape.query} queries per class",
        soft_wrap=True,
    )
    table = Table()
    table.add_column("metric")
    table.add_column("mean ± 95% CI", justify="right")
    for key, value in scores.items():
        if not key.endswith("_ci95"):
            table.add_row(key, f"{value:.4f} ± {scores[key + '_ci95']:.4f}")
    console.print(table)
    return scores


def _output_path(value: str) -> Path:
    """``out=``: checked before any work, so a bad path never costs the predictions."""
    out = Path(value).expanduser()
    if out.is_dir():
        raise MetarunError(f"out={value} is a folder; give a file name, e.g. out={out}/p.csv")
    if not out.parent.is_dir():
        raise MetarunError(
            f"out={value}: the folder {out.parent} does not exist; create it or choose another path"
        )
    if not os.access(out.parent, os.W_OK):
        raise MetarunError(f"out={value}: the folder {out.parent} is not writable")
    return out


def predict(argv: list[str]) -> list[dict]:
    own, overrides = _parse(
        argv, "metarun-predict", {"checkpoint": True, "support": True, "query": True, "out": False}
    )
    out = _output_path(own.get("out", "predictions.csv"))
    checkpoint = load_checkpoint(checkpoint_file(own["checkpoint"]))
    preprocess = checkpoint.get("data", {}).get("preprocess")
    if not preprocess:
        raise MetarunError(
            "this checkpoint's dataset has no image preprocessing to apply "
            "(regression, or written by an older metarun); predict needs images"
        )
    cfg = checkpoint_config(checkpoint, overrides)
    support_dir, query_dir = Path(own["support"]), Path(own["query"])
    classes = (
        sorted(p.name for p in support_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
        if (support_dir.is_dir())
        else []
    )
    if len(classes) < 2:
        raise MetarunError(f"support={support_dir} needs one sub-folder per class (two or more)")
    support = [
        (load_image(f, preprocess), c)
        for c, name in enumerate(classes)
        for f in images_in(support_dir / name)
    ]
    queries = images_in(query_dir) if query_dir.is_dir() else []
    if not queries:
        raise MetarunError(f"query={query_dir} holds no images")
    nested = sum(1 for q in queries if q.parent != query_dir)
    if nested:
        warn(
            f"query={query_dir}: {nested} of the {len(queries)} images are in sub-folders; "
            "all are predicted (the file column has their paths)"
        )
    empty = [name for name in classes if not images_in(support_dir / name)]
    if empty:
        raise MetarunError(f"support classes without images: {', '.join(empty)}")

    seed_everything(cfg.seed)
    device = resolve_device(cfg.device.name)
    algo_cls = get_class(cfg.algo._target_)
    images = SimpleNamespace(problem="classification", output_size=lambda way: way)
    out_features = algo_cls.output_size(images, cfg.task.train_way or cfg.task.way)
    if out_features is not None and out_features != len(classes):
        raise MetarunError(
            f"this {algo_cls.__name__} model was trained {out_features}-way, so "
            f"support needs {out_features} class folders (found {len(classes)})"
        )
    backbone = build(
        cfg.backbone, input_shape=checkpoint["data"]["input_shape"], out_features=out_features
    )
    learner = build(cfg.algo, backbone=backbone)
    load_model_state(learner, checkpoint, own["checkpoint"])
    learner.to(device).eval()
    support_x = torch.stack([x for x, _ in support]).to(device)
    support_y = torch.tensor([c for _, c in support], device=device)
    query_x = torch.stack([load_image(f, preprocess) for f in queries]).to(device)
    probs = learner.predict(support_x, support_y, query_x).softmax(-1).cpu()

    rows = [
        {
            "file": str(f),
            "predicted": classes[int(p.argmax())],
            **{f"p({name})": round(float(v), 4) for name, v in zip(classes, p)},
        }
        for f, p in zip(queries, probs)
    ]
    table = Table(
        title=f"{len(queries)} queries, {len(classes)} classes, {len(support)} support images"
    )
    for column in rows[0]:
        table.add_column(column)
    for row in rows:
        table.add_row(*(str(v) for v in row.values()))
    Console().print(table)
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    try:
        atomic_write(out, lambda f: f.write(text.getvalue().encode()))
    except OSError as e:
        raise MetarunError(f"could not write {out} ({e.strerror or e}); nothing was written") from e
    print(f"wrote {out}")
    return rows


def eval_main(argv: list[str] | None = None) -> None:
    """``metarun-eval checkpoint=PATH [overrides]``: mean ± 95% CI on fixed test episodes."""
    _run_tool(evaluate_checkpoint, argv, "metarun-eval")


def predict_main(argv: list[str] | None = None) -> None:
    """``metarun-predict checkpoint=PATH support=DIR query=DIR [out=FILE.csv]``."""
    _run_tool(predict, argv, "metarun-predict")
