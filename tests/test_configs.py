"""Every config option and preset composes, validates against its schema and instantiates."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException
from hydra.utils import get_class

from metarun.algorithms import MetaLearner
from metarun.building import build
from metarun.data import TaskShape
from metarun.errors import MetarunError
from tests.conftest import GLYPHS_SMALL, OMNIGLOT_SMALL, options

# Options that need an image dataset get glyphs; image datasets run in their small offline form;
# RL algorithms get navigation2d and RL task distributions MAML-RL, with short episodes.
SHORT = ["dataset.horizon=3", "task.shot=2", "task.query=2"]
NEEDS_IMAGES = {
    "algo=protonet": ["dataset=glyphs"],
    "algo=pretrain": ["dataset=glyphs"],
    "backbone=timm": ["dataset=glyphs", "algo=protonet", "backbone.name=resnet10t"],
    "algo=mann": ["dataset=glyphs"],
    "algo=lstm": ["dataset=glyphs"],
    "backbone=conv4": ["dataset=glyphs"],
    "backbone=resnet12": ["dataset=glyphs", "algo=protonet"],
    **{f"algo={a}": ["dataset=navigation2d", *SHORT] for a in ("maml_rl", "fomaml_rl")},
    "algo=pretrained_rl": ["dataset=navigation2d", *SHORT],
    **{f"dataset={d}": ["algo=maml_rl", *SHORT] for d in ("navigation2d", "halfcheetah_vel")},
    **{f"dataset={d}": ["algo=maml_rl", *SHORT] for d in ("halfcheetah_dir", "ant_vel", "ant_dir")},
    **{f"experiment=maml_rl_{d}": SHORT for d in ("navigation2d", "halfcheetah_vel")},
    **{f"experiment=maml_rl_{d}": SHORT for d in ("halfcheetah_dir", "ant_vel", "ant_dir")},
}
SMALL_DATA = {"metarun.data.Omniglot": OMNIGLOT_SMALL, "metarun.data.Glyphs": GLYPHS_SMALL}


def _build(cfg):
    dataset = build(cfg.dataset)
    algo_cls = get_class(cfg.algo._target_)
    backbone = build(
        cfg.backbone,
        input_shape=dataset.input_shape,
        out_features=algo_cls.output_size(dataset, cfg.task.way),
    )
    learner = build(cfg.algo, backbone=backbone, **algo_cls.dataset_arguments(dataset))
    optimizer, _ = learner.configure_optimizers()
    return dataset, learner, optimizer


def _needs_data(override: str) -> list:
    """Omniglot options run on the real archives (skipped without them); timm models where
    timm imports (make test-vision)."""
    if override == "backbone=timm":
        return [pytest.mark.timm, pytest.mark.skipif(not _imports("timm"), reason="timm: make "
                                                     "test-vision runs it")]  # fmt: skip
    return [pytest.mark.omniglot] if "omniglot" in override else []


def _imports(module: str) -> bool:
    try:
        __import__(module)
    except Exception:  # torchvision beside another torch build fails with RuntimeError too
        return False
    return True


@pytest.mark.parametrize(
    "override",
    [
        pytest.param(o, marks=_needs_data(o))
        for o in [
            f"{g}={o}"
            for g in ("algo", "dataset", "backbone", "device", "logger")
            for o in options(g)
        ]
        + [f"experiment={o}" for o in options("experiment")]
    ],
)
def test_every_option_composes_and_instantiates(compose_cfg, fewshot_data, override):
    overrides = [override, *NEEDS_IMAGES.get(override, [])]
    cfg = compose_cfg(overrides)
    small = {**SMALL_DATA, **fewshot_data}
    cfg = compose_cfg([*overrides, *small.get(cfg.dataset._target_, [])])
    dataset, learner, optimizer = _build(cfg)
    assert isinstance(learner, MetaLearner)
    assert len(optimizer.param_groups[0]["params"]) == len(list(learner.parameters())) > 0
    generator = __import__("torch").Generator().manual_seed(0)
    if learner.image_batch:  # supervised pre-training: a mini-batch of the split's images
        batch = dataset.sample_images("train", 4, 0, 0, generator)
    else:
        shape = TaskShape(cfg.task.way, cfg.task.shot, cfg.task.query)
        batch = dataset.sample("train", 2, shape, generator)
    loss, metrics = learner.meta_loss(batch)
    assert loss.ndim == 0 and "loss" in metrics


def test_fomaml_is_maml_with_first_order(compose_cfg):
    from hydra.utils import get_class

    maml, fomaml = compose_cfg(["algo=maml"]).algo, compose_cfg(["algo=fomaml"]).algo
    # FOMAML has a module of its own (algorithms/fomaml.py): MAML's class with first_order on.
    assert issubclass(get_class(fomaml._target_), get_class(maml._target_))
    assert fomaml.first_order is True and maml.first_order is False
    assert {k: v for k, v in fomaml.items() if k not in ("first_order", "_target_")} == {
        k: v for k, v in maml.items() if k not in ("first_order", "_target_")
    }


def test_paper_preset_holds_the_papers_settings(compose_cfg):
    cfg = compose_cfg(["experiment=maml_sinusoid"])
    assert (cfg.task.shot, cfg.task.query, cfg.task.meta_batch) == (10, 10, 25)
    assert (cfg.algo.inner_lr, cfg.algo.inner_steps, cfg.algo.optimizer.lr) == (0.01, 1, 1e-3)
    assert cfg.train.steps == 70000 and list(cfg.algo.eval_report_steps) == [0, 1, 5, 10]
    assert compose_cfg(["experiment=fomaml_sinusoid"]).algo.first_order is True


def test_logger_none_disables_wandb(compose_cfg):
    assert compose_cfg(["logger=none"]).logger is None
    # A preset's W&B tags must not bring a disabled logger back.
    assert compose_cfg(["experiment=maml_sinusoid", "logger=none"]).logger is None
    assert compose_cfg([]).logger.mode.value == "auto"


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("algo.inner_lrr=0.1", "Key 'inner_lrr' not in 'MAMLConfig'"),  # misspelt key
        ("train.stepz=10", "Key 'stepz' not in 'TrainConfig'"),
        ("algo.inner_lr=fast", "Value 'fast' of type 'str' could not be converted to Float"),
        ("task.shot=1.5", "Value '1.5' of type 'float' could not be converted to Integer"),
        ("device.name=tpu", "Invalid value 'tpu', expected one of [auto, cpu, cuda, mps]"),
        ("algo=mamll", "Could not find 'algo/mamll'"),  # unknown option
    ],
)
def test_schema_rejects_bad_overrides_at_compose_time(compose_cfg, override, named):
    with pytest.raises(ConfigCompositionException) as info:
        compose_cfg([override])
    assert named in str(info.value) + str(info.value.__cause__)


def test_batch_norm_follows_the_algorithm_and_maml_refuses_running_statistics(compose_cfg):
    assert compose_cfg(["dataset=glyphs", "algo=protonet"]).backbone.batch_norm == "running"
    assert compose_cfg(["dataset=glyphs", "backbone=resnet12"]).backbone.batch_norm == (
        "transductive"
    )  # algo=maml
    cfg = compose_cfg(["dataset=glyphs", *GLYPHS_SMALL, "backbone.batch_norm=running"])
    with pytest.raises(MetarunError, match="backbone.batch_norm=transductive"):
        _build(cfg)


def test_algorithm_dataset_pairs_get_their_papers_settings(compose_cfg):
    maml = compose_cfg(["algo=maml", "dataset=omniglot"])
    assert (maml.algo.inner_lr, maml.algo.eval_inner_steps) == (0.4, 3)
    # Image defaults are sized for a first run on a CPU; the paper's meta-batch is the preset's.
    assert maml.task.meta_batch == compose_cfg(["algo=maml", "dataset=glyphs"]).task.meta_batch == 8
    assert compose_cfg(["experiment=fomaml_omniglot_5w1s"]).task.meta_batch == 32
    # Backbone keys stay out of the pair configs: any backbone can be combined with them.
    assert compose_cfg(["algo=maml", "dataset=omniglot", "backbone=resnet12"]).backbone.channels
    assert compose_cfg(["algo=fomaml", "dataset=glyphs"]).algo.inner_lr == 0.4
    proto = compose_cfg(["algo=protonet", "dataset=omniglot"])
    assert proto.backbone.batch_norm == "running" and proto.task.train_way == 60
    assert proto.algo.scheduler.step_size == 2000 and proto.task.meta_batch == 1
    # The command line still wins, and sinusoid keeps MAML's regression defaults.
    assert compose_cfg(["algo=maml", "dataset=omniglot", "algo.inner_lr=0.2"]).algo.inner_lr == 0.2
    assert compose_cfg(["algo=maml"]).algo.inner_lr == 0.01


@pytest.mark.parametrize("shot", [1, 5])
def test_omniglot_presets_hold_the_papers_settings(compose_cfg, shot):
    maml = compose_cfg([f"experiment=maml_omniglot_5w{shot}s"])
    assert (maml.task.way, maml.task.shot, maml.task.meta_batch, maml.task.query) == (
        5,
        shot,
        32,
        15,
    )
    assert (maml.algo.inner_lr, maml.backbone.pool, maml.dataset.rotations) == (0.4, "stride", True)
    big = compose_cfg([f"experiment=fomaml_omniglot_20w{shot}s"])
    assert (big.task.way, big.task.meta_batch, big.algo.inner_lr, big.algo.inner_steps) == (
        20,
        16,
        0.1,
        5,
    )
    assert big.algo.first_order is True
    proto = compose_cfg([f"experiment=protonet_omniglot_20w{shot}s"])
    assert (proto.task.way, proto.task.shot, proto.task.train_way, proto.test.episodes) == (
        20,
        shot,
        60,
        1000,
    )


@pytest.mark.parametrize(
    ("preset", "direction"),
    [
        ("maml_sinusoid", "minimize"),
        ("maml_omniglot", "maximize"),
        ("protonet_omniglot", "maximize"),
    ],
)
def test_hparams_search_presets_compose_with_the_right_direction(compose_cfg, preset, direction):
    cfg = compose_cfg([f"hparams_search={preset}"])
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper")
    assert cfg.hydra.sweeper.direction == direction and cfg.hydra.sweeper.params
    assert cfg.algo._target_.lower().endswith(preset.split("_")[0])


def test_slurm_launcher_config_composes(compose_cfg):
    cfg = compose_cfg(["hydra/launcher=slurm", "hydra.launcher.partition=gpu"])
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert (cfg.hydra.launcher.partition, cfg.hydra.launcher.gpus_per_node) == ("gpu", 1)


def test_the_readme_form_of_dataset_files_composes(compose_cfg):
    spec = '{mini-imagenet-cache-train.pkl: {url: "https://example.org/t.pkl", md5: "abc"}}'
    cfg = compose_cfg(["dataset=miniimagenet", f"++dataset.files={spec}"])
    assert cfg.dataset.files["mini-imagenet-cache-train.pkl"].md5 == "abc"


def test_the_schemas_choices_are_what_the_classes_accept():
    """A string option's values live in its class (which checks them when used directly) and in
    the schema's CHOICES (checked before any work): they must agree."""
    from metarun.algorithms import lrua, reptile
    from metarun.backbones import mlp, norm
    from metarun.data import omniglot
    from metarun.schemas import (
        BATCH_NORMS,
        Conv4Config,
        MANNConfig,
        MLPConfig,
        OmniglotConfig,
        ReptileConfig,
    )

    assert set(MLPConfig.CHOICES["activation"]) == set(mlp._ACTIVATIONS)
    assert set(ReptileConfig.CHOICES["inner_optimizer"]) == set(reptile.INNER_OPTIMIZERS)
    assert set(OmniglotConfig.CHOICES["background"]) == set(omniglot.BACKGROUNDS)
    assert set(OmniglotConfig.CHOICES["evaluation"]) == set(omniglot.TEST_SETS)
    from metarun.data import episodes
    from metarun.schemas.run import TestConfig

    assert set(TestConfig.CHOICES["protocol"]) == set(episodes.PROTOCOLS)
    assert set(MANNConfig.CHOICES["write"]) == set(lrua.WRITE_KINDS)
    assert set(MANNConfig.CHOICES["read_order"]) - {None} == set(lrua.READ_ORDERS)
    for kind in BATCH_NORMS:
        norm.make_batch_norm(kind, 4)
    with pytest.raises(MetarunError):
        norm.make_batch_norm("group", 4)
    from metarun.backbones import Conv4

    for pool in Conv4Config.CHOICES["pool"]:
        Conv4((1, 28, 28), 5, pool=pool)
    with pytest.raises(MetarunError):
        Conv4((1, 28, 28), 5, pool="avg")
