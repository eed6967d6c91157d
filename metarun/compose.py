"""The config ``metarun <overrides>`` would run, composed in this process (Hydra's compose API
on metarun's configs): the one helper tests, benchmarks and scripts share."""

from __future__ import annotations

from typing import Sequence

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from metarun.cli import config_dir


def compose_config(overrides: Sequence[str] = (), hydra: bool = False) -> DictConfig:
    """The composed root config for ``overrides``; ``hydra=True`` keeps Hydra's own node."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            return compose("train", overrides=list(overrides), return_hydra_config=hydra)
    finally:
        GlobalHydra.instance().clear()
