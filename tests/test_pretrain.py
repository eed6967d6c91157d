"""Supervised pre-training (algo=pretrain): the test-time heads against hand computations and
reference solutions, the image loader's coverage, and the pre-train -> meta-train -> evaluate
chain (P>M>F) through the real entry points."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from metarun.data.episodes import EpisodicImages
from metarun.heads import CosineClassifier, HeadOptions, head_logits, logistic_logits
from tests.conftest import GLYPHS_SMALL, TINY

GLYPHS = [
    "dataset=glyphs",
    *GLYPHS_SMALL,
    *(o for o in TINY if not o.startswith("algo.")),
    "logger=none",
]


def _clusters(tasks=3, way=3, shot=4, dim=6, spread=0.1, seed=0):
    """Support and query embeddings of well-separated class clusters, labels in order."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(tasks, way, dim, generator=g) * 3
    y = torch.arange(way).repeat_interleave(shot).expand(tasks, -1)
    pick = lambda labels: centres.gather(1, labels[..., None].expand(-1, -1, dim))  # noqa
    support = pick(y) + spread * torch.randn(tasks, way * shot, dim, generator=g)
    qy = torch.arange(way).repeat(5).expand(tasks, -1)
    query = pick(qy) + spread * torch.randn(tasks, qy.shape[1], dim, generator=g)
    return support, y, query, qy


def test_prototype_head_is_the_negative_squared_distance_to_each_class_mean():
    support = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [0.0, 4.0], [0.0, 6.0]]])
    y = torch.tensor([[0, 0, 1, 1]])
    query = torch.tensor([[[1.0, 1.0], [0.0, 3.0]]])
    logits = head_logits("prototype", support, y, query, 2)
    # class means (1, 0) and (0, 5): by hand, -|q - m|^2
    assert torch.allclose(logits, torch.tensor([[[-1.0, -17.0], [-10.0, -4.0]]]))


def _binary_symmetric_weight(c: float) -> float:
    """The closed-form optimum of two points x=+1 (class 1), x=-1 (class 0) on the unit
    sphere (1-D): by symmetry b0 = b1 and w1 = -w0 = w, with w = 2c * sigmoid(-2w) (the zero of
    d/dw [w^2 + 2c log(1 + exp(-2w))]), found by bisection."""
    lo, hi = 0.0, 2 * c
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mid < 2 * c / (1 + math.exp(2 * mid)) else (lo, mid)
    return lo


@pytest.mark.parametrize("c", [0.5, 1.0, 4.0])
def test_logistic_head_reaches_the_closed_form_optimum(c):
    support = torch.tensor([[[1.0], [-1.0]]], dtype=torch.float64)
    y = torch.tensor([[1, 0]])
    query = torch.tensor([[[3.0], [-0.5]]], dtype=torch.float64)  # normalised to +1 and -1
    logits = logistic_logits(support, y, query, 2, c, 1000)
    w = _binary_symmetric_weight(c)
    assert torch.allclose(logits[0], torch.tensor([[-w, w], [w, -w]], dtype=torch.float64),
                          atol=1e-7)  # fmt: skip


def test_logistic_head_is_stationary_and_matches_scikit_learn():
    support, y, query, _ = _clusters(tasks=2, spread=1.5)
    support, query = support.double(), query.double()
    c = 1.0
    logits = logistic_logits(support, y, query, 3, c, 1000)
    # Optimality (the closed form of the gradient): W = -C X^T (P - Y), sum_i (P - Y) = 0; W is
    # recovered from the query logits' differences on the normalised support through least
    # squares, so check the condition on the fitted support logits instead.
    s = F.normalize(support, dim=-1)
    q = F.normalize(query, dim=-1)
    weight = torch.linalg.lstsq(
        torch.cat([q, torch.ones_like(q[..., :1])], -1), logits
    ).solution  # [B, D + 1, N]: exact, the logits are affine in q
    w, b = weight[:, :-1], weight[:, -1:]
    residual = F.softmax(s @ w + b, -1) - F.one_hot(y, 3).double()
    assert torch.allclose(w, -c * s.transpose(1, 2) @ residual, atol=1e-6)
    assert torch.allclose(residual.sum(1), torch.zeros(2, 3, dtype=torch.float64), atol=1e-6)
    sklearn = pytest.importorskip("sklearn.linear_model", reason="pip install scikit-learn")
    for t in range(2):
        reference = sklearn.LogisticRegression(C=c, tol=1e-10, max_iter=10_000)
        reference.fit(s[t].numpy(), y[t].numpy())
        ours = F.softmax(logits[t], -1).numpy()
        assert abs(reference.predict_proba(q[t].numpy()) - ours).max() < 1e-6


def test_finetune_head_takes_sgd_steps_on_a_new_linear_layer():
    support, y, query, _ = _clusters(tasks=2, way=2, shot=2, dim=3)
    options = HeadOptions(epochs=1, lr=0.5, batch_size=4, weight_decay=0.0)
    logits = head_logits("finetune", support, y, query, 2, options)
    # by hand: the same start for every task (seed 0, nn.Linear's range), one full-batch step
    g = torch.Generator().manual_seed(0)
    bound = 1 / math.sqrt(3)
    w = (torch.rand(3, 2, generator=g) * 2 - 1) * bound
    b = (torch.rand(2, generator=g) * 2 - 1) * bound
    for t in range(2):
        p = F.softmax(support[t] @ w + b, -1)
        grad = (p - F.one_hot(y[t], 2).float()) / 4  # the mean loss over the 4 examples
        w1, b1 = w - 0.5 * support[t].T @ grad, b - 0.5 * grad.sum(0)
        assert torch.allclose(logits[t], query[t] @ w1 + b1, atol=1e-5)


def test_cosine_head_starts_as_a_scaled_cosine_and_learns():
    support, y, query, qy = _clusters(tasks=2, way=3, dim=5)
    start = head_logits("cosine", support, y, query, 3, HeadOptions(epochs=0))
    g = torch.Generator().manual_seed(0)
    w = (torch.rand(5, 3, generator=g) * 2 - 1) / math.sqrt(5)
    # g_c starts at |v_c|, so g_c cos(x, v_c) = x/|x| . v_c; Chen et al.'s factor 2 (3 classes)
    assert torch.allclose(start, 2 * F.normalize(query, dim=-1) @ w, atol=1e-6)
    trained = head_logits("cosine", support, y, query, 3, HeadOptions(scale=10.0))
    assert (trained.argmax(-1) == qy).all()


@pytest.mark.parametrize("head", ["prototype", "logistic", "finetune", "cosine"])
def test_every_head_classifies_separated_clusters_and_is_chunk_independent(head):
    support, y, query, qy = _clusters(tasks=4)
    logits = head_logits(head, support, y, query, 3, HeadOptions(scale=10.0))
    assert (logits.argmax(-1) == qy).all()
    alone = head_logits(head, support[2:3], y[2:3], query[2:3], 3, HeadOptions(scale=10.0))
    assert torch.allclose(alone, logits[2:3], atol=1e-4)  # a task's result, whatever its chunk


def test_cosine_classifier_is_a_weight_normalised_cosine():
    layer = CosineClassifier(4, 250)  # more than 200 classes: Chen et al.'s factor 10
    z = torch.randn(3, 4)
    v = layer.layer.parametrizations.weight.original1
    g = layer.layer.parametrizations.weight.original0.squeeze(1)
    expected = 10 * g * (F.normalize(z, dim=-1) @ F.normalize(v, dim=-1).T)
    assert torch.allclose(layer(z), expected, atol=1e-6)


def _coded_images(classes: int, samples: int, offset: int) -> torch.Tensor:
    """``[C, S, 8, 8]`` uint8 images whose top-left pixel is ``offset + class`` (others 0)."""
    images = torch.zeros(classes, samples, 8, 8, dtype=torch.uint8)
    images[:, :, 0, 0] = (offset + torch.arange(classes))[:, None]
    return images


def test_pretraining_reads_every_training_image_once_per_epoch_and_nothing_else():
    splits = {"train": _coded_images(7, 3, 1), "val": _coded_images(2, 3, 101),
              "test": _coded_images(2, 3, 201)}  # fmt: skip
    data = EpisodicImages(splits, rotations=True)
    images, size = data.images_in("train"), 5
    assert images == 7 * 4 * 3  # rotated copies are classes (and images) of their own
    g = torch.Generator().manual_seed(0)
    batches = [data.sample_images("train", size, t, 0, g) for t in range((2 * images) // size)]
    labels = torch.cat([b.y for b in batches])
    epoch = labels[:images]
    assert torch.bincount(epoch, minlength=28).tolist() == [3] * 28  # each image once
    x = torch.cat([b.x for b in batches])
    codes = (x * 255).round().long().flatten(1).max(1).values  # the pixel survives rotation
    assert torch.equal(codes, labels // 4 + 1)  # image content is its label's class
    assert codes.max() < 101  # no validation or test image
    turns = labels % 4
    corners = x.flatten(1).argmax(1)  # where the coded pixel went: which rotation
    assert torch.equal(corners, torch.tensor([0, 56, 63, 7])[turns])
    # a step's images depend on its number alone (exact resume), the second epoch differs
    again = data.sample_images("train", size, 9, 0, torch.Generator().manual_seed(5))
    assert torch.equal(again.y, batches[9].y)
    assert not torch.equal(labels[images : 2 * images], epoch)
    share = data.sample_images("train", size, 9, 0, g, part=slice(1, 3))
    assert torch.equal(share.y, batches[9].y[1:3])


def test_pretrain_runs_and_any_head_scores_its_checkpoint(run_inprocess, entry, tmp_path):
    run_dir, _ = run_inprocess(["algo=pretrain", "algo.head=prototype", *GLYPHS], "pre")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and 0 < summary["test/acc"] <= 1
    scores = {}
    for head in ("prototype", "logistic", "finetune", "cosine"):
        from metarun.trained import evaluate_checkpoint

        scores[head] = evaluate_checkpoint([f"checkpoint={run_dir}", f"head={head}"])
    assert scores["prototype"]["test/acc"] == pytest.approx(summary["test/acc"])
    assert len({s["test/acc"] for s in scores.values()}) > 1  # four different classifiers


def test_pmf_chain_pretrain_then_protonet_then_heads(run_inprocess, capsys):
    from metarun.trained import evaluate_checkpoint

    pre, _ = run_inprocess(["algo=pretrain", *GLYPHS], "pre")
    capsys.readouterr()
    meta_args = ["algo=protonet", "task.train_way=10", f"train.init_from={pre}", *GLYPHS]
    meta, _ = run_inprocess(meta_args, "meta")
    said = capsys.readouterr().out
    assert "the backbone of a Pretrain checkpoint; not used: classifier" in said
    start = torch.load(pre / "checkpoints" / "best.pt", weights_only=True)["model"]
    from metarun.trained import load_trained

    exp = load_trained(meta / "checkpoints" / "best.pt", [])
    assert set(exp.learner.state_dict()) == {k for k in start if k.startswith("backbone.")}
    for head in ("finetune", "logistic"):
        assert 0 < evaluate_checkpoint([f"checkpoint={meta}", f"head={head}"])["test/acc"] <= 1
    # MAML: the pre-trained features, a fresh output layer; its own checkpoint takes heads too
    maml_args = ["algo=maml", "algo.eval_inner_steps=2", f"train.init_from={pre}", *GLYPHS]
    maml, _ = run_inprocess(maml_args, "maml")
    assert "new: backbone.head; not used: classifier" in capsys.readouterr().out
    assert 0 < evaluate_checkpoint([f"checkpoint={maml}", "head=prototype"])["test/acc"] <= 1


def test_pretrain_from_its_own_checkpoint_takes_every_weight(run_inprocess, capsys):
    pre, _ = run_inprocess(["algo=pretrain", *GLYPHS], "pre")
    capsys.readouterr()
    run_inprocess(["algo=pretrain", f"train.init_from={pre}", *GLYPHS], "again")
    assert "(step 20): all weights" in capsys.readouterr().out


def test_a_resumed_pretraining_reads_the_same_images(run_inprocess):
    # train.log_every=4 divides 8 and 16: stopping at 8 logs what the whole run logs
    base = ["algo=pretrain", "algo.batch_size=8", "dataset.shift=2", "checkpoint.every=4",
            *GLYPHS, "train.log_every=4", "val.every=8"]  # fmt: skip
    full, _ = run_inprocess([*base, "train.steps=16"], name="full")
    part, _ = run_inprocess([*base, "train.steps=8"], name="part")
    run_inprocess([*base, "train.steps=16", "resume=true", f"resume_dir={part}"], name="more")
    assert (part / "metrics.jsonl").read_text() == (full / "metrics.jsonl").read_text()
