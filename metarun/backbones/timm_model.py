"""Any timm model as a backbone (``backbone=timm backbone.name=<model>``; ``pip install
'metarun[vision]'``).

timm builds the model without its classifier (``num_classes=0``: it returns pooled features),
with the dataset's input channels (``in_chans``: timm adapts a pretrained first convolution to
them, e.g. summing RGB filters for Omniglot's one channel) and, for models with a fixed input
size (vision transformers), the dataset's image size. ``image_size`` resizes every input first
(bilinear), for models pretrained on larger images. Weights:

- ``weights=<file>``: a local file (``.safetensors``, ``.pth`` or ``.bin``) of the model's
  weights, loaded by timm's own loader (so its input-conv adaptation and classifier removal
  apply), offline;
- ``pretrained=true``: timm's default pretrained weights from its hub (needs network access);
- neither: timm's random initialisation.

The embedding size is read from the model (a forward pass of one blank input); an output layer
(MAML) is a linear layer on it. ``batch_norm`` (by default the algorithm's): ``running`` keeps
the model's batch norm as timm builds it; ``transductive`` makes every batch-norm layer
normalise with the statistics of the current batch in training and evaluation alike (what MAML
needs; pretrained running statistics are then dropped). Other normalisation layers (layer norm)
are kept.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from metarun.backbones.base import ImageBackbone
from metarun.errors import MetarunError

WEIGHT_FILES = (".safetensors", ".pth", ".pt", ".bin")


def import_timm():
    """timm, or a one-line error saying how to install it."""
    try:
        import timm
    except ImportError as e:
        raise MetarunError(
            f"backbone=timm needs timm, which did not import ({e}); pip install "
            "'metarun[vision]' (timm and torchvision for your torch build)"
        ) from None
    return timm


def check_name(timm, name: str) -> None:
    """Refuse a model name timm does not know, in one line with the closest names."""
    if timm.is_model(name):
        return
    known = timm.list_models()
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
    hint = (
        f"close names: {', '.join(close)}" if close else "timm.list_models('*pattern*') lists them"
    )
    raise MetarunError(f"backbone.name={name!r} is not a timm model; {hint}")


def check_weights_file(weights: str | None) -> Path | None:
    if weights is None:
        return None
    path = Path(weights).expanduser()
    if not path.is_file():
        raise MetarunError(
            f"backbone.weights={weights}: no such file; give a local weights file of this timm "
            "model, or backbone.weights=null (backbone.pretrained=true downloads timm's own)"
        )
    if path.suffix not in WEIGHT_FILES:
        raise MetarunError(
            f"backbone.weights={weights}: not a weights file ({path.suffix or 'no extension'}); "
            f"timm reads {', '.join(WEIGHT_FILES)}"
        )
    return path.resolve()


class TimmBackbone(ImageBackbone):
    """A timm model's pooled features, then an optional linear head (``out_features``)."""

    def __init__(
        self,
        input_shape: Sequence[int],
        out_features: int | None,
        name: str = "resnet18",
        weights: str | None = None,
        pretrained: bool = False,
        image_size: int | None = None,
        options: dict[str, Any] | None = None,
        batch_norm: str = "running",
    ) -> None:
        super().__init__()
        timm = import_timm()
        check_name(timm, name)
        path = check_weights_file(weights)
        channels, height, width = input_shape
        size = (image_size, image_size) if image_size else (height, width)
        self.image_size = image_size
        kwargs = dict(options or {}, num_classes=0, in_chans=channels)
        if path is not None:
            kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(path)})
        elif pretrained:
            kwargs.update(pretrained=True)
        self.features = _create(timm, name, kwargs, size, weights)
        self.features.eval()
        with torch.no_grad():  # the embedding size, from the model itself
            probe = self.features(torch.zeros(1, channels, *size))
        self.features.train()
        if batch_norm == "transductive":  # after the probe: one image has no batch statistics
            _batch_statistics(self.features)
        if probe.dim() != 2:
            raise MetarunError(
                f"backbone.name={name}: timm returns features of shape {tuple(probe.shape[1:])} "
                "without its classifier, not a vector; choose a model with global pooling"
            )
        self.feature_size = probe.shape[1]
        self.head = nn.Linear(self.feature_size, out_features) if out_features else None
        self.out_features = out_features or self.feature_size
        self.name = name

    def _run(self, x: torch.Tensor, head: nn.Module | None) -> torch.Tensor:
        if self.image_size and tuple(x.shape[-2:]) != (self.image_size,) * 2:
            lead = x.shape[:-3]
            x = x.reshape(-1, *x.shape[-3:])
            x = nn.functional.interpolate(
                x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False
            )
            x = x.reshape(*lead, *x.shape[-3:])
        return super()._run(x, head)

    def extra_repr(self) -> str:
        return f"timm {self.name}, {self.feature_size} features"


def _first_problem(message: str) -> str:
    """The first informative line of a state-dict loading error (a size mismatch, a missing or
    unexpected key), shortened."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    for line in lines:
        if line.startswith(("size mismatch", "Missing key", "Unexpected key")):
            return line[:200]
    return lines[0][:200] if lines else "it does not load"


def _batch_statistics(model: nn.Module) -> None:
    """Every batch-norm layer of ``model`` normalises with the current batch's statistics."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.track_running_stats = False
            m.running_mean = m.running_var = m.num_batches_tracked = None


def _create(timm, name: str, kwargs: dict, size: tuple[int, int], weights: str | None):
    """``timm.create_model``, with the image size for models built for one (vision
    transformers take ``img_size``; convolutional models take any and refuse the keyword)."""
    try:
        try:
            return timm.create_model(name, img_size=size, **kwargs)
        except TypeError as e:
            if "img_size" not in str(e):
                raise
            return timm.create_model(name, **kwargs)
    except (RuntimeError, ValueError, KeyError) as e:
        if weights is None:
            raise
        first = _first_problem(str(e))
        raise MetarunError(
            f"backbone.weights={weights} does not fit timm model {name} ({first}); use a "
            "weights file of that model (e.g. saved from timm.create_model(name).state_dict())"
        ) from None
