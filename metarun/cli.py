"""``metarun``: Hydra entry point. Thin on purpose: compose, then hand the config to ``run``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from metarun.config import register_configs
from metarun.errors import Interrupted, MetarunError


def config_dir() -> str:
    """Configs ship inside the wheel (``metarun/configs``); a source checkout has ``configs/``."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "configs", here.parent / "configs"):
        if (candidate / "train.yaml").is_file():
            return str(candidate)
    raise RuntimeError(f"metarun's configs are missing (looked in {here}/configs and ../configs)")


register_configs()


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
def _main(cfg: DictConfig) -> float:
    from metarun.run import run  # heavy imports (torch, wandb) after Hydra handled --help etc.

    try:
        return run(cfg)
    except Interrupted as e:
        print(f"metarun: {e}", file=sys.stderr)
        sys.exit(128 + e.signum)
    except MetarunError as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"metarun: error: {e}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    _main()


if __name__ == "__main__":
    main()
