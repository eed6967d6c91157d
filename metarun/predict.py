"""``metarun-predict``: classify new images with a trained model, given labelled examples.

``metarun-predict checkpoint=PATH support=DIR query=DIR [out=FILE.csv] [overrides]``: the
support folder holds one sub-folder of images per class; every image under the query folder is
classified. ``test.views=V`` (with ``test.view_warp.*``) adds test-time augmentation, as
``metarun-eval`` does: every support and query image also seen as ``V - 1`` warped views
(:mod:`metarun.views`). The model is built from its checkpoint by the same code as a run
(:func:`~metarun.trained.build_trained`), on a :class:`GivenImages` dataset of the support's shape.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import torch
from hydra.utils import get_class
from rich.table import Table
from rich.text import Text

from metarun.atomic import atomic_write
from metarun.checkpoint import load_checkpoint
from metarun.data.batch import TaskBatch
from metarun.errors import MetarunError, warn
from metarun.images import images_in, load_image
from metarun.trained import build_trained, checkpoint_config, checkpoint_file
from metarun.usage import parse_args, run_tool, tool_console
from metarun.views import Views


class GivenImages:
    """The images a user hands to ``metarun-predict``: a classification task of a known input
    shape, with no splits to sample from (the dataset interface :func:`build_experiment` needs)."""

    problem = "classification"

    def __init__(self, input_shape) -> None:
        self.input_shape = tuple(input_shape)

    def output_size(self, way: int) -> int:
        return way

    def check_shape(self, split: str, shape, what: str) -> None:
        pass  # the user's folders are the one task; their checks are predict's own


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
    own, overrides = parse_args(
        argv, "metarun-predict", {"checkpoint": True, "support": True, "query": True, "out": False}
    )
    out = _output_path(own.get("out", "predictions.csv"))
    path = checkpoint_file(own["checkpoint"])
    checkpoint = load_checkpoint(path)
    preprocess = image_preprocess(checkpoint)
    cfg = checkpoint_config(checkpoint, overrides)
    support_dir, query_dir = Path(own["support"]), Path(own["query"])
    classes = (
        sorted(p.name for p in support_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
        if (support_dir.is_dir())
        else []
    )
    if len(classes) < 2:
        raise MetarunError(f"support={support_dir} needs one sub-folder per class (two or more)")
    files = {name: images_in(support_dir / name) for name in classes}
    queries = images_in(query_dir) if query_dir.is_dir() else []
    if not queries:
        raise MetarunError(f"query={query_dir} holds no images")
    nested = sum(1 for q in queries if q.parent != query_dir)
    if nested:
        warn(
            f"query={query_dir}: {nested} of the {len(queries)} images are in sub-folders; "
            "all are predicted (the file column has their paths)"
        )
    empty = [name for name in classes if not files[name]]
    if empty:
        raise MetarunError(f"support classes without images: {', '.join(empty)}")
    support = [
        (load_image(f, preprocess), c) for c, name in enumerate(classes) for f in files[name]
    ]

    exp = image_model(path, checkpoint, cfg, len(classes), max(1, len(support) // len(classes)))
    support_x = torch.stack([x for x, _ in support])
    support_y = torch.tensor([c for _, c in support])
    query_x = torch.stack([load_image(f, preprocess) for f in queries])
    probs = class_probabilities(exp, support_x, support_y, query_x)

    rows = [
        {
            "file": str(f),
            "predicted": classes[int(p.argmax())],
            **{f"p({name})": round(float(v), 4) for name, v in zip(classes, p)},
        }
        for f, p in zip(queries, probs)
    ]
    tool_console().print(prediction_table(rows, query_dir, len(support)))
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    try:
        atomic_write(out, lambda f: f.write(text.getvalue().encode()))
    except OSError as e:
        raise MetarunError(f"could not write {out} ({e.strerror or e}); nothing was written") from e
    print(f"wrote {out} (every class's probability for each query)")
    return rows


def image_preprocess(checkpoint: dict) -> dict:
    """How the checkpoint's training images were made from files (size, mode, polarity)."""
    preprocess = checkpoint.get("data", {}).get("preprocess")
    if not preprocess:
        raise MetarunError(
            "this checkpoint's dataset has no image preprocessing to apply "
            "(regression, or written by an older metarun); predict needs images"
        )
    return preprocess


def image_model(path: Path, checkpoint: dict, cfg, way: int, shot: int, of="class folders"):
    """The checkpoint's model (its experiment, in eval mode) for ``way``-way ``shot``-shot
    tasks of a user's images (``of``: what the user gave as classes)."""
    dataset = GivenImages(checkpoint["data"]["input_shape"])
    algo_cls = get_class(cfg.algo._target_)
    out_features = algo_cls.output_size(dataset, cfg.task.train_way or cfg.task.way)
    if out_features is not None and out_features != way:
        raise MetarunError(
            f"this {algo_cls.__name__} model was trained {out_features}-way, so "
            f"support needs {out_features} {of} (found {way})"
        )
    cfg.task.way, cfg.task.shot = way, shot  # the task is the user's
    exp = build_trained(path, checkpoint, cfg, splits=(), dataset=dataset)
    exp.learner.eval()
    return exp


def class_probabilities(exp, support_x, support_y, query_x) -> torch.Tensor:
    """Class probabilities ``[Q, N]`` of one task's queries, with ``test.views`` when set."""
    device, learner = exp.device, exp.learner
    support_x, support_y, query_x = support_x.to(device), support_y.to(device), query_x.to(device)
    views = Views.of(exp.cfg.test, "test")
    with exp.precision.autocast():
        if views is None:
            return learner.predict(support_x, support_y, query_x).float().softmax(-1).cpu()
        unknown = torch.zeros(1, len(query_x), dtype=torch.long, device=device)  # no labels
        task = views.batch(TaskBatch(support_x[None], support_y[None], query_x[None], unknown), 0)
        return views.combine(learner.query_logits(task))[0].exp().cpu()


def prediction_table(rows: list[dict], query_dir: Path, support: int) -> Table:
    """Each query's path (below ``query_dir``), its predicted class and that class's
    probability; names are shown whole (a long one folds onto a second line, never cut), and the
    per-class probabilities are left to the CSV."""
    classes = [k for k in rows[0] if k.startswith("p(")]
    title = f"{len(rows)} queries, {len(classes)} classes, {support} support images"
    table = Table(title=title)
    table.add_column(f"file (in {query_dir})", overflow="fold")
    table.add_column("predicted", overflow="fold")
    table.add_column("p", justify="right", no_wrap=True)
    for row in rows:
        name, predicted = os.path.relpath(row["file"], query_dir), row["predicted"]
        table.add_row(Text(name), Text(predicted), f"{row[f'p({predicted})']:.3f}")
    return table


def predict_main(argv: list[str] | None = None) -> None:
    """``metarun-predict checkpoint=PATH support=DIR query=DIR [out=FILE.csv]``."""
    run_tool(predict, argv, "metarun-predict")
