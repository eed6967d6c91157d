"""Files as people have them: images with transparency or of absurd size, folders with
sub-folders, run folders someone edited, and outputs on a full disk."""

from __future__ import annotations

import errno
import json
import shutil

import pytest
import torch
from PIL import Image, ImageDraw

from metarun import report
from metarun.errors import MetarunError
from metarun.images import images_in, load_image
from tests.test_errors import QUIET

OMNIGLOT_LIKE = {"size": 28, "mode": "L", "invert": True}


def _drawing(background) -> Image.Image:
    mode = "RGBA" if len(background) == 4 else "RGB"
    img = Image.new(mode, (105, 105), background)
    ImageDraw.Draw(img).line([(20, 20), (80, 85)], fill=(0, 0, 0, 255)[: len(mode)], width=6)
    return img


def test_a_transparent_background_is_white_not_black(tmp_path):
    """A drawing app's export (black strokes, transparent background) reads as the same drawing
    on white paper, as Omniglot's files are; before, the background turned black."""
    _drawing((0, 0, 0, 0)).save(tmp_path / "transparent.png")
    _drawing((255, 255, 255)).save(tmp_path / "white.png")
    _drawing((255, 255, 255, 255)).convert("LA").save(tmp_path / "grey_alpha.png")
    white = load_image(tmp_path / "white.png", OMNIGLOT_LIKE)
    assert white.mean() < 0.2  # strokes bright on black after the inversion, as in training
    for name in ("transparent.png", "grey_alpha.png"):
        assert torch.allclose(load_image(tmp_path / name, OMNIGLOT_LIKE), white, atol=1 / 255)
    palette = _drawing((0, 0, 0, 0)).convert("RGB").convert("P")
    palette.info["transparency"] = palette.getpixel((0, 0))
    palette.save(tmp_path / "palette.png", transparency=palette.getpixel((0, 0)))
    assert load_image(tmp_path / "palette.png", OMNIGLOT_LIKE).mean() < 0.2


def test_sixteen_bit_and_rotated_photos_read_as_they_look(tmp_path):
    import numpy as np

    white = load_image(_save(_drawing((255, 255, 255)), tmp_path / "white.png"), OMNIGLOT_LIKE)
    grey16 = np.asarray(_drawing((255, 255, 255)).convert("L"), dtype=np.uint16) * 257
    Image.fromarray(grey16.astype(np.uint16)).save(tmp_path / "deep.png")  # a 16-bit PNG
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    assert torch.allclose(load_image(tmp_path / "deep.png", OMNIGLOT_LIKE), white, atol=1 / 255)
    rotated = _drawing((255, 255, 255)).rotate(-90, expand=True)  # stored sideways ...
    exif = Image.Exif()
    exif[0x0112] = 8  # ... with the EXIF orientation that turns it back for viewing
    rotated.save(tmp_path / "photo.jpg", exif=exif, quality=100)
    photo = load_image(tmp_path / "photo.jpg", OMNIGLOT_LIKE)
    assert (photo - white).abs().mean() < 0.02  # upright again (JPEG noise aside)


def _save(img: Image.Image, path):
    img.save(path)
    return path


def test_a_decompression_bomb_is_refused_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # a 105x105 image is "too large" here
    _drawing((255, 255, 255)).save(tmp_path / "big.png")
    with pytest.raises(MetarunError, match=r"big.png is larger than 1,000 pixels \(a decomp"):
        load_image(tmp_path / "big.png", OMNIGLOT_LIKE)


def test_image_folders_are_searched_below_and_hidden_files_skipped(tmp_path):
    for rel in ("a.png", "sub/b.PNG", "sub/deeper/c.jpg", ".hidden/d.png", "._e.png", "f.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    found = [str(p.relative_to(tmp_path)) for p in images_in(tmp_path)]
    assert found == ["a.png", "sub/b.PNG", "sub/deeper/c.jpg"]


@pytest.fixture
def two_runs(run_inprocess):
    a, _ = run_inprocess([*QUIET, "train.steps=10", "val.every=5"], name="a")
    b, _ = run_inprocess([*QUIET, "train.steps=10", "val.every=5", "seed=1"], name="b")
    return a, b


def test_report_names_an_edited_file_and_compares_the_other_runs(two_runs, tmp_path, capsys):
    a, b = two_runs
    lines = (b / "metrics.jsonl").read_text().splitlines()
    (b / "metrics.jsonl").write_text("\n".join(['{"loss": 1}', *lines]) + "\n")
    report.main([str(a), str(b), "--out", str(tmp_path / "out")])
    printed = capsys.readouterr().out
    (line,) = [line for line in printed.splitlines() if line.startswith("left out, 1 unreadable")]
    assert line.startswith(f"left out, 1 unreadable: {b} ({b / 'metrics.jsonl'} line 1 is not a")
    assert "1 runs, 1 configurations" in printed
    (a / ".hydra" / "overrides.yaml").write_text("{not: a list}\n")
    (b / "summary.json").write_text("[]")
    runs = {r.path.name: r for r in report.find_runs([str(a), str(b)])}
    assert (
        runs["a"].summary["status"] == "unreadable"
        and "overrides.yaml" in runs["a"].summary["error"]
    )
    assert "summary.json is not a metarun summary" in runs["b"].summary["error"]


def test_a_full_disk_keeps_the_earlier_report_whole(two_runs, tmp_path, monkeypatch, capsys):
    from metarun import atomic

    a, b = two_runs
    out = tmp_path / "out"
    report.main([str(a), str(b), "--out", str(out)])
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", full)
    shutil.rmtree(a / "checkpoints")  # the report does not need them; the data differ a bit
    with pytest.raises(SystemExit) as exit_info:
        report.main([str(a), str(b), "--out", str(out)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("metarun-report: error: could not write the report in ")
    assert "No space left on device" in err and len(err.splitlines()) == 1
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no temporary files left
    assert json.loads((a / "summary.json").read_text())["status"] == "finished"


def test_eval_takes_a_run_folder_for_its_best_checkpoint(two_runs):
    from metarun.trained import evaluate_checkpoint

    a, _ = two_runs
    by_folder = evaluate_checkpoint([f"checkpoint={a}"])
    assert by_folder == evaluate_checkpoint([f"checkpoint={a / 'checkpoints' / 'best.pt'}"])
    assert by_folder["test/mse"] == json.loads((a / "summary.json").read_text())["test/mse"]


def test_a_mistyped_dataset_root_leaves_no_folders_behind(tmp_path, monkeypatch):
    from metarun.data import Omniglot

    monkeypatch.setenv("METARUN_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(MetarunError, match="(was|were) not found in .*nothere/deeper"):
        Omniglot(root=str(tmp_path / "nothere" / "deeper"), background="small1", download=False)
    assert not (tmp_path / "nothere").exists()
    assert not list(tmp_path.rglob("*.lock"))  # nor a lock file in the cache folder


def test_non_finite_values_round_trip_through_the_run_files(two_runs, tmp_path, capsys):
    """JSON has no NaN: metarun writes "nan"/"inf" strings and reads them back as floats, so a
    report over a run that logged one compares and plots instead of failing on a string."""
    import math

    from metarun.logging.local import read_metrics

    a, b = two_runs
    lines = (a / "metrics.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    first["train/loss"] = "inf"
    (a / "metrics.jsonl").write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    summary = json.loads((b / "summary.json").read_text())
    (b / "summary.json").write_text(json.dumps({**summary, "test/mse_ci95": "nan"}))
    assert math.isinf(read_metrics(a / "metrics.jsonl")[0]["train/loss"])
    report.main([str(a), str(b), "--out", str(tmp_path / "out")])
    assert "2 runs, 1 configurations" in capsys.readouterr().out
    assert (tmp_path / "out" / "report.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("tool", ["metarun-eval", "metarun-predict"])
def test_every_tool_answers_help_and_a_bare_call_with_its_usage(entry, tool):
    code, err = entry(tool, ["--help"])
    assert code == 0 and err == ""
    code, err = entry(tool, [])
    assert code == 2 and err.startswith(f"usage: {tool} checkpoint=PATH")
    assert "example:" in err and "a run folder" in err


def test_predict_checks_its_overrides_values_as_a_run_does(run_inprocess, tmp_path):
    from metarun.predict import predict

    run, _ = run_inprocess(
        [*QUIET, "dataset=glyphs", "dataset.classes=[12,6,6]", "train.steps=2", "val.every=2"],
        name="glyph_run",
    )
    with pytest.raises(MetarunError, match="algo.inner_lr=nan must be a finite number"):
        predict([f"checkpoint={run}", f"support={tmp_path}", f"query={tmp_path}",
                 "algo.inner_lr=nan"])  # fmt: skip
