"""Lake et al. (2015)'s 20 one-shot classification runs, in their official folder format.

``metarun-eval checkpoint=PATH runs=DIR``: ``DIR`` is the unzipped ``all_runs.zip`` of the
Omniglot repository (``python/one-shot-classification``): ``run01`` ... ``run20``, each with
``training/class01.png ...`` (one drawing of each of 20 characters of one evaluation alphabet),
``test/item01.png ...`` (20 drawings of the same characters by another person) and
``class_labels.txt``, one line per test image: ``runNN/test/itemKK.png runNN/training/classJJ.png``.
Each test image is classified among the run's 20 training images (a 20-way 1-shot task, the
test images its queries); a run's error is the percentage misclassified, and the score is the
mean over runs (people: 4.5%). ``test.views`` applies, as in ``metarun-predict``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from metarun.errors import MetarunError
from metarun.evaluate import mean_ci95
from metarun.images import load_image
from metarun.predict import class_probabilities, image_model, image_preprocess

LABELS = "class_labels.txt"


def _resolve(run: Path, name: str) -> Path:
    """A path of ``class_labels.txt``: relative to the runs' folder (the official files) or to
    the run's own."""
    for base in (run.parent, run):
        if (base / name).is_file():
            return base / name
    raise MetarunError(f"{run / LABELS} names {name}, which is not in {run.parent}; unzip it whole")


def read_run(run: Path) -> tuple[list[Path], list[Path], list[int]]:
    """A run's training images (sorted by name), test images and each test image's answer (its
    training image's position)."""
    lines = [line.split() for line in (run / LABELS).read_text().splitlines() if line.strip()]
    if not lines or any(len(pair) != 2 for pair in lines):
        raise MetarunError(
            f"{run / LABELS} must hold one 'test-image training-image' pair per line"
        )
    pairs = [(_resolve(run, test), _resolve(run, train)) for test, train in lines]
    training = sorted({train for _, train in pairs})
    return training, [test for test, _ in pairs], [training.index(t) for _, t in pairs]


def run_folders(folder: Path) -> list[Path]:
    runs = sorted(p for p in folder.iterdir() if p.is_dir() and (p / LABELS).is_file())
    if not runs and (folder / LABELS).is_file():
        runs = [folder]  # a single run's folder
    if not runs:
        raise MetarunError(
            f"runs={folder} holds no run folder with a {LABELS} (unzip all_runs.zip from the "
            "Omniglot repository's python/one-shot-classification and point runs= at it)"
        )
    return runs


def score_runs(path: Path, checkpoint: dict, cfg, folder: Path) -> dict[str, float]:
    """Each run's error % (``runs/runNN/error``) and their mean and 95% CI (``runs/error``)."""
    preprocess = image_preprocess(checkpoint)
    exp, out, errors = None, {}, []
    for run in run_folders(folder):
        training, tests, answers = read_run(run)
        if exp is None or len(training) != exp.cfg.task.way:
            exp = image_model(path, checkpoint, cfg, len(training), 1, of="training images")
        support_x = torch.stack([load_image(f, preprocess) for f in training])
        query_x = torch.stack([load_image(f, preprocess) for f in tests])
        support_y = torch.arange(len(training))
        probs = class_probabilities(exp, support_x, support_y, query_x)
        wrong = (probs.argmax(-1) != torch.tensor(answers)).float().mean().item()
        out[f"runs/{run.name}/error"] = 100 * wrong
        errors.append(100 * wrong)
    mean, ci = mean_ci95(torch.tensor(errors))
    out["runs/error"], out["runs/error_ci95"] = mean, (ci if len(errors) > 1 else 0.0)
    return out
