"""Lake et al.'s within-alphabet one-shot protocol: its sampler, the new-alphabet split, warps,
test-time views and ProtoNet's metric options."""

from __future__ import annotations

import pytest
import torch

from metarun.algorithms import ProtoNet
from metarun.backbones import Conv4
from metarun.data import EpisodicImages, Omniglot, TaskBatch, TaskShape
from metarun.data.warps import Warp, apply_warps, draw_warps, warp_images
from metarun.errors import MetarunError
from metarun.evaluate import evaluate, fixed_episodes
from metarun.views import Views
from tests.conftest import SHARED_OMNIGLOT

# A tiny run of the new-alphabet preset on the archives beside the project.
NEW_ALPHABETS = ["experiment=protonet_omniglot_new_alphabets", f"dataset.root={SHARED_OMNIGLOT}"]
NEW_ALPHABETS += ["dataset.download=false", "task.train_way=20", "logger=none"]
NEW_ALPHABETS += ["val.episodes=8", "test.episodes=12"]
# 3 alphabets of 6, 5 and 3 characters; 8 samples ("drawers") each.
ALPHABETS = ["a"] * 6 + ["b"] * 5 + ["c"] * 3


def _coded(classes: int, samples: int = 8) -> torch.Tensor:
    """Images whose pixel (0, 0) is 1 + the class and (0, 1) 1 + the sample position."""
    images = torch.zeros(classes, samples, 6, 6, dtype=torch.uint8)
    images[:, :, 0, 0] = 1 + torch.arange(classes)[:, None]
    images[:, :, 0, 1] = 1 + torch.arange(samples)[None, :]
    return images


def _coded_dataset(rotations: bool = False) -> EpisodicImages:
    splits = {s: _coded(len(ALPHABETS)) for s in ("train", "val", "test")}
    return EpisodicImages(splits, rotations=rotations, alphabets={s: ALPHABETS for s in splits})


def test_within_alphabet_episodes_share_an_alphabet_and_use_different_drawers(capsys):
    ds = _coded_dataset()
    shape = TaskShape(way=4, shot=2, query=3)
    batch = ds.sample(
        "test", 300, shape, torch.Generator().manual_seed(0), protocol="within_alphabet"
    )
    # pixel (0,0) is 1 + the class, (0,1) 1 + the drawer (no rotation here)
    support = (batch.support_x * 255).round().long() - 1
    query = (batch.query_x * 255).round().long() - 1
    s_class, s_drawer = support[..., 0, 0, 0], support[..., 0, 0, 1]
    q_class, q_drawer = query[..., 0, 0, 0], query[..., 0, 0, 1]
    seen = set()
    for b in range(300):
        alphabets = {ALPHABETS[c] for c in s_class[b].tolist() + q_class[b].tolist()}
        assert len(alphabets) == 1  # one alphabet per episode
        seen |= alphabets
        assert len(set(s_class[b].tolist())) == 4  # four different characters
        assert not set(s_drawer[b].tolist()) & set(q_drawer[b].tolist())
        assert len(set(s_drawer[b].tolist())) == 2  # shot 2: two drawers, the same for each class
    assert seen == {"a", "b"}  # "c" has 3 characters: never in a 4-way episode
    assert "c (3)" in capsys.readouterr().err  # said once, in one line
    # labels still follow the sampler's layout: support grouped by class, then queries
    assert torch.equal(batch.support_y[0], torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]))
    with pytest.raises(MetarunError, match="largest of the test split has 6"):
        ds.sample("test", 1, TaskShape(7, 1, 1), torch.Generator(), protocol="within_alphabet")


def test_rotated_alphabets_train_as_their_own_but_evaluation_uses_characters_as_drawn():
    ds = _coded_dataset(rotations=True)
    generator = torch.Generator().manual_seed(1)
    shape = TaskShape(way=4, shot=1, query=1)
    train = ds.sample("train", 200, shape, generator, protocol="within_alphabet").support_x[:, :, 0]
    # where the class pixel went: (0,0) unrotated, rot90 moves it to another corner
    corners = torch.stack(
        [train[..., 0, 0], train[..., -1, 0], train[..., -1, -1], train[..., 0, -1]]
    )
    turns = corners.argmax(0)  # [B, N]
    assert (turns == turns[:, :1]).all()  # one rotation of one alphabet per episode
    assert set(turns.flatten().tolist()) == {0, 1, 2, 3}
    test = ds.sample("test", 200, shape, generator, protocol="within_alphabet").support_x
    assert (test[..., 0, 0, 0] > 0).all()  # every test character as drawn


def test_a_dataset_without_alphabets_refuses_the_protocol_in_one_line():
    ds = EpisodicImages({s: _coded(6) for s in ("train", "val", "test")})
    with pytest.raises(MetarunError, match="needs a dataset whose classes belong to alphabets"):
        ds.check_shape("test", TaskShape(2, 1, 1), "meta-test", protocol="within_alphabet")


def test_a_data_parallel_share_of_warped_episodes_is_that_part_of_the_whole():
    ds = EpisodicImages(
        {s: _coded(14) for s in ("train", "val", "test")},
        warp=Warp(rotate=20, shear=0.2, scale=0.1, translate=0.1, elastic=0.05),
        alphabets={s: ALPHABETS for s in ("train", "val", "test")},
    )
    shape = TaskShape(3, 1, 2)
    for protocol in ("random", "within_alphabet"):
        whole = ds.sample("train", 4, shape, torch.Generator().manual_seed(3), protocol=protocol)
        part = ds.sample(
            "train", 4, shape, torch.Generator().manual_seed(3), part=slice(2, 4), protocol=protocol
        )
        for a, b in zip(whole, part):
            assert torch.allclose(a[2:4], b)
    # validation and test images are never warped
    test = ds.sample("test", 2, shape, torch.Generator().manual_seed(3))
    assert set((test.support_x * 255).round().unique().tolist()) <= set(range(14))


def test_warps_are_the_identity_when_off_and_move_strokes_when_on():
    images = torch.zeros(5, 1, 16, 16)
    images[:, :, 6:10, 3:13] = 1.0  # a horizontal bar
    generator = torch.Generator().manual_seed(0)
    assert torch.equal(warp_images(images, Warp(), generator), images)
    identity = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).expand(5, 2, 3)
    assert torch.allclose(apply_warps(images, identity), images, atol=1e-6)
    moved = warp_images(images, Warp(rotate=30, translate=0.1), generator)
    assert moved.shape == images.shape
    assert all(not torch.allclose(moved[i], images[i], atol=1e-3) for i in range(5))
    assert not torch.allclose(moved[0], moved[1], atol=1e-3)  # each image its own warp
    # the same generator state gives the same warps (episodes stay reproducible)
    a = draw_warps(Warp(rotate=5, elastic=0.02), 3, torch.Generator().manual_seed(9))
    b = draw_warps(Warp(rotate=5, elastic=0.02), 3, torch.Generator().manual_seed(9))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.omniglot
def test_the_new_alphabet_split_never_trains_on_a_test_alphabet():
    ds = Omniglot(
        root=str(SHARED_OMNIGLOT),
        background="small1",
        evaluation="small2",
        split="lake",
        val_alphabets=1,
        download=False,
    )
    alphabets = {s: set(names) for s, names in ds.alphabets.items()}
    assert alphabets["test"] == {"Japanese_(katakana)", "Sanskrit", "Tagalog"}
    assert not alphabets["test"] & (alphabets["train"] | alphabets["val"])
    assert len(alphabets["val"]) == 1 and len(alphabets["train"]) == 4
    assert ds.num_classes("test") == 47 + 42 + 17
    # support and query drawn by different drawers: find each image among the split's drawings
    batch = ds.sample(
        "test", 30, TaskShape(20, 1, 2), torch.Generator(), protocol="within_alphabet"
    )
    drawings = ds.splits["test"].float().div(255).flatten(2)  # [C, 20, H*W]
    for b in range(30):
        found = lambda x: (drawings[None] == x.flatten(1)[:, None, None]).all(-1).nonzero()  # noqa
        s, q = found(batch.support_x[b]), found(batch.query_x[b])
        assert len(s) == 20 and len(q) == 40  # every image is one drawing of the split
        assert not set(s[:, 2].tolist()) & set(q[:, 2].tolist())  # drawers apart
        assert len({ds.alphabets["test"][c] for c in s[:, 1].tolist()}) == 1
    with pytest.raises(MetarunError, match="nothing is left to meta-test"):
        Omniglot(
            root=str(SHARED_OMNIGLOT),
            background="small2",
            evaluation="small2",
            download=False,
            val_alphabets=1,
        )


def _protonet(**options) -> ProtoNet:
    torch.manual_seed(0)
    backbone = Conv4(
        input_shape=(1, 12, 12), out_features=None, hidden=8, blocks=2, batch_norm="running"
    )
    return ProtoNet(backbone, optimizer=torch.optim.Adam, **options).eval()


def test_views_average_protonet_embeddings():
    """With views, a query's class is the one whose prototype (the mean embedding of every view
    of its support images) is nearest to the query's mean embedding."""
    learner = _protonet()
    generator = torch.Generator().manual_seed(0)
    batch = TaskBatch(
        torch.rand(2, 6, 1, 12, 12, generator=generator),
        torch.tensor([[0, 0, 1, 1, 2, 2]] * 2),
        torch.rand(2, 9, 1, 12, 12, generator=generator),
        torch.tensor([[0, 1, 2] * 3] * 2),
    )
    views = Views(4, Warp(rotate=15, translate=0.1), seed=5)
    viewed = views.batch(batch, first=0)
    assert viewed.support_x.shape == (2, 24, 1, 12, 12) and viewed.query_x.shape[1] == 36
    assert torch.equal(viewed.support_x[:, :6], batch.support_x)  # the image itself first
    scores = views.evaluate(learner, viewed)
    with torch.no_grad():
        z_s = learner.backbone(viewed.support_x).view(2, 4, 3, 2, -1)  # [B, V, N, K, D]
        z_q = learner.backbone(viewed.query_x).view(2, 4, 9, -1).mean(1)  # [B, Q, D]
    prototypes = z_s.mean(dim=(1, 3))  # [B, N, D]
    nearest = torch.cdist(z_q, prototypes).argmin(-1)
    expected = (nearest == batch.query_y).float().mean(1)
    assert torch.allclose(scores["acc"], expected)
    # episode i's views are the same whichever chunk it is evaluated in
    again = views.batch(TaskBatch(*(t[1:] for t in batch)), first=1)
    assert torch.equal(again.query_x[0], viewed.query_x[1])


def test_evaluation_with_views_does_not_depend_on_the_chunk_size():
    generator = torch.Generator().manual_seed(4)
    random_images = lambda: torch.randint(0, 256, (14, 8, 12, 12), generator=generator)  # noqa
    ds = EpisodicImages(
        {s: random_images().to(torch.uint8) for s in ("train", "val", "test")},
        alphabets={s: ALPHABETS for s in ("train", "val", "test")},
    )
    learner = _protonet()
    views = Views(3, Warp(rotate=10), seed=1)
    runs = []
    for chunk in (1, 4, 7):
        batches = fixed_episodes(
            ds,
            "test",
            TaskShape(3, 1, 2),
            10,
            chunk,
            0,
            torch.device("cpu"),
            protocol="within_alphabet",
            views=views,
        )
        runs.append(evaluate(learner, batches, "test", views=views))
    assert runs[1] == pytest.approx(runs[0]) and runs[2] == pytest.approx(runs[0])
    with pytest.raises(MetarunError, match="test.views=3 with no warp"):
        Views.of({"views": 3, "view_warp": {"rotate": 0}}, "test")
    assert Views.of({"views": 1}, "test") is None


def _three_way_task(seed: int) -> TaskBatch:
    """One random 3-way 1-shot task with 2 queries per class."""
    generator = torch.Generator().manual_seed(seed)
    return TaskBatch(
        torch.rand(1, 3, 1, 12, 12, generator=generator),
        torch.tensor([[0, 1, 2]]),
        torch.rand(1, 6, 1, 12, 12, generator=generator),
        torch.tensor([[0, 1, 2, 0, 1, 2]]),
    )


def test_protonet_cosine_scale_and_transductive_refinement():
    batch = _three_way_task(seed=2)
    cosine = _protonet(distance="cosine", scale=10.0)
    logits = cosine.query_logits(batch)
    assert logits.abs().max() <= 10 + 1e-4  # scaled cosine similarities
    assert "scale" in dict(cosine.named_parameters())  # learned with the backbone
    plain, refined = _protonet(), _protonet(refine_steps=3)
    base = plain.query_logits(batch)
    assert torch.allclose(base, _protonet(refine_steps=0).query_logits(batch))
    # by hand: one soft k-means step of the prototypes with the queries
    with torch.no_grad():
        z = plain.backbone(torch.cat([batch.support_x, batch.query_x], 1))[0]
    support, query = z[:3], z[3:]
    logits = -torch.cdist(query, support).pow(2)
    for _ in range(3):
        w = logits.softmax(-1)  # [Q, N]
        prototypes = (support + w.T @ query) / (1 + w.sum(0)[:, None])
        logits = -torch.cdist(query, prototypes).pow(2)
    assert torch.allclose(refined.query_logits(batch)[0], logits, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(refined.query_logits(batch), base)


def _official_runs(folder, runs: int = 2) -> None:
    """Runs in the format of all_runs.zip, made from small2's Sanskrit drawings (the original
    105x105 dark-on-light PNGs): 20 characters, the training images by one drawer, the test
    images by another, the test items in a shuffled order."""
    import random
    import zipfile

    archive = zipfile.ZipFile(SHARED_OMNIGLOT / "images_background_small2.zip")
    names = sorted(n for n in archive.namelist() if "/Sanskrit/" in n and n.endswith(".png"))
    characters = sorted({n.split("/")[-2] for n in names})[:20]
    drawing = {(n.split("/")[-2], n[-6:-4]): n for n in names}
    rng = random.Random(0)
    for r in range(1, runs + 1):
        run = folder / f"run{r:02d}"
        (run / "training").mkdir(parents=True)
        (run / "test").mkdir()
        order = rng.sample(range(20), 20)
        lines = []
        for c, character in enumerate(characters):
            train = f"run{r:02d}/training/class{c + 1:02d}.png"
            test = f"run{r:02d}/test/item{order[c] + 1:02d}.png"
            (folder / train).write_bytes(archive.read(drawing[character, f"{r:02d}"]))
            (folder / test).write_bytes(archive.read(drawing[character, f"{r + 10:02d}"]))
            lines.append(f"{test} {train}")
        (run / "class_labels.txt").write_text("\n".join(sorted(lines)) + "\n")


@pytest.mark.omniglot
def test_new_alphabet_preset_eval_views_and_the_official_runs(run_inprocess, tmp_path):
    from metarun import trained
    from metarun.images import load_image
    from metarun.lake_runs import read_run

    run_dir, _ = run_inprocess([*NEW_ALPHABETS, "train.steps=30", "val.every=15"])
    best = f"checkpoint={run_dir / 'checkpoints' / 'best.pt'}"
    within = trained.evaluate_checkpoint([best, "test.views=1"])
    assert 0.05 < within["test/acc"] <= 1  # 20-way: chance is 0.05
    viewed = trained.evaluate_checkpoint([best, "test.views=3"])
    assert viewed == trained.evaluate_checkpoint([best, "test.views=3"])  # fixed views
    assert viewed["test/acc"] != within["test/acc"]
    crossing = trained.evaluate_checkpoint([best, "test.views=1", "test.protocol=random"])
    assert crossing["test/acc"] != within["test/acc"]
    with pytest.raises(MetarunError, match="test.views=2 with no warp"):
        trained.evaluate_checkpoint(
            [
                best,
                "test.views=2",
                "test.view_warp.rotate=0",
                "test.view_warp.shear=0",
                "test.view_warp.scale=0",
                "test.view_warp.translate=0",
            ]
        )

    runs = tmp_path / "all_runs"
    _official_runs(runs)
    scores = trained.evaluate_checkpoint([best, f"runs={runs}", "test.views=1"])
    assert set(scores) == {"runs/run01/error", "runs/run02/error", "runs/error", "runs/error_ci95"}
    # by hand: a test image is right when its nearest training image is its answer
    exp = trained.load_trained(run_dir / "checkpoints" / "best.pt", [])
    preprocess = {"size": 28, "mode": "L", "invert": True}
    errors = []
    for run in ("run01", "run02"):
        training, tests, answers = read_run(runs / run)
        embed = lambda files: exp.learner.eval().backbone(  # noqa: E731
            torch.stack([load_image(f, preprocess) for f in files])
        )
        with torch.no_grad():
            nearest = torch.cdist(embed(tests), embed(training)).argmin(-1)
        errors.append(100 * (nearest != torch.tensor(answers)).float().mean().item())
        assert scores[f"runs/{run}/error"] == pytest.approx(errors[-1])
    assert scores["runs/error"] == pytest.approx(sum(errors) / 2)
    with pytest.raises(MetarunError, match="holds no run folder"):
        trained.evaluate_checkpoint([best, f"runs={tmp_path}"])


@pytest.mark.omniglot
def test_predict_with_views_agrees_with_the_runs_score(run_inprocess, tmp_path):
    import shutil

    from metarun import predict, trained
    from metarun.lake_runs import read_run

    run_dir, _ = run_inprocess([*NEW_ALPHABETS, "train.steps=10", "val.every=10"])
    runs = tmp_path / "all_runs"
    _official_runs(runs, runs=1)
    training, tests, answers = read_run(runs / "run01")
    support = tmp_path / "support"
    for image in training:  # one class folder per training image
        (support / image.stem).mkdir(parents=True)
        shutil.copy(image, support / image.stem / image.name)
    best = f"checkpoint={run_dir / 'checkpoints' / 'best.pt'}"
    scores = trained.evaluate_checkpoint([best, f"runs={runs}", "test.views=4"])
    args = [best, f"support={support}", f"query={runs / 'run01' / 'test'}", "test.views=4"]
    rows = predict.predict([*args, f"out={tmp_path / 'p.csv'}"])
    plain = predict.predict([*args[:3], "test.views=1", f"out={tmp_path / 'q.csv'}"])
    for row in rows:
        assert sum(v for k, v in row.items() if k.startswith("p(")) == pytest.approx(1, abs=1e-3)
    assert [r["file"] for r in rows] == [str(t) for t in sorted(tests)]
    answer = {str(t): training[a].stem for t, a in zip(tests, answers)}
    wrong = sum(r["predicted"] != answer[r["file"]] for r in rows)
    assert scores["runs/run01/error"] == pytest.approx(100 * wrong / len(rows))
    assert any(r["p(class01)"] != p["p(class01)"] for r, p in zip(rows, plain))  # views count


def test_balanced_assignment_gives_every_class_an_equal_share_of_the_queries():
    from metarun.algorithms.protonet import _balanced

    # two queries, both nearer class 0; the second less so: balanced, it goes to class 1
    logits = torch.tensor([[[0.0, -5.0], [-1.0, -2.0]]])
    assert logits.argmax(-1).tolist() == [[0, 0]]
    p = _balanced(logits).exp()
    assert torch.allclose(p.sum(-1), torch.ones(1, 2), atol=1e-5)  # each query's probabilities
    assert torch.allclose(p.sum(-2), torch.ones(1, 2), atol=1e-3)  # each class: 2 / 2 queries
    assert p.argmax(-1).tolist() == [[0, 1]]
    batch = _three_way_task(seed=3)
    balanced = _protonet(balanced=True).query_logits(batch).exp()
    assert torch.allclose(balanced.sum(-2), torch.full((1, 3), 2.0), atol=1e-3)
