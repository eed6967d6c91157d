"""Using trained models: ``metarun-eval`` here, ``metarun-predict`` in :mod:`metarun.predict`.

Both take ``key=value`` arguments like ``metarun``: ``checkpoint=PATH`` (a ``best.pt`` or
``last.pt``) plus config overrides applied on top of the configuration saved in the checkpoint.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from rich.table import Table

from metarun.checkpoint import load_checkpoint, load_model_state
from metarun.errors import MetarunError
from metarun.experiment import Experiment, build_experiment, check_config
from metarun.heads import check_head
from metarun.schemas import MetarunConfig, schema_for
from metarun.usage import parse_args, run_tool, tool_console


def checkpoint_config(checkpoint: dict, overrides: list[str]):
    """The checkpoint's config under the schema with the overrides, checked as a run's is,
    evaluated on any available device."""
    try:
        saved = _under_schemas(checkpoint["config"])
        cfg = OmegaConf.merge(OmegaConf.structured(MetarunConfig), saved)
        cfg.device.name = "auto"
        cfg.resume = False
        cfg.train.init_from = None  # the checkpoint's own weights are loaded, not its start
        # Closed to new keys: an override the saved algo/dataset/backbone lacks is a typo.
        OmegaConf.set_struct(cfg, True)
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))
    except OmegaConfBaseException as e:
        where = f"{e.full_key}: " if getattr(e, "full_key", None) else ""
        raise MetarunError(
            f"bad override: {where}{str(e).splitlines()[0]} (keys must exist in the checkpoint's "
            "config, see its .hydra/config.yaml)"
        ) from None
    check_config(cfg)  # the overrides' values, as metarun checks a run's (predict builds no run)
    return cfg


def _under_schemas(config: dict) -> dict:
    """The saved ``algo``, ``dataset`` and ``backbone`` under their group's schema (types and
    value checks apply to overrides, as in a run); a section no schema fits stays as saved."""
    out = dict(config)
    for group in ("algo", "dataset", "backbone"):
        section = config.get(group)
        schema = schema_for(group, section.get("_target_")) if isinstance(section, dict) else None
        if schema is not None:
            try:
                out[group] = OmegaConf.merge(OmegaConf.structured(schema), section)
            except OmegaConfBaseException:  # an older checkpoint's keys: keep it untyped
                pass
    return out


def checkpoint_file(value: str) -> Path:
    """``checkpoint=``: a checkpoint file, or a run folder (its ``checkpoints/best.pt``)."""
    path = Path(value).expanduser()
    return path / "checkpoints" / "best.pt" if path.is_dir() else path


def load_trained(path: Path, overrides: list[str]) -> Experiment:
    """The experiment of checkpoint ``path`` (its config plus ``overrides``) with its weights,
    built for testing on the checkpoint's dataset."""
    checkpoint = load_checkpoint(path)
    return build_trained(path, checkpoint, checkpoint_config(checkpoint, overrides))


def build_trained(path: Path, checkpoint: dict, cfg, **build) -> Experiment:
    """The experiment of ``cfg`` (from :func:`checkpoint_config`) with the weights of
    ``checkpoint`` (read from ``path``), built by the same code as a run (``build``:
    :func:`build_experiment`'s options; by default for testing on the checkpoint's dataset)."""
    exp = build_experiment(cfg, run_dir=path.parent.parent, **{"splits": ("test",), **build})
    load_model_state(exp.learner, checkpoint, str(path))
    return exp


def evaluate_checkpoint(argv: list[str]) -> dict[str, float]:
    special = {"checkpoint": True, "runs": False, "split": False, "head": False}
    own, overrides = parse_args(argv, "metarun-eval", special)
    path = checkpoint_file(own["checkpoint"])
    if "runs" in own:  # Lake et al.'s official one-shot runs instead of sampled episodes
        return _lake_runs(path, overrides, Path(own["runs"]).expanduser())
    split, head = own.get("split", "test"), own.get("head")
    if split not in ("val", "test"):
        raise MetarunError(f"split={split}: metarun-eval scores split=test (default) or split=val")
    if head is not None:  # before the checkpoint is read
        check_head(head)
    checkpoint = load_checkpoint(path)
    exp = build_trained(path, checkpoint, checkpoint_config(checkpoint, overrides), splits=(split,))
    if head is not None:  # a test-time head on the checkpoint's embeddings (metarun.heads)
        from metarun.algorithms.pretrain import with_head

        if exp.dataset.problem != "classification":
            raise MetarunError(
                f"head={head} classifies images; this checkpoint's dataset is a "
                f"{exp.dataset.problem} one ({type(exp.dataset).__name__})"
            )
        exp.learner = with_head(exp.learner, head)
    scores = exp.evaluate(split)
    shape = exp.eval_shape
    console = tool_console()
    episode = (
        f"{shape.shot} support and {shape.query} query points each"
        if exp.dataset.problem == "regression"  # no classes, so no way
        else f"{shape.way}-way {shape.shot}-shot, {shape.query} queries per class"
    )
    if hasattr(exp.dataset, "describe"):  # a dataset that says it itself (RL tasks)
        episode = exp.dataset.describe(shape)
    what = f"{exp.cfg[split].episodes} {'validation' if split == 'val' else 'test'} episodes"
    if head is not None:
        what += f", head={head}"
    console.print(f"{path}: {what}, {episode}", soft_wrap=True)
    table = Table()
    table.add_column("metric")
    table.add_column("mean ± 95% CI", justify="right")
    for key, value in scores.items():
        if not key.endswith("_ci95"):
            table.add_row(key, f"{value:.4f} ± {scores[key + '_ci95']:.4f}")
    console.print(table)
    return scores


def _lake_runs(path: Path, overrides: list[str], folder: Path) -> dict[str, float]:
    from metarun.lake_runs import score_runs  # imports predict, which imports this module

    if not folder.is_dir():
        raise MetarunError(f"runs={folder} is not a folder (unzip all_runs.zip there)")
    checkpoint = load_checkpoint(path)
    scores = score_runs(path, checkpoint, checkpoint_config(checkpoint, overrides), folder)
    table = Table(title=f"{path}: Lake et al.'s one-shot runs in {folder}")
    table.add_column("run")
    table.add_column("error %", justify="right")
    for key, value in scores.items():
        if key.count("/") == 2:
            table.add_row(key.split("/")[1], f"{value:.1f}")
    table.add_row("mean ± 95% CI", f"{scores['runs/error']:.2f} ± {scores['runs/error_ci95']:.2f}")
    tool_console().print(table)
    return scores


def eval_main(argv: list[str] | None = None) -> None:
    """``metarun-eval checkpoint=PATH [head=NAME] [overrides]``: mean ± 95% CI on fixed test
    episodes (``head``: a test-time head on the checkpoint's embeddings, metarun/heads.py)."""
    run_tool(evaluate_checkpoint, argv, "metarun-eval")
