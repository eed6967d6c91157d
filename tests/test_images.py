"""Episodic sampling of image datasets, real Omniglot archives, downloads, glyphs."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metarun.data import EpisodicImages, Glyphs, Omniglot, TaskShape
from metarun.data import omniglot as omniglot_module
from metarun.errors import MetarunError
from tests.conftest import SHARED_OMNIGLOT

SMALL = ("images_background_small1.zip", "images_background_small2.zip")


def coded_dataset(classes: int = 7, samples: int = 6, size: int = 4) -> EpisodicImages:
    """Images whose pixel (0, 0) encodes the class and pixel (0, 1) the sample."""
    data = torch.zeros(classes, samples, size, size, dtype=torch.uint8)
    data[:, :, 0, 0] = torch.arange(classes, dtype=torch.uint8)[:, None] * 10
    data[:, :, 0, 1] = torch.arange(samples, dtype=torch.uint8)[None, :] * 10
    return EpisodicImages({s: data for s in ("train", "val", "test")})


def codes(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    pixels = (x[..., 0, :, :] * 255).round().long()
    return pixels[..., 0, 0] // 10, pixels[..., 0, 1] // 10


def test_episodes_have_distinct_classes_and_samples_and_consistent_labels():
    ds = coded_dataset()
    batch = ds.sample(
        "train", 50, TaskShape(way=4, shot=2, query=3), torch.Generator().manual_seed(0)
    )
    assert batch.support_x.shape == (50, 8, 1, 4, 4) and batch.query_x.shape == (50, 12, 1, 4, 4)
    assert batch.support_y[0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    s_cls, s_idx = codes(batch.support_x)
    q_cls, q_idx = codes(batch.query_x)
    for t in range(50):
        label_to_class = {}
        for cls, label in zip(
            torch.cat([s_cls[t], q_cls[t]]), torch.cat([batch.support_y[t], batch.query_y[t]])
        ):
            assert label_to_class.setdefault(int(label), int(cls)) == int(cls)
        assert len(set(label_to_class.values())) == 4  # 4 distinct classes
        for label, cls in label_to_class.items():  # no sample twice within a class
            picked = [
                int(i)
                for c, i in zip(torch.cat([s_cls[t], q_cls[t]]), torch.cat([s_idx[t], q_idx[t]]))
                if c == cls
            ]
            assert len(picked) == len(set(picked)) == 5
    first_class_of_label0 = {int(s_cls[t, 0]) for t in range(50)}
    assert len(first_class_of_label0) > 3  # labels are re-assigned to classes every episode


def test_rotations_are_extra_classes():
    data = torch.zeros(2, 3, 5, 5, dtype=torch.uint8)
    data[0, :, 0, 0] = 255  # class 0: a dot top-left; class 1: a dot top-right
    data[1, :, 0, 4] = 255
    ds = EpisodicImages({s: data for s in ("train", "val", "test")}, rotations=True)
    assert ds.num_classes("train") == 8
    batch = ds.sample(
        "train", 40, TaskShape(way=8, shot=1, query=0), torch.Generator().manual_seed(1)
    )
    corners = {
        tuple(torch.nonzero(img[0] > 0.5)[0].tolist()) for img in batch.support_x.flatten(0, 1)
    }
    assert corners == {(0, 0), (0, 4), (4, 0), (4, 4)}
    per_task = [len({tuple(img.flatten().tolist()) for img in task}) for task in batch.support_x]
    assert min(per_task) >= 4  # 8 classes = 2 glyphs x 4 turns, with coinciding images pairwise


def test_shift_moves_each_training_image_by_its_own_offset_and_never_evaluation_images():
    data = torch.zeros(3, 4, 9, 9, dtype=torch.uint8)
    data[:, :, 4, 4] = 255  # one bright pixel in the centre of every image
    ds = EpisodicImages({s: data for s in ("train", "val", "test")}, shift=2)
    shape = TaskShape(way=3, shot=2, query=2)
    batch = ds.sample("train", 30, shape, torch.Generator().manual_seed(0))
    images = torch.cat([batch.support_x, batch.query_x], dim=1).flatten(0, 1)[:, 0]
    where = torch.stack([torch.nonzero(img > 0.5)[0] for img in images])  # one pixel each
    assert ((images > 0.5).sum((1, 2)) == 1).all()  # moved, not lost or duplicated
    offsets = where - 4
    assert offsets.abs().max() == 2 and len({tuple(o) for o in offsets.tolist()}) == 25
    for split in ("val", "test"):
        x = ds.sample(split, 5, shape, torch.Generator().manual_seed(0)).support_x
        assert (x[..., 0, 4, 4] == 1).all()
    edge = torch.zeros(1, 2, 5, 5, dtype=torch.uint8)
    edge[:, :, 0, 0] = 255  # moved out of the frame: zeros (background) fill in
    moved = EpisodicImages({s: edge for s in ("train", "val", "test")}, shift=1)
    x = moved.sample("train", 200, TaskShape(1, 1, 1), torch.Generator().manual_seed(0))
    assert 0 < (x.support_x.sum((2, 3, 4)) == 0).float().mean() < 1
    with pytest.raises(MetarunError, match="dataset.shift=9 must be between 0 and 8"):
        EpisodicImages({s: data for s in ("train", "val", "test")}, shift=9)


def test_shape_checks_name_the_problem():
    ds = coded_dataset(classes=7, samples=6)
    with pytest.raises(MetarunError, match="8-way tasks need 8 classes but the train split has 7"):
        ds.check_shape("train", TaskShape(8, 1, 1))
    with pytest.raises(MetarunError, match="shot 2 \\+ query 5 needs 7 samples per class"):
        ds.check_shape("train", TaskShape(2, 2, 5))


@pytest.fixture
def omniglot_root(tmp_path) -> Path:
    root = tmp_path / "omniglot"
    root.mkdir()
    for name in SMALL:
        shutil.copy(SHARED_OMNIGLOT / name, root / name)
    return root


def test_real_omniglot_small_sets_random_split(omniglot_root):
    ds = Omniglot(
        root=str(omniglot_root), background="small1+small2", split="random", download=False
    )
    names = ds.class_names
    assert sum(len(v) for v in names.values()) == 242  # Greek and Latin counted once
    assert [len(names[s]) for s in ("train", "val", "test")] == [164, 15, 63]
    assert not set(names["train"]) & set(names["test"]) and not set(names["val"]) & set(
        names["test"]
    )
    assert (
        ds.splits["train"].shape == (164, 20, 1, 28, 28) and ds.splits["train"].dtype == torch.uint8
    )
    # Strokes are bright on a dark background, as in the cache's documented polarity.
    assert ds.splits["train"].float().mean() < 60
    cached = sorted(p.name for p in (omniglot_root / "omniglot-cache").glob("images_*.npy"))
    assert len(cached) == 2 and all("28px" in n for n in cached)
    # Each split is an entry of its own (mapped, not copied: one copy per machine).
    assert len(list((omniglot_root / "omniglot-cache").glob("selection-*.npy"))) == 3
    if Path("/proc/self/maps").exists():  # each split's tensor lies in a mapping of its file
        files = {_mapped_file(ds.splits[s].data_ptr()) for s in ds.splits}
        assert {Path(f).name.split("-")[0] for f in files} == {"selection"} and len(files) == 3
    again = Omniglot(
        root=str(omniglot_root), background="small1+small2", split="random", download=False
    )
    assert torch.equal(again.splits["test"], ds.splits["test"])
    batch = ds.sample("test", 3, TaskShape(5, 1, 15), torch.Generator().manual_seed(0))
    assert batch.query_x.shape == (3, 75, 1, 28, 28)


def test_cache_is_used_and_keyed_by_preprocessing(omniglot_root, monkeypatch):
    Omniglot(root=str(omniglot_root), background="small1", split="random", download=False)

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again although the cache holds this preprocessing")

    monkeypatch.setattr(omniglot_module, "decode_archive", no_decoding)
    Omniglot(root=str(omniglot_root), background="small1", split="random", download=False)
    with pytest.raises(AssertionError, match="decoded again"):  # another size: another cache
        Omniglot(
            root=str(omniglot_root),
            background="small1",
            split="random",
            image_size=20,
            download=False,
        )


def test_a_stale_or_broken_cache_file_is_rebuilt_not_used(omniglot_root, monkeypatch, capsys):
    """A cache file under the current name that does not verify against its recorded digest
    (right shape but other contents, a file cut short, a hand-made record) is decoded again from
    the verified archive, with one warning; one from an older PREPROCESS_VERSION is never even
    opened, because the version is part of the name."""
    kwargs = dict(root=str(omniglot_root), background="small1", split="random", download=False)
    reference = Omniglot(**kwargs).splits["train"]
    (cache,) = (omniglot_root / "omniglot-cache").glob("images_*.npy")
    record = cache.with_suffix(".json")
    assert cache.name.endswith(f"-v{omniglot_module.PREPROCESS_VERSION}.npy")
    decoded = []
    real_decode = omniglot_module.decode_archive
    monkeypatch.setattr(
        omniglot_module, "decode_archive", lambda *a: decoded.append(1) or real_decode(*a)
    )
    shape = np.load(cache).shape

    def hand_made_record():
        np.save(cache, np.full(shape, 255, np.uint8))
        data = json.loads(record.read_text())
        record.write_text(json.dumps({**data, "digest": "0" * 64}))

    for stale in (
        lambda: np.save(cache, np.zeros(shape, np.uint8)),  # right shape, wrong contents
        lambda: cache.write_bytes(cache.read_bytes()[:1000]),
        hand_made_record,
        lambda: record.unlink(),
    ):
        capsys.readouterr()
        stale()
        assert torch.equal(Omniglot(**kwargs).splits["train"], reference)
        (line,) = capsys.readouterr().err.splitlines()
        assert line.startswith(f"metarun: warning: the dataset cache {cache} is not usable (")
        assert line.endswith("rebuilding it from the verified source")
    assert len(decoded) == 4
    Omniglot(**kwargs)  # the rebuilt cache verifies
    assert len(decoded) == 4
    older = cache.with_name(cache.name.replace(f"-v{omniglot_module.PREPROCESS_VERSION}", "-v0"))
    np.save(older, np.zeros(shape, np.uint8))
    assert torch.equal(Omniglot(**kwargs).splits["train"], reference) and len(decoded) == 4


def test_a_full_disk_costs_the_cache_not_the_run(omniglot_root, monkeypatch, capsys):
    def full(path, write):
        raise OSError(errno.ENOSPC, "No space left on device")

    from metarun.data import cache

    monkeypatch.setattr(cache, "atomic_write", full)
    ds = Omniglot(root=str(omniglot_root), background="small1", split="random", download=False)
    assert sum(ds.num_classes(s) for s in ("train", "val", "test")) == 136
    assert not list((omniglot_root / "omniglot-cache").glob("*.npy"))
    err = capsys.readouterr().err
    assert err.startswith("metarun: warning: could not write the dataset cache ")
    assert "(No space left on device); continuing without it" in err


def test_read_only_root_caches_elsewhere(omniglot_root, tmp_path, monkeypatch):
    monkeypatch.setenv("METARUN_CACHE_DIR", str(tmp_path / "cache"))
    omniglot_root.chmod(0o555)
    try:
        Omniglot(root=str(omniglot_root), background="small2", split="random", download=False)
    finally:
        omniglot_root.chmod(0o755)
    assert not (omniglot_root / "omniglot-cache").exists()
    assert list((tmp_path / "cache" / "omniglot-cache").glob("*.npy"))


def test_lake_split_needs_the_evaluation_archive(omniglot_root):
    with pytest.raises(
        MetarunError, match="images_evaluation.zip was not found in .*dataset.download=false"
    ):
        Omniglot(
            root=str(omniglot_root),
            background="small1",
            split="lake",
            val_alphabets=1,
            download=False,
        )


def test_wrong_checksum_without_download_names_the_file(omniglot_root):
    path = omniglot_root / SMALL[0]
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(MetarunError, match=f"{SMALL[0]} has the wrong md5 checksum"):
        Omniglot(root=str(omniglot_root), background="small1", split="random", download=False)


def _png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.fromarray((rng.random((105, 105)) > 0.1).astype(np.uint8) * 255).convert("1")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def fake_archive(
    path: Path, alphabets: int = 2, chars: int = 3, extra: dict | None = None, prefix="Alpha"
) -> str:
    """A small archive in Omniglot's layout (alphabets ``<prefix>0``, ...); returns its md5."""
    with zipfile.ZipFile(path, "w") as zf:
        for a in range(alphabets):
            for c in range(chars):
                for d in range(20):
                    zf.writestr(
                        f"images_background_small1/{prefix}{a}/character{c:02d}/"
                        f"{a}{c:02d}_{d + 1:02d}.png",
                        _png(a * 100 + c * 20 + d),
                    )
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return hashlib.md5(path.read_bytes()).hexdigest()


def _point_small1_at(monkeypatch, url: str, md5: str) -> None:
    monkeypatch.setitem(omniglot_module.ARCHIVES, "small1", ("images_background_small1.zip", md5))
    monkeypatch.setattr(omniglot_module, "URL", url + "/{name}")


def test_download_verifies_and_loads(http_server, tmp_path, monkeypatch):
    served, url = http_server
    md5 = fake_archive(served / "images_background_small1.zip")
    _point_small1_at(monkeypatch, url, md5)
    root = tmp_path / "root"
    ds = Omniglot(root=str(root), background="small1", split="random", split_sizes=[4, 1, 1])
    assert sum(ds.num_classes(s) for s in ("train", "val", "test")) == 6
    assert hashlib.md5((root / "images_background_small1.zip").read_bytes()).hexdigest() == md5


def test_a_corrupt_local_archive_is_downloaded_again(http_server, tmp_path, monkeypatch):
    served, url = http_server
    md5 = fake_archive(served / "images_background_small1.zip")
    _point_small1_at(monkeypatch, url, md5)
    root = tmp_path / "root"
    root.mkdir()
    (root / "images_background_small1.zip").write_bytes(b"<html>virus scan warning</html>")
    ds = Omniglot(root=str(root), background="small1", split="random", split_sizes=[4, 1, 1])
    assert sum(ds.num_classes(s) for s in ("train", "val", "test")) == 6
    assert hashlib.md5((root / "images_background_small1.zip").read_bytes()).hexdigest() == md5


def test_a_download_onto_a_full_disk_says_so(http_server, tmp_path, monkeypatch):
    import pooch

    served, url = http_server
    _point_small1_at(monkeypatch, url, fake_archive(served / "images_background_small1.zip"))

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pooch, "retrieve", full)
    with pytest.raises(MetarunError, match=r"could not write images_background_small1.zip into "
                       r".*/root \(No space left on device\); free space there or point "
                       r"dataset.root"):  # fmt: skip
        Omniglot(root=str(tmp_path / "root"), background="small1", split="random")


def test_download_with_wrong_checksum_keeps_nothing(http_server, tmp_path, monkeypatch):
    served, url = http_server
    fake_archive(served / "images_background_small1.zip")
    _point_small1_at(monkeypatch, url, "0" * 32)
    root = tmp_path / "root"
    with pytest.raises(MetarunError, match="its md5 checksum does not match"):
        Omniglot(root=str(root), background="small1", split="random")
    leftovers = [p.name for p in root.iterdir() if p.is_file() and not p.name.endswith(".lock")]
    assert leftovers == []  # neither the bad file nor a temporary one


def test_unsafe_member_is_refused(tmp_path, monkeypatch):
    root = tmp_path / "root"
    root.mkdir()
    md5 = fake_archive(root / "images_background_small1.zip", extra={"../../escape.png": _png(0)})
    _point_small1_at(monkeypatch, "http://127.0.0.1:9", md5)
    with pytest.raises(MetarunError, match="'../../escape.png', which points outside"):
        Omniglot(root=str(root), background="small1", split="random", download=False)


def test_corrupt_image_is_named(tmp_path, monkeypatch):
    root = tmp_path / "root"
    root.mkdir()
    path = root / "images_background_small1.zip"
    md5 = fake_archive(
        path,
        extra={
            f"images_background_small1/Broken/character01/9_{d:02d}.png": (
                b"garbage" if d == 7 else _png(d)
            )
            for d in range(1, 21)
        },
    )
    _point_small1_at(monkeypatch, "http://127.0.0.1:9", md5)
    with pytest.raises(MetarunError, match="Broken/character01/9_07.png is not a readable image"):
        Omniglot(root=str(root), background="small1", split="random", download=False)


def test_glyphs_are_deterministic_disjoint_and_varied():
    a = Glyphs(classes=[6, 3, 3], samples_per_class=5)
    b = Glyphs(classes=[6, 3, 3], samples_per_class=5)
    other_seed = Glyphs(classes=[6, 3, 3], samples_per_class=5, seed=1)
    assert torch.equal(a.splits["train"], b.splits["train"])
    assert not torch.equal(a.splits["train"], other_seed.splits["train"])
    assert not torch.equal(a.splits["train"][:3], a.splits["val"])  # disjoint seed streams
    train = a.splits["train"].float()
    drawer_spread = (train - train.mean(1, keepdim=True)).abs().mean()
    class_spread = (train.mean(1) - train.mean((0, 1))).abs().mean()
    assert drawer_spread > 5 and class_spread > 5  # drawers differ, classes differ more
    assert train.max() == 255 and train.mean() < 80  # bright strokes on black


def test_lake_split_holds_out_alphabets_and_tests_on_the_evaluation_set(tmp_path, monkeypatch):
    root = tmp_path / "root"
    root.mkdir()
    background = fake_archive(root / "images_background_small1.zip", alphabets=4, chars=2)
    evaluation = fake_archive(root / "images_evaluation.zip", alphabets=2, chars=3, prefix="Eval")
    monkeypatch.setitem(
        omniglot_module.ARCHIVES, "small1", ("images_background_small1.zip", background)
    )
    monkeypatch.setitem(
        omniglot_module.ARCHIVES, "evaluation", ("images_evaluation.zip", evaluation)
    )
    ds = Omniglot(
        root=str(root), background="small1", split="lake", val_alphabets=1, download=False
    )
    alphabets = {s: {n.split("/")[0] for n in ds.class_names[s]} for s in ds.class_names}
    assert len(alphabets["train"]) == 3 and len(alphabets["val"]) == 1
    assert not alphabets["train"] & alphabets["val"]
    assert len(ds.class_names["test"]) == 6  # every evaluation character, none of background
    same = Omniglot(
        root=str(root), background="small1", split="lake", val_alphabets=1, download=False
    )
    assert same.class_names == ds.class_names  # deterministic
    # an evaluation archive whose alphabets are all background ones leaves nothing to test
    shared = fake_archive(root / "images_evaluation.zip", alphabets=2, chars=3)
    monkeypatch.setitem(omniglot_module.ARCHIVES, "evaluation", ("images_evaluation.zip", shared))
    with pytest.raises(MetarunError, match="nothing is left to meta-test"):
        Omniglot(root=str(root), background="small1", split="lake", val_alphabets=1, download=False)


def _load_small2(root: str, cache: str) -> int:
    import os

    os.environ["METARUN_CACHE_DIR"] = cache
    ds = Omniglot(root=root, background="small2", split="random", download=False)
    return sum(ds.num_classes(s) for s in ("train", "val", "test"))


def _mapped_file(address: int) -> str | None:
    """The file mapped at ``address`` in this process (from /proc/self/maps), if any."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        start, end = (int(x, 16) for x in fields[0].split("-"))
        if start <= address < end:
            return fields[5] if len(fields) > 5 else None
    return None


def test_concurrent_jobs_both_load_and_leave_one_complete_cache(omniglot_root, tmp_path):
    import concurrent.futures
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx) as pool:
        counts = list(pool.map(_load_small2, [str(omniglot_root)] * 2, [str(tmp_path)] * 2))
    assert counts == [156, 156]
    cache = list((omniglot_root / "omniglot-cache").glob("images_*.npy"))
    assert len(cache) == 1 and not list((omniglot_root / "omniglot-cache").glob("*.tmp"))


def test_an_offline_error_names_the_cache_once_when_it_is_the_root(tmp_path, monkeypatch):
    """With no dataset.root the files are looked for in the cache alone: the message says so
    once (it used to read "not found in X (nor in X)")."""
    monkeypatch.setenv("METARUN_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(MetarunError) as raised:
        Omniglot(download=False)
    message = str(raised.value)
    assert f"were not found in {tmp_path / 'cache'} and dataset.download=false" in message
    assert "nor in" not in message
