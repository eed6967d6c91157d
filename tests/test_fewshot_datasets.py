"""miniImageNet (both layouts), CIFAR-FS and FC100 from tiny files in their real formats."""

from __future__ import annotations

import hashlib
import json
import pickle
import re
import shutil

import numpy as np
import pytest
import torch

from metarun.data import CIFARFS, FC100, MiniImageNet, TaskShape
from metarun.data import cifar as cifar_module
from metarun.data import miniimagenet as mini_module
from metarun.data.cifar import FINE_NAMES, SUPERCLASSES, cifar_fs_split, fc100_split
from metarun.errors import MetarunError
from tests.fewshot_fixtures import (
    MINI_CLASSES,
    Payload,
    cifar_batches,
    mini_class_names,
    write_cifar_archive,
    write_mini_csv,
    write_mini_pickles,
)


def codes(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(class code, sample code) from pixel (0, 0) and (0, 1) of the first channel."""
    pixels = (x[..., 0, 0, :2] * 255).round().long()
    return pixels[..., 0] // 2, pixels[..., 1]


# ---- miniImageNet ----------------------------------------------------------------------------


def test_pickle_layout_gives_the_splits_and_episodes_follow_class_dict(tmp_path):
    root = write_mini_pickles(tmp_path / "mini")
    ds = MiniImageNet(root=str(root))
    assert ds.layout == "pickle" and ds.input_shape == (3, 84, 84)
    for split, n in MINI_CLASSES.items():
        assert ds.class_names[split] == mini_class_names(split)
        assert ds.splits[split].shape == (n, 8, 3, 84, 84) and ds.splits[split].dtype == torch.uint8
    batch = ds.sample("train", 3, TaskShape(5, 2, 3), torch.Generator().manual_seed(0))
    assert batch.support_x.shape == (3, 10, 3, 84, 84) and batch.query_x.shape == (3, 15, 3, 84, 84)
    cls, sample = codes(torch.cat([batch.support_x, batch.query_x], 1))
    labels = torch.cat([batch.support_y, batch.query_y], 1)
    for t in range(3):  # one class per label, distinct samples within a class
        for label in range(5):
            rows = labels[t] == label
            assert cls[t][rows].unique().numel() == 1
            assert sample[t][rows].unique().numel() == rows.sum()
    # Every pixel of an image comes from the row class_dict names (not a neighbour's).
    raw = pickle.loads((root / "mini-imagenet-cache-val.pkl").read_bytes())
    row = raw["class_dict"][mini_class_names("val")[2]][5]
    expected = torch.from_numpy(raw["image_data"][row]).permute(2, 0, 1)
    assert torch.equal(ds.splits["val"][2, 5], expected)


def test_cache_is_built_once_then_memory_mapped(tmp_path, monkeypatch, capsys):
    root = write_mini_pickles(tmp_path / "mini")
    first = MiniImageNet(root=str(root))
    assert len(list((root / "miniimagenet-cache").glob("*.npy"))) == 3
    # Each build says what it does and what it took, on stdout (stderr is for problems).
    said = capsys.readouterr()
    assert said.err == ""
    lines = said.out.splitlines()
    for n, split in enumerate(("train", "val", "test")):
        what = f"the {split} split of {root} at 84 px"
        assert lines[2 * n] == f"metarun: building {what}, once: it is cached in {root}/" + (
            "miniimagenet-cache"
        )
        assert re.fullmatch(rf"metarun: built {re.escape(what)} in [\d.]+ s \([\d.]+ MB\)",
                            lines[2 * n + 1])  # fmt: skip
    assert len(lines) == 6

    def no_decoding(*args):
        raise AssertionError("decoded again although the cache holds this split")

    monkeypatch.setattr(mini_module, "decode_pickle", no_decoding)
    again = MiniImageNet(root=str(root))
    assert torch.equal(again.splits["train"], first.splits["train"])
    assert capsys.readouterr().out == ""  # nothing built, nothing said
    from metarun.data.cache import read_cache

    cached = read_cache(next((root / "miniimagenet-cache").glob("train-*.npy")))
    assert isinstance(cached[0], np.memmap)  # pages are read when an episode touches them
    # Replacing a source file (another size or time) invalidates its split's cache.
    path = root / "mini-imagenet-cache-test.pkl"
    path.write_bytes(path.read_bytes())
    with pytest.raises(AssertionError, match="decoded again"):
        MiniImageNet(root=str(root))


def test_csv_layout_reads_jpegs_of_any_size_into_84px_rgb(tmp_path):
    root = write_mini_csv(tmp_path / "mini", per_class=4, size=100)
    ds = MiniImageNet(root=str(root))
    assert ds.layout == "csv"
    assert ds.splits["train"].shape == (MINI_CLASSES["train"], 4, 3, 84, 84)
    colour = ds.splits["train"][3, 2].float().mean(dim=(1, 2))  # (40*3, 10*2, 128), JPEG noise
    assert torch.allclose(colour, torch.tensor([120.0, 20.0, 128.0]), atol=3)


def test_neither_layout_lists_both_and_what_was_found(tmp_path):
    root = tmp_path / "mini"
    root.mkdir()
    (root / "train.csv").write_text("filename,label\n")
    with pytest.raises(
        MetarunError,
        match=r"no miniImageNet files in .*mini \(found only train.csv\); put there either "
        r"images/ with train.csv, val.csv and test.csv .*, or mini-imagenet-cache-train.pkl",
    ):
        MiniImageNet(root=str(root))


@pytest.mark.parametrize(
    "content, message",
    [
        (b"<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title>",
         "mini-imagenet-cache-train.pkl is an HTML page, not the dataset file"),
        (None, "mini-imagenet-cache-train.pkl is not a readable pickle .*truncated"),
        (pickle.dumps({"image_data": np.zeros((4, 84, 84), np.uint8), "class_dict": {"a": [0]}}),
         r"image_data has shape \(4, 84, 84\) \(uint8\), expected N x 84 x 84 x 3 uint8"),
        (pickle.dumps([1, 2, 3]), "is a pickle but not a miniImageNet cache"),
    ],
    ids=["html", "truncated", "wrong shape", "not a cache"],
)  # fmt: skip
def test_a_broken_pickle_is_named(tmp_path, content, message):
    root = write_mini_pickles(tmp_path / "mini")
    path = root / "mini-imagenet-cache-train.pkl"
    path.write_bytes(content if content is not None else path.read_bytes()[:50_000])
    with pytest.raises(MetarunError, match=message):
        MiniImageNet(root=str(root))


def test_a_malicious_pickle_is_refused_before_it_runs(tmp_path):
    root = write_mini_pickles(tmp_path / "mini")
    marker = tmp_path / "pwned"
    payload = {"image_data": Payload(marker), "class_dict": {}}
    (root / "mini-imagenet-cache-val.pkl").write_bytes(pickle.dumps(payload))
    with pytest.raises(MetarunError, match=r"asks to run (os|posix)\.system while unpickling"):
        MiniImageNet(root=str(root))
    assert not marker.exists()


def test_csv_problems_are_named(tmp_path):
    root = write_mini_csv(tmp_path / "mini")
    (root / "images" / f"{mini_class_names('val')[1]}00000002.jpg").unlink()
    with pytest.raises(MetarunError, match=r"n00000101\d+2.jpg is listed in the split's csv but"):
        MiniImageNet(root=str(root))
    root = write_mini_csv(tmp_path / "other")
    (root / "images" / f"{mini_class_names('test')[0]}00000001.jpg").write_bytes(b"\xff\xd8 cut")
    with pytest.raises(MetarunError, match=r"n00000200\d+1.jpg is not a readable image"):
        MiniImageNet(root=str(root))


def test_download_fetches_the_listed_files_and_checks_them(http_server, tmp_path):
    served, url = http_server
    write_mini_pickles(served)
    names = [f"mini-imagenet-cache-{s}.pkl" for s in ("train", "val", "test")]
    files = {
        n: {"url": f"{url}/{n}", "md5": hashlib.md5((served / n).read_bytes()).hexdigest()}
        for n in names
    }
    ds = MiniImageNet(root=str(tmp_path / "root"), download=True, files=files)
    assert ds.splits["test"].shape[0] == MINI_CLASSES["test"]
    files[names[0]]["md5"] = "0" * 32
    (tmp_path / "root2").mkdir()
    with pytest.raises(MetarunError, match="mini-imagenet-cache-train.pkl .* md5 checksum does"):
        MiniImageNet(root=str(tmp_path / "root2"), download=True, files=files)
    with pytest.raises(MetarunError, match="dataset.files.x.pkl needs a url and an md5"):
        MiniImageNet(root=str(tmp_path / "root3"), download=True, files={"x.pkl": {"url": url}})


def test_a_listed_archive_is_unpacked_and_unsafe_members_refused(http_server, tmp_path):
    import tarfile

    served, url = http_server
    layout = write_mini_pickles(tmp_path / "layout")
    with tarfile.open(served / "mini.tar.gz", "w:gz") as tar:
        for p in sorted(layout.iterdir()):
            tar.add(p, arcname=p.name)
    md5 = hashlib.md5((served / "mini.tar.gz").read_bytes()).hexdigest()
    files = {"mini.tar.gz": {"url": f"{url}/mini.tar.gz", "md5": md5}}
    ds = MiniImageNet(root=str(tmp_path / "root"), download=True, files=files)
    assert ds.layout == "pickle"
    with tarfile.open(served / "evil.tar", "w") as tar:
        tar.add(layout / "mini-imagenet-cache-val.pkl", arcname="../../escaped.pkl")
    md5 = hashlib.md5((served / "evil.tar").read_bytes()).hexdigest()
    files = {"evil.tar": {"url": f"{url}/evil.tar", "md5": md5}}
    with pytest.raises(MetarunError, match="evil.tar could not be unpacked"):
        MiniImageNet(root=str(tmp_path / "root4" / "deep"), download=True, files=files)
    assert not (tmp_path / "escaped.pkl").exists()


# ---- CIFAR-FS and FC100 --------------------------------------------------------------------


def test_published_splits_are_disjoint_complete_and_of_the_papers_sizes():
    assert len(FINE_NAMES) == 100 and len(SUPERCLASSES) == 20
    assert all(len(classes) == 5 for classes in SUPERCLASSES.values())
    for split, sizes in ((cifar_fs_split(), (64, 16, 20)), (fc100_split(), (60, 20, 20))):
        parts = [split[s] for s in ("train", "val", "test")]
        assert tuple(len(p) for p in parts) == sizes
        assert sorted(c for p in parts for c in p) == FINE_NAMES  # disjoint and complete
    superclass_of = {c: s for s, cs in SUPERCLASSES.items() for c in cs}
    fc = fc100_split()
    groups = [{superclass_of[c] for c in fc[s]} for s in ("train", "val", "test")]
    assert [len(g) for g in groups] == [12, 4, 4] and not set.intersection(*groups)


def test_cifar_archive_downloads_checks_and_loads_both_splits(http_server, tmp_path, monkeypatch):
    served, url = http_server
    md5 = write_cifar_archive(served / "cifar-100-python.tar.gz")
    kwargs = dict(root=str(tmp_path / "root"), url=f"{url}/cifar-100-python.tar.gz", md5=md5)
    fs = CIFARFS(**kwargs)
    assert [fs.splits[s].shape[0] for s in ("train", "val", "test")] == [64, 16, 20]
    assert fs.splits["train"].shape[1:] == (8, 3, 32, 32) and fs.input_shape == (3, 32, 32)
    # Row i of a split is the class named i-th in the split, with every one of its 8 images.
    for split in ("train", "test"):
        codes = fs.splits[split][:, :, 0, 0, 0].long() // 2
        expected = torch.tensor([FINE_NAMES.index(c) for c in fs.class_names[split]])
        assert torch.equal(codes, expected[:, None].expand_as(codes))

    def no_decoding(*args):
        raise AssertionError("decoded again")

    monkeypatch.setattr(cifar_module, "decode_archive", no_decoding)
    fc = FC100(**kwargs)  # from the cache the first load wrote
    assert [fc.splits[s].shape[0] for s in ("train", "val", "test")] == [60, 20, 20]
    batch = fc.sample("test", 2, TaskShape(5, 1, 3), torch.Generator().manual_seed(0))
    assert batch.query_x.shape == (2, 15, 3, 32, 32)


@pytest.mark.parametrize("problem", ["malicious member", "not cifar-100", "truncated"])
def test_a_bad_cifar_archive_is_named(tmp_path, problem):
    root = tmp_path / "root"
    path = root / "cifar-100-python.tar.gz"
    marker = tmp_path / "pwned"
    batches = cifar_batches()
    if problem == "malicious member":
        batches["meta"]["fine_label_names"] = Payload(marker)
    if problem == "not cifar-100":
        batches["meta"]["fine_label_names"] = [f"c{i}" for i in range(100)]
    md5 = write_cifar_archive(path, batches)
    if problem == "truncated":
        path.write_bytes(path.read_bytes()[:4000])
        md5 = hashlib.md5(path.read_bytes()).hexdigest()
    message = {
        "malicious member": "cifar-100-python.tar.gz:meta asks to run (os|posix).system",
        "not cifar-100": "its class names are not CIFAR-100's",
        "truncated": "is not a complete CIFAR-100 python archive",
    }[problem]
    with pytest.raises(MetarunError, match=message):
        CIFARFS(root=str(root), md5=md5, download=False)
    assert not marker.exists()


def test_cifar_archive_in_a_read_only_root_caches_elsewhere(fewshot_data, tmp_path, monkeypatch):
    root = next(o for o in fewshot_data["metarun.data.CIFARFS"] if o.startswith("dataset.root"))
    md5 = next(o for o in fewshot_data["metarun.data.CIFARFS"] if o.startswith("dataset.md5"))
    copy = tmp_path / "ro"
    copy.mkdir()
    shutil.copy(f"{root.split('=', 1)[1]}/cifar-100-python.tar.gz", copy)
    copy.chmod(0o555)
    monkeypatch.setenv("METARUN_CACHE_DIR", str(tmp_path / "cache"))
    try:
        ds = FC100(root=str(copy), md5=md5.split("=", 1)[1], download=False)
    finally:
        copy.chmod(0o755)
    assert ds.splits["val"].shape[0] == 20
    assert list((tmp_path / "cache" / "cifar100-cache").glob("*.npy"))
    assert not (copy / "cifar100-cache").exists()


@pytest.mark.parametrize(
    "preset, target",
    [
        ("maml_miniimagenet_5w1s", "metarun.data.MiniImageNet"),
        ("protonet_cifar_fs_5w1s", "metarun.data.CIFARFS"),
        ("maml_fc100_5w5s", "metarun.data.FC100"),
    ],
)
def test_a_paper_preset_runs_end_to_end_on_the_tiny_files(
    run_inprocess, fewshot_data, preset, target
):
    short = ["train.steps=4", "train.log_every=2", "val.every=2", "val.episodes=4"]
    short += ["test.episodes=4", "logger=none", "task.train_way=null", "task.meta_batch=2"]
    if "maml" in preset:
        short += ["algo.inner_steps=1", "algo.eval_inner_steps=1"]
    run_dir, _ = run_inprocess([f"experiment={preset}", *fewshot_data[target], *short])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and 0 <= summary["test/acc"] <= 1
