"""The catalogue of bad inputs and faults: each ends in one line on stderr and exit code 2.

Every case runs the real entry point (``metarun.cli.main`` or ``metarun-predict``) in this
process, so that a case costs a fraction of a second and faults can be injected with
``monkeypatch``. ``pytest tests/test_errors.py --error-catalogue FILE`` writes the table of
cases and their messages (docs/errors.md holds it).
"""

from __future__ import annotations

import errno
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import torch

from metarun import cli
from metarun.checkpoint import load_checkpoint
from tests.conftest import GLYPHS_SMALL, SHARED_OMNIGLOT, TINY, options

QUIET = [*(o for o in TINY if not o.startswith("algo.")), "logger=none"]
GLYPHS = ["dataset=glyphs", *GLYPHS_SMALL]
SMALL1 = "images_background_small1.zip"
RECORDED: list[tuple[str, str, str]] = []  # (case, command, message) for --error-catalogue


@dataclass
class Case:
    id: str
    args: list[str]  # "{tmp}" stands for the test's temporary folder
    message: str  # a regular expression the error line must match after "metarun: error: "
    prepare: Callable[[Path, pytest.MonkeyPatch], None] | None = None
    check: Callable[[Path], None] | None = None  # what must hold afterwards (nothing lost)
    tool: str = "metarun"
    marks: list = field(default_factory=list)
    environment: str = ""  # shown before the command in the catalogue (variables it sets)


# ---- preparations: files and faults a case needs ---------------------------------------------


def _small1_copy(tmp: Path, transform: Callable[[bytes], bytes] = lambda b: b) -> None:
    root = tmp / "data"
    root.mkdir(exist_ok=True)
    (root / SMALL1).write_bytes(transform((SHARED_OMNIGLOT / SMALL1).read_bytes()))


def _fake_small1(extra: dict, mp: pytest.MonkeyPatch, tmp: Path) -> None:
    from metarun.data import omniglot
    from tests.test_images import fake_archive

    (tmp / "data").mkdir(exist_ok=True)
    md5 = fake_archive(tmp / "data" / SMALL1, extra=extra)
    mp.setitem(omniglot.ARCHIVES, "small1", (SMALL1, md5))


def _corrupt_png(tmp: Path, mp: pytest.MonkeyPatch) -> None:
    from tests.test_images import _png

    member = "images_background_small1/Broken/character01/9_{:02d}.png"
    extra = {member.format(d): b"garbage" if d == 7 else _png(d) for d in range(1, 21)}
    _fake_small1(extra, mp, tmp)


def _disk_full_at_third_save(tmp: Path, mp: pytest.MonkeyPatch) -> None:
    from metarun import checkpoint

    real_save, calls = torch.save, []

    def save(obj, f):  # half a file, then the disk is full, as a real ENOSPC would leave it
        calls.append(1)
        if len(calls) == 3:
            f.write(b"PK\x03\x04 partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(obj, f)

    mp.setattr(checkpoint.torch, "save", save)


def _disk_full_at_fifth_metrics_line(tmp: Path, mp: pytest.MonkeyPatch) -> None:
    from metarun.logging import local

    class FullDisk:
        def __init__(self, f):
            self.f, self.lines = f, 0

        def write(self, text: str) -> int:
            self.lines += 1
            if self.lines == 5:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(text)

        def __getattr__(self, name):
            return getattr(self.f, name)

    real_init = local.LocalFilesSink.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        self._file = FullDisk(self._file)

    mp.setattr(local.LocalFilesSink, "__init__", init)


def _metrics_whole_lines(tmp: Path) -> None:
    lines = (tmp / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [5, 10, 10, 15]
    assert load_checkpoint(tmp / "run" / "checkpoints" / "last.pt")["step"] == 10
    _failed_summary(tmp / "run", "No space left on device")


def _nan_from_step_25(tmp: Path, mp: pytest.MonkeyPatch) -> None:
    from metarun.algorithms.maml import MAML

    real, calls = MAML.meta_backward, []

    def meta_backward(self, batch):
        calls.append(1)
        metrics = real(self, batch)
        if len(calls) >= 25:  # the loss (and so the update) goes bad: the model diverged
            for p in self.parameters():
                p.grad.fill_(float("nan"))
            metrics["loss"] = metrics["loss"] * float("nan")
        return metrics

    mp.setattr(MAML, "meta_backward", meta_backward)


def _malicious_pickle(tmp: Path, mp: pytest.MonkeyPatch) -> None:
    import pickle

    from tests.fewshot_fixtures import Payload, write_mini_pickles

    write_mini_pickles(tmp / "mini")
    payload = {"image_data": Payload(tmp / "pwned"), "class_dict": {}}
    (tmp / "mini" / "mini-imagenet-cache-val.pkl").write_bytes(pickle.dumps(payload))


def _nothing_ran(tmp: Path) -> None:
    assert not (tmp / "pwned").exists()  # the payload would have created it


def _finished_run(tmp: Path, mp: pytest.MonkeyPatch) -> None:
    args = [*QUIET, "train.steps=10", "hydra.run.dir=" + str(tmp / "done")]
    sys_argv, sys.argv = sys.argv, ["metarun", *args]
    try:
        cli.main()
    finally:
        sys.argv = sys_argv


def _finished_pretrain(tmp: Path, mp: pytest.MonkeyPatch) -> None:
    args = [*GLYPHS, "algo=pretrain", *QUIET, "train.steps=4", "hydra.run.dir=" + str(tmp / "pre")]
    sys_argv, sys.argv = sys.argv, ["metarun", *args]
    try:
        cli.main()
    finally:
        sys.argv = sys_argv


def _garbage_checkpoint(tmp: Path, mp: pytest.MonkeyPatch) -> None:
    _finished_run(tmp, mp)
    (tmp / "done" / "checkpoints" / "last.pt").write_bytes(b"<html>not a checkpoint</html>")


def _no_wandb(tmp: Path, mp: pytest.MonkeyPatch) -> None:
    mp.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError


def _wandb_refuses(tmp: Path, mp: pytest.MonkeyPatch) -> None:
    import wandb

    def init(**kwargs):
        raise wandb.errors.CommError("returned error 404 Not Found: entity nobody not found")

    mp.setattr(wandb, "init", init)


def _support_folders(tmp: Path, classes: dict[str, list[str]]) -> None:
    from PIL import Image

    for name, files in classes.items():
        (tmp / "support" / name).mkdir(parents=True)
        for f in files:
            path = tmp / "support" / name / f
            if f.endswith(".png"):
                Image.new("L", (40, 30), 255).save(path)
            else:
                path.write_text("not an image")
    (tmp / "query").mkdir(exist_ok=True)
    Image.new("RGB", (50, 50)).save(tmp / "query" / "q.png")


def _glyph_checkpoint(tmp: Path, mp: pytest.MonkeyPatch) -> None:
    args = [*QUIET, *GLYPHS, "algo=protonet", "task.train_way=null", "train.steps=4"]
    args.append(f"hydra.run.dir={tmp / 'done'}")
    sys_argv, sys.argv = sys.argv, ["metarun", *args]
    try:
        cli.main()
    finally:
        sys.argv = sys_argv


def _predict_setup(classes: dict[str, list[str]], bad_png: bool = False):
    def prepare(tmp: Path, mp: pytest.MonkeyPatch) -> None:
        _glyph_checkpoint(tmp, mp)
        _support_folders(tmp, classes)
        if bad_png:
            (tmp / "support" / "a" / "broken.png").write_bytes(b"\x89PNG garbage")

    return prepare


# ---- checks: nothing already written is lost ------------------------------------------------


# The variables torchrun exports to the second of two processes; no rank 0 listens.
RANK_1_OF_2 = "WORLD_SIZE=2 RANK=1 MASTER_ADDR=127.0.0.1 MASTER_PORT=1 "


def _as_rank_1_of_2(tmp: Path, mp: pytest.MonkeyPatch) -> None:
    for pair in RANK_1_OF_2.split():
        mp.setenv(*pair.split("="))


def _no_run_in(run_dir: Path) -> None:
    assert not run_dir.exists() or not any(run_dir.iterdir())


def _failed_summary(run_dir: Path, message: str) -> None:
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and message in summary["error"]


def _previous_checkpoints_intact(tmp: Path) -> None:
    ckpt = tmp / "run" / "checkpoints"
    assert load_checkpoint(ckpt / "best.pt")["step"] == 10
    assert load_checkpoint(ckpt / "last.pt")["step"] == 10  # the interrupted write left no trace
    assert not list(ckpt.glob(".*.tmp"))
    _failed_summary(tmp / "run", "No space left on device")


def _last_good_checkpoint_kept(tmp: Path) -> None:
    last = load_checkpoint(tmp / "run" / "checkpoints" / "last.pt")
    assert last["step"] == 20
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())
    lines = (tmp / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [5, 10, 10, 15, 20, 20]
    _failed_summary(tmp / "run", "NaN or inf in steps 21-25")


def _run_untouched(tmp: Path) -> None:
    assert json.loads((tmp / "done" / "summary.json").read_text())["status"] == "finished"
    assert load_checkpoint(tmp / "done" / "checkpoints" / "last.pt")["step"] == 10


RUN = ["hydra.run.dir={tmp}/run"]
OMNI = ["dataset=omniglot", "dataset.root={tmp}/data", "dataset.background=small1"]
OMNI += ["dataset.split=random", "dataset.download=false", *QUIET]
NEW_ALPHABETS = ["experiment=protonet_omniglot_new_alphabets", f"dataset.root={SHARED_OMNIGLOT}"]
NEW_ALPHABETS += ["dataset.download=false", *QUIET]
VIEWS_OFF = [f"test.view_warp.{k}=0" for k in ("rotate", "shear", "scale", "translate")]
RL_SMALL = ["task.meta_batch=2", "dataset.horizon=5"]  # left out of the catalogue's commands
RL = ["dataset=navigation2d", "algo=maml_rl", *RL_SMALL, *QUIET]
CASES = [
    # -- config
    Case("unknown group option", ["algo=mamll"], "Could not find 'algo/mamll'; valid options: "
         + ", ".join(options("algo")) + "$"),
    Case("unknown key", ["algo.inner_lrr=0.1"], "algo.inner_lrr: Key 'inner_lrr' not in "
         "'MAMLConfig'; did you mean inner_lr"),
    Case("unknown key added with +", ["+algo.inner_lrr=0.1"], "algo.inner_lrr: Key 'inner_lrr' "
         "not in 'MAMLConfig': added with '\\+', nothing would read it; did you mean inner_lr"),
    Case("unknown keys added with +", ["+epochs=3", "+task.bar=1"], "task.bar: Key 'bar' not "
         "in 'TaskConfig' \\(and epochs\\): added with '\\+', nothing would read it; every "
         "key: metarun --cfg job$"),
    Case("wrong type", ["task.way=five"], "task.way: Value 'five' of type 'str' could not be "
         "converted to Integer; every key and its current value: metarun --cfg job"),
    Case("override syntax", ["algo.inner_lr=(1"], "Error parsing override 'algo.inner_lr=\\(1'"),
    *(
        Case(f"bad {key}", [*algo, *QUIET, f"{key}={value}"], f"{key}={value} must be ")
        for key, value, algo in [
            ("algo.optimizer.lr", 0.0, []), ("algo.inner_lr", -0.1, []),
            ("algo.inner_steps", 0, []), ("train.steps", -1, []), ("task.way", 0, []),
            ("task.shot", 0, []), ("task.query", -1, []), ("task.meta_batch", 0, []),
            ("val.episodes", 0, []), ("algo.read_heads", 0, ["algo=mann"]),
        ]
    ),
    # values checked from the schemas (metarun/checks.py) and combinations, before any work
    Case("negative weight decay", ["algo.optimizer.weight_decay=-0.1"],
         "algo.optimizer.weight_decay=-0.1 must be >= 0"),
    Case("optimizer that does not exist", ["algo.optimizer._target_=torch.optim.Adamm"],
         "torch.optim has no Adamm; did you mean torch.optim.Adam"),
    Case("NaN learning rate", ["algo.optimizer.lr=nan"], "algo.optimizer.lr=nan must be a finite"),
    Case("seed beyond 64 bits", ["seed=99999999999999999999999"], "does not fit in 64 bits"),
    Case("float beyond float32", ["algo.inner_lr=1e300"], "beyond the float32 range"),
    Case("conv backbone on 1-D inputs", ["backbone=conv4"], "backbone Conv4 takes images "
         r"\(channels x height x width\) but this dataset's inputs have shape \(1,\)"),
    Case("ResNet-12 on 1-D inputs", ["backbone=resnet12"], "backbone ResNet12 takes images"),
    Case("negative layer width", ["backbone.hidden=[-5]"], r"backbone.hidden\[0\]=-5 must be "
         "positive"),
    Case("zero-width layer", ["backbone.hidden=[40,0]"], r"backbone.hidden\[1\]=0 must be "
         "positive"),
    Case("empty splits", ["dataset=omniglot", "dataset.split_sizes=[0,0,0]"],
         r"dataset.split_sizes\[0\]=0 must be positive"),
    Case("zero image size", ["dataset=omniglot", "dataset.image_size=0"],
         r"dataset.image_size=0 must be >= 1 and <= 1024 \(pixels per side"),
    Case("negative checkpoint interval", ["checkpoint.every=-1"], "checkpoint.every=-1 must be "
         ">= 0"),
    Case("evaluation chunk not a number", ["val.batch_size=fast"], "val.batch_size='fast' must "
         "be a positive integer or auto"),
    Case("scheduler that is not an object", ["algo.scheduler=steplr"], "algo.scheduler='steplr' "
         "must be null or an object config with a _target_"),
    Case("scheduler without _partial_", ["+algo.scheduler._target_=torch.optim.lr_scheduler."
         "StepLR"], "algo.scheduler: torch.optim.lr_scheduler.StepLR could not be built"),
    Case("algorithm target of another kind", ["algo._target_=torch.nn.Linear"],
         "algo._target_=torch.nn.Linear is not a metarun MetaLearner"),
    Case("a group given a number", ["logger=5"], "Config group override must be a string or a "
         "list. Got int"),
    Case("memory the machine lacks", [*QUIET, "task.meta_batch=100000000"], "this run needs at "
         "least .* GB before any activation .*; lower task.meta_batch"),
    Case("an allocation that fails", ["algo=mann", *GLYPHS, *QUIET, "task.query=0",
         "algo.memory_slots=1000000000000"], r"out of memory \(an allocation of .* bytes\)"),
    Case("unknown MANN read order", ["algo=mann", *GLYPHS, *QUIET, "algo.read_order=later"],
         "algo.read_order='later' is unknown; use one of after_write, before_write, null"),
    Case("test episodes < 2", ["test.episodes=1"], "test.episodes=1 must be >= 2 \\(a 95%"),
    Case("profile past the run's end", ["debug=profile", "train.steps=2"], "profile records "
         "training steps 3-5 but the run has 2 to train; raise train.steps or lower profile"),
    Case("way > classes", [*GLYPHS, *QUIET, "task.way=13"], "validation: 13-way tasks need 13 "
         "classes but the val split has 12; lower task.way"),
    Case("shot + query > samples", [*GLYPHS, *QUIET, "task.shot=10", "task.query=15"],
         "shot 10 \\+ query 15 needs 25 samples per class but the train split has 20"),
    Case("image too small", [*GLYPHS, *QUIET, "dataset.image_size=8", "backbone=conv4"],
         "a 8x8 image is too small for 4 downsampling blocks; raise dataset.image_size"),
    Case("incompatible algo and dataset", ["algo=protonet", "dataset=sinusoid"],
         "algo=protonet classifies; it cannot run on a regression dataset"),
    Case("pre-training on a regression dataset", ["algo=pretrain", "dataset=sinusoid"],
         "algo=pretrain classifies; it cannot run on a regression dataset \\(Sinusoid\\); use "
         "algo=maml or a classification dataset"),
    Case("unknown test-time head", [*GLYPHS, "algo=pretrain", "algo.head=knn"],
         "algo.head='knn' is unknown; use one of prototype, logistic, finetune, cosine"),
    Case("another algorithm's backbone that does not fit", [*GLYPHS, *QUIET, *RUN,
         "algo=protonet", "task.train_way=5", "backbone.hidden=32", "train.init_from={tmp}/pre"],
         "train.init_from=.*/pre: its backbone \\(Pretrain, step 4\\) does not fit this "
         "model's \\(backbone.features.0.weight is \\(64, 1, 3, 3\\), not \\(32, 1, 3, 3\\);"
         ".*use a checkpoint of the same backbone",
         _finished_pretrain, lambda tmp: _no_run_in(tmp / "run")),
    Case("eval: unknown head", ["checkpoint={tmp}/pre", "head=knn"], "head=knn is not a "
         "test-time head; use one of prototype, logistic, finetune, cosine", tool="metarun-eval"),
    Case("eval: a head on a regression checkpoint", ["checkpoint={tmp}/done", "head=logistic"],
         "head=logistic classifies images; this checkpoint's dataset is a regression one "
         "\\(Sinusoid\\)", _finished_run, tool="metarun-eval"),
    Case("image algorithm on an RL task", ["algo=protonet", "dataset=navigation2d"],
         "algo=protonet classifies; it cannot run on a reinforcement dataset \\(Navigation2D\\); "
         "use algo=maml_rl"),
    Case("MAML on an RL task", ["algo=maml", "dataset=navigation2d"], "dataset=navigation2d is "
         "a reinforcement-learning task distribution; .* use algo=maml_rl, fomaml_rl or "
         "pretrained_rl"),
    Case("RL algorithm on images", [*GLYPHS, "algo=maml_rl"], "MAMLRL learns policies for "
         "reinforcement-learning tasks; Glyphs is a classification dataset: use "
         "dataset=navigation2d"),
    Case("MuJoCo task without MuJoCo", ["dataset=halfcheetah_vel", "algo=maml_rl"],
         "dataset=halfcheetah_vel simulates MuJoCo, which is not installed \\(mujoco is "
         "missing\\): pip install 'metarun\\[rl\\]'",
         lambda tmp, mp: mp.setitem(sys.modules, "mujoco", None)),
    Case("RL horizon 0", [*RL, "dataset.horizon=0"], "dataset.horizon=0 must be >= 1"),
    Case("RL trajectories 0", [*RL, "task.query=0"], "meta-training: task.query=0 trajectories "
         "per task; RL tasks need at least 1"),
    Case("RL in fp16", [*RL, "train.precision=fp16"], "meta-RL runs in fp32 only"),
    Case("NaN in the policy", [*RL, "algo.inner_lr=1e30"], "the policy's actions became NaN or "
         "inf; the policy's weights diverged \\(lower algo.inner_lr or algo.optimizer.max_kl\\)"),
    Case("absent CUDA", ["device=cuda"], "device=cuda was requested but no CUDA GPU is usable",
         marks=[pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present")]),
    Case("absent MPS", ["device=mps"], "device=mps was requested but Apple MPS is not available"),
    # -- data
    Case("missing dataset, download=false", OMNI, f"{SMALL1} was not found in .*/data .*"
         "dataset.download=false; put the files there \\(or point dataset.root at them\\) or "
         "set dataset.download=true; background=small1, split=random reads " + SMALL1),
    Case("default Omniglot offline, download=false", ["dataset=omniglot", "dataset.root={tmp}",
         "dataset.download=false", *QUIET], "images_background.zip and images_evaluation.zip "
         "were not found in .* and dataset.download=false; .* background=full, split=lake "
         "reads .*; the small sets need only images_background_small\\{1,2\\}.zip: "
         "dataset.background=small1\\+small2 dataset.split=random"),
    Case("Omniglot download fails (no network)", ["dataset=omniglot", "dataset.root={tmp}",
         *QUIET], "could not download images_background.zip from http://127.0.0.1:1/.*; "
         "offline: put the files in .* \\(or dataset.root\\) with dataset.download=false; "
         "background=full, split=lake reads images_background.zip and images_evaluation.zip",
         lambda tmp, mp: mp.setattr("metarun.data.omniglot.URL", "http://127.0.0.1:1/{name}")),
    Case("wrong checksum (truncated archive)", OMNI, f"{SMALL1} has the wrong md5 checksum",
         lambda tmp, mp: _small1_copy(tmp, lambda b: b[: len(b) // 2]),
         marks=[pytest.mark.omniglot]),
    Case("member outside the target folder", OMNI, "'../../escape.png', which points outside",
         lambda tmp, mp: _fake_small1({"../../escape.png": b"x"}, mp, tmp)),
    Case("corrupt image in archive", OMNI, "Broken/character01/9_07.png is not a readable image",
         _corrupt_png),
    Case("split sizes that are not three", [*OMNI, "dataset.split_sizes=[1,2]"],
         r"dataset.split_sizes=\[1, 2\] needs three numbers: train, val and test classes",
         lambda tmp, mp: _small1_copy(tmp), marks=[pytest.mark.omniglot]),
    # -- the within-alphabet protocol and test-time views
    Case("within-alphabet protocol without alphabets",
         [*QUIET, *GLYPHS, "algo=protonet", "task.train_way=null",
          "test.protocol=within_alphabet"],
         "meta-test: the within_alphabet protocol needs a dataset whose classes belong to "
         "alphabets \\(dataset=omniglot\\); Glyphs has none: use protocol=random"),
    Case("within-alphabet way above every alphabet", [*NEW_ALPHABETS, "task.way=30"],
         "validation: 30-way within-alphabet tasks need an alphabet of 30 characters but the "
         "largest of the val split has 24; lower task.way", marks=[pytest.mark.omniglot]),
    Case("test alphabets all in training", [*NEW_ALPHABETS, "dataset.background=small2"],
         "dataset.evaluation=small2 has no alphabet that background=small2 lacks, so nothing is "
         "left to meta-test", marks=[pytest.mark.omniglot]),
    Case("test-time views with no warp", [*QUIET, *GLYPHS, "algo=protonet", "task.train_way=null",
         "test.views=4", *VIEWS_OFF],
         "test.views=4 with no warp in test.view_warp: every view would be the image itself"),
    Case("validation views beyond memory", [*QUIET, *GLYPHS, "algo=protonet", "task.train_way=null",
         "val.views=256", "val.episodes=100000"], "this run needs at least .* GB before any "
         "activation \\(.* for the validation episodes\\), more than the .* of this cpu; lower "
         "val.episodes or val.views"),
    Case("miniImageNet in neither layout", ["dataset=miniimagenet", "dataset.root={tmp}", *QUIET],
         "no miniImageNet files in /.*; put there either images/ with train.csv, val.csv and "
         "test.csv \\(header filename,label\\), or mini-imagenet-cache-train.pkl"),
    Case("pickle that runs code", ["dataset=miniimagenet", "dataset.root={tmp}/mini", *QUIET],
         "mini-imagenet-cache-val.pkl asks to run (os|posix).system while unpickling; .* refused",
         _malicious_pickle, _nothing_ran),
    # -- run
    Case("run folder not creatable", [*QUIET, "hydra.run.dir={tmp}/file/run"],
         "cannot create the run folder \\(Not a directory: .*/file/run.*\\); set hydra.run.dir",
         lambda tmp, mp: (tmp / "file").write_text("")),
    Case("disk full while checkpointing", [*QUIET, *RUN, "checkpoint.every=10"],
         "could not write .*/checkpoints/(best|last).pt \\(No space left on device\\); the "
         "previous checkpoint is intact", _disk_full_at_third_save, _previous_checkpoints_intact),
    Case("disk full while logging", [*QUIET, *RUN, "checkpoint.every=10"], "could not append "
         "to .*/run/metrics.jsonl \\(No space left on device\\); free space there and resume",
         _disk_full_at_fifth_metrics_line, _metrics_whole_lines),
    Case("NaN loss", [*QUIET, *RUN, "checkpoint.every=10", "train.steps=30"],
         "the training loss became NaN or inf in steps 21-25; checkpoints/last.pt from step 20 "
         "is kept; lower algo.optimizer.lr",
         _nan_from_step_25, _last_good_checkpoint_kept),
    Case("resume from a missing folder", ["resume=true", "resume_dir={tmp}/nope", *QUIET],
         "no checkpoint at .*/nope/checkpoints/last.pt; check the path"),
    Case("resume with another model shape",
         ["resume=true", "resume_dir={tmp}/done", *QUIET, "train.steps=10", "backbone.hidden=[8]"],
         "cannot resume .*/done: the config differs from the checkpoint's in backbone.hidden",
         _finished_run, _run_untouched),
    Case("resume from an unreadable checkpoint",
         ["resume=true", "resume_dir={tmp}/done", *QUIET, "train.steps=10"],
         "last.pt is not a checkpoint file \\(truncated, or not written by metarun\\)",
         _garbage_checkpoint),
    # -- W&B
    Case("W&B not installed", [*TINY, "logger=wandb"], "logger=wandb needs the wandb package, "
         "which is not installed: pip install wandb, or run with logger=none", _no_wandb),
    Case("invalid W&B project", [*TINY, "logger.project=my/project"], "logger.project="
         "'my/project' is not a valid W&B project name \\(contains '/'\\)"),
    Case("W&B refuses the entity", [*TINY, *RUN, "logger.mode=online", "logger.entity=nobody"],
         "W&B refused project 'metarun' / entity 'nobody' .*404 Not Found", _wandb_refuses,
         lambda tmp: _failed_summary(tmp / "run", "W&B refused")),
    # -- data-parallel runs (torchrun / SLURM)
    Case("meta-batch not divisible by the processes", [*QUIET, *RUN, "task.meta_batch=25"],
         "task.meta_batch=25 does not divide among 2 processes; set task.meta_batch to a "
         "multiple of 2", _as_rank_1_of_2, lambda tmp: _no_run_in(tmp / "run"),
         environment=RANK_1_OF_2),
    Case("NCCL backend on CPU", [*QUIET, *RUN, "task.meta_batch=24", "device=cpu",
         "distributed.backend=nccl"], "distributed.backend=nccl needs CUDA but this run's "
         "device is cpu; use distributed.backend=gloo", _as_rank_1_of_2,
         lambda tmp: _no_run_in(tmp / "run"),
         environment=RANK_1_OF_2),
    Case("a process that cannot reach the others", [*QUIET, *RUN, "task.meta_batch=24",
         "distributed.timeout_s=2"], "rank 1 of 2 could not reach the others at 127.0.0.1:1 "
         "within 2 s \\(.*\\); start every process with the same MASTER_ADDR / MASTER_PORT",
         _as_rank_1_of_2, lambda tmp: _no_run_in(tmp / "run"),
         environment=RANK_1_OF_2),
    # -- metarun-predict
    *(
        Case(f"predict: {what}", ["checkpoint={tmp}/done/checkpoints/best.pt",
             "support={tmp}/support", "query={tmp}/query", "out={tmp}/p.csv"], message,
             _predict_setup(classes, bad), tool="metarun-predict")
        for what, classes, bad, message in [
            ("empty support folder", {}, False, "support=.*/support needs one sub-folder per "
             "class \\(two or more\\)"),
            ("class folder without images", {"a": ["x.png"], "b": ["notes.txt"]}, False,
             "support classes without images: b"),
            ("file that is not an image", {"a": ["x.png"], "b": ["y.png"]}, True,
             "support/a/broken.png is not an image Pillow can read; remove it"),
        ]
    ),
    Case("predict: checkpoint of a regression model",
         ["checkpoint={tmp}/done/checkpoints/best.pt", "support={tmp}", "query={tmp}"],
         "this checkpoint's dataset has no image preprocessing", _finished_run,
         tool="metarun-predict"),
]  # fmt: skip


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_bad_input_is_one_line_and_loses_nothing(entry, tmp_path, monkeypatch, case):
    run_case(entry, tmp_path, monkeypatch, case, RECORDED)


def run_case(entry, tmp_path: Path, monkeypatch, case: Case, recorded: list) -> None:
    """Run ``case``: exit code 2, exactly one error line matching its message, its check holds;
    the line is recorded for the catalogue."""
    if case.prepare:
        case.prepare(tmp_path, monkeypatch)
    args = [a.replace("{tmp}", str(tmp_path)) for a in case.args]
    code, err = entry(case.tool, args)
    lines = [line for line in err.splitlines() if not line.startswith("metarun: warning:")]
    assert code == 2, err
    assert len(lines) == 1, err
    prefix = f"{case.tool}: error: "
    assert lines[0].startswith(prefix), err
    assert re.search(case.message, lines[0][len(prefix) :]), lines[0]
    if case.check:
        case.check(tmp_path)
    hidden = QUIET + RL_SMALL
    shown = " ".join(a.replace("{tmp}", "/tmp/x") for a in case.args if a not in hidden)
    command = f"{case.environment}{case.tool} {shown}"
    recorded.append((case.id, command, lines[0].replace(str(tmp_path), "/tmp/x")))


def test_hydra_full_error_shows_the_traceback_and_bugs_keep_theirs(entry, monkeypatch):
    from metarun.errors import MetarunError
    from metarun.trainer import Trainer

    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(
        MetarunError,
        match="test.episodes=1 must be >= 2 \\(a 95% confidence interval needs two episodes\\)",
    ):
        entry("metarun", ["test.episodes=1"])
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")

    def bug(self, logger):
        raise ZeroDivisionError("a bug in metarun")

    monkeypatch.setattr(Trainer, "fit", bug)
    with pytest.raises(ZeroDivisionError, match="a bug in metarun"):  # not a one-line exit
        entry("metarun", QUIET)
    from hydra.errors import InstantiationException

    from metarun.algorithms import MAML

    def broken_init(self, *args, **kwargs):
        raise NameError("name 'x' is not defined")

    monkeypatch.setattr(MAML, "__init__", broken_init)
    with pytest.raises(InstantiationException, match="NameError"):  # a constructor's bug too
        entry("metarun", QUIET)
