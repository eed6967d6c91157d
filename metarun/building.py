"""Building config objects: ``instantiate`` with a user's mistakes told in one line."""

from __future__ import annotations

from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from metarun.errors import MetarunError


def build(node: DictConfig, **kwargs: Any) -> Any:
    """``instantiate``, letting a user error raised by a constructor through unwrapped.

    A nested object that is not metarun's own (``algo.optimizer``, ``algo.scheduler``: torch's
    classes with the user's options) refusing its options is a user error too, told in one line;
    metarun's own constructors failing otherwise keep their traceback (a bug)."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        if isinstance(e.__cause__, MetarunError):
            raise e.__cause__ from None
        where = str(e).rsplit("full_key: ", 1)[-1].strip() if "full_key: " in str(e) else ""
        target = OmegaConf.select(node._get_root(), f"{where}._target_", default=None)
        if not where or not isinstance(target, str) or target.startswith("metarun."):
            raise
        cause = str(e.__cause__ or e).splitlines()[0]
        raise MetarunError(
            f"{where}: {target} could not be built ({cause}); fix {where}.* (optimizers and "
            "schedulers need _partial_: true: metarun passes the parameters or optimizer)"
        ) from None
