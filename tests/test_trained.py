"""metarun-eval and metarun-predict on checkpoints of real (tiny) runs."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from metarun import predict as predicting
from metarun import trained
from metarun.data import Glyphs
from metarun.errors import MetarunError
from tests.conftest import GLYPHS_SMALL, TINY

# TINY without its MAML-only key; MAML runs add it back.
GLYPH_RUN = [
    "dataset=glyphs",
    *GLYPHS_SMALL,
    *(o for o in TINY if not o.startswith("algo.")),
    "logger=none",
    "task.query=4",
    "task.meta_batch=2",
    "backbone.hidden=16",
    "train.steps=30",
]

ALGO = {
    "protonet": ["algo=protonet"],
    "maml": ["algo=maml", "algo.eval_inner_steps=2"],
    # A conv encoder (the runs below set backbone.hidden), so MANN with batch norm is covered too.
    "mann": [
        "algo=mann",
        "backbone=conv4",
        "task.query=0",
        "task.shot=4",
        "algo.controller_size=16",
    ],
    "pretrain": ["algo=pretrain", "algo.batch_size=16"],
}


@pytest.mark.parametrize("algo", ["protonet", "maml", "mann", "pretrain"])
def test_eval_reproduces_the_runs_test_result_and_accepts_new_shots(run_inprocess, algo):
    run_dir, _ = run_inprocess([*GLYPH_RUN, *ALGO[algo], "task.train_way=null"])
    summary = json.loads((run_dir / "summary.json").read_text())
    best = str(run_dir / "checkpoints" / "best.pt")
    same = trained.evaluate_checkpoint([f"checkpoint={best}"])
    for key in summary:
        if key.startswith("test/acc"):  # MANN's test/acc_inst<i> too
            assert same[key] == pytest.approx(summary[key]), key
    more = trained.evaluate_checkpoint([f"checkpoint={best}", "task.shot=3", "test.episodes=20"])
    with pytest.raises(MetarunError, match="bad override: .*algo.inner_lrr"):
        trained.evaluate_checkpoint([f"checkpoint={best}", "algo.inner_lrr=0.1"])
    assert 0 <= more["test/acc"] <= 1 and more["test/acc_ci95"] > 0


def test_eval_describes_a_regression_checkpoints_episodes_without_classes(run_inprocess, capsys):
    run_dir, _ = run_inprocess(["logger=none", "train.steps=4", "val.every=2", "test.episodes=5"])
    capsys.readouterr()
    trained.evaluate_checkpoint([f"checkpoint={run_dir}"])
    header = capsys.readouterr().out.splitlines()[0]
    assert header.endswith(": 5 test episodes, 10 support and 10 query points each"), header


def _write_folders(tmp_path, classes: int, shot: int) -> tuple:
    """Support/query folders of glyph images, saved dark-on-light like Omniglot's files; the
    queries as 3x larger RGB images (preprocessing brings them back to the model's input), and
    each class folder holds a stray non-image file (ignored)."""
    ds = Glyphs(classes=[40, 12, 12], samples_per_class=20)
    support, query = tmp_path / "support", tmp_path / "query"
    query.mkdir()
    for c in range(classes):
        (support / f"class{c}").mkdir(parents=True)
        (support / f"class{c}" / "notes.txt").write_text("not an image")
        for s in range(20):
            img = Image.fromarray(255 - ds.splits["test"][c, s, 0].numpy().astype(np.uint8))
            if s < shot:
                img.save(support / f"class{c}" / f"{s}.png")
            else:
                big = img.resize((84, 84), Image.Resampling.NEAREST).convert("RGB")
                big.save(query / f"class{c}__{s}.png")
    return support, query


@pytest.mark.parametrize("algo", ["protonet", "maml", "pretrain"])
def test_predict_classifies_new_images_into_a_csv(run_inprocess, tmp_path, algo):
    run_dir, _ = run_inprocess([*GLYPH_RUN, *ALGO[algo], "task.train_way=null", "train.steps=60"])
    support, query = _write_folders(tmp_path, classes=5, shot=2)
    out = tmp_path / "p.csv"
    rows = predicting.predict(
        [
            f"checkpoint={run_dir / 'checkpoints' / 'best.pt'}",
            f"support={support}",
            f"query={query}",
            f"out={out}",
        ]
    )
    table = list(csv.DictReader(out.open()))
    assert len(table) == len(rows) == 5 * 18
    for row in table:
        assert sum(float(row[f"p(class{c})"]) for c in range(5)) == pytest.approx(1, abs=1e-3)
    right = sum(r["file"].split("/")[-1].split("__")[0] == r["predicted"] for r in table)
    assert right / len(table) > 0.4  # chance: 0.2


def test_predict_prints_whole_names_that_fit_80_columns(run_inprocess, tmp_path, capsys):
    """The console table names each query by its path below the query folder and its predicted
    class, whole (long names fold onto a second line, nothing is cut), at 80 columns too."""
    run_dir, _ = run_inprocess(
        [*GLYPH_RUN, "algo=protonet", "task.train_way=null", "train.steps=2"]
    )
    support, query = _write_folders(tmp_path, classes=3, shot=1)
    long = {f"class{c}": f"Japanese_(hiragana)_character{c:02d}" for c in range(3)}
    for short, name in long.items():
        (support / short).rename(support / name)
    nested = query / "Japanese_(hiragana)" / "drawer_07"
    nested.mkdir(parents=True)
    for image in sorted(query.glob("class1__*.png")):
        image.rename(nested / image.name)
    out = tmp_path / "p.csv"
    args = [f"checkpoint={run_dir}", f"support={support}", f"query={query}", f"out={out}"]
    capsys.readouterr()  # the training run's own output
    rows = predicting.predict(args)
    printed = capsys.readouterr().out  # piped: a wide table
    assert f"wrote {out} (every class's probability for each query)" in printed
    narrow = Console(file=io.StringIO(), width=80, record=True)
    narrow.print(predicting.prediction_table(rows, query, 3))
    names = [str(Path(r["file"]).relative_to(query)) for r in rows]
    assert sum(n.startswith("Japanese_(hiragana)/drawer_07/class1__") for n in names) == 19
    shown = narrow.export_text()
    for text in (printed, shown):
        assert "…" not in text
        cells = [line.split("│")[1:3] for line in text.splitlines() if line.startswith("│")]
        # Column by column, the cells read back every name whole and in order (folded or not).
        assert "".join(c[0].strip() for c in cells) == "".join(names)
        assert "".join(c[1].strip() for c in cells) == "".join(r["predicted"] for r in rows)
    assert max(len(line) for line in shown.splitlines()) <= 80


def test_predict_with_a_mann_checkpoint_scores_only_the_support_classes(run_inprocess, tmp_path):
    run_dir, _ = run_inprocess([*GLYPH_RUN, *ALGO["mann"], "train.steps=4"])
    support, query = _write_folders(tmp_path, classes=3, shot=2)  # fewer than its 5 outputs
    out = tmp_path / "p.csv"
    best = run_dir / "checkpoints" / "best.pt"
    predicting.predict([f"checkpoint={best}", f"support={support}", f"query={query}", f"out={out}"])
    table = list(csv.DictReader(out.open()))
    assert len(table) == 3 * 18
    assert {r["predicted"] for r in table} <= {"class0", "class1", "class2"}
    for row in table:
        assert sum(float(row[f"p(class{c})"]) for c in range(3)) == pytest.approx(1, abs=1e-3)
    (tmp_path / "seven").mkdir()
    support7, _ = _write_folders(tmp_path / "seven", classes=7, shot=2)
    with pytest.raises(MetarunError, match="has 5 outputs .* the episode has 7 classes"):
        predicting.predict([f"checkpoint={best}", f"support={support7}", f"query={query}"])


def test_predict_explains_a_class_count_that_maml_cannot_use(run_inprocess, tmp_path):
    run_dir, _ = run_inprocess([*GLYPH_RUN, *ALGO["maml"], "task.train_way=null"])
    support, query = _write_folders(tmp_path, classes=3, shot=1)
    with pytest.raises(MetarunError, match="trained 5-way, so support needs 5 class folders"):
        predicting.predict(
            [
                f"checkpoint={run_dir / 'checkpoints' / 'best.pt'}",
                f"support={support}",
                f"query={query}",
            ]
        )
