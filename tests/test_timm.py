"""backbone=timm: a timm model from a local weights file embeds as timm itself does, its input
adapted to the dataset; bad names and files are one line. Needs timm and torchvision (`make
test-vision` builds .venv-vision with both and runs these); skipped where they do not import."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import GLYPHS_SMALL, TINY

try:
    import timm
except Exception as e:  # ImportError, or torchvision's own failure to load beside this torch
    timm = None
    WHY = f"needs timm and torchvision ({type(e).__name__}); run them with `make test-vision`"

pytestmark = [
    pytest.mark.timm,
    pytest.mark.skipif(timm is None, reason=WHY if timm is None else ""),
]

MODEL = "resnet10t"  # a small convolutional model (5M weights)
GLYPHS = [
    "dataset=glyphs",
    *GLYPHS_SMALL,
    *(o for o in TINY if not o.startswith("algo.")),
    "logger=none",
]


def _weights(tmp_path, name=MODEL, suffix=".safetensors"):
    """A weights file of a randomly initialised ``name`` with its classifier, as a user's
    download would be; returns (the model, the file)."""
    from safetensors.torch import save_file

    torch.manual_seed(1)
    model = timm.create_model(name, pretrained=False).eval()
    path = tmp_path / f"{name}{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    else:
        torch.save(model.state_dict(), path)
    return model, path


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_weights_give_timm_s_own_embedding(tmp_path, suffix):
    from metarun.backbones import TimmBackbone

    reference, path = _weights(tmp_path, suffix=suffix)
    ours = TimmBackbone((3, 40, 40), None, name=MODEL, weights=str(path)).eval()
    x = torch.rand(2, 5, 3, 40, 40)
    with torch.no_grad():
        expected = reference.forward_head(reference.forward_features(x.flatten(0, 1)), True)
        assert ours.out_features == reference.num_features
        assert torch.allclose(ours(x), expected.view(2, 5, -1), atol=1e-5)


def test_one_channel_input_sums_the_rgb_filters_as_timm_does(tmp_path):
    from metarun.backbones import TimmBackbone

    reference, path = _weights(tmp_path)
    ours = TimmBackbone((1, 28, 28), 5, name=MODEL, weights=str(path)).eval()
    conv = reference.conv1[0] if isinstance(reference.conv1, torch.nn.Sequential) else None
    first = conv if conv is not None else reference.conv1
    with torch.no_grad():
        first.weight.copy_(first.weight.sum(1, keepdim=True).expand_as(first.weight) / 3)
        x = torch.rand(4, 1, 28, 28)
        expected = reference.forward_head(reference.forward_features(x.expand(-1, 3, -1, -1)), True)
        assert torch.allclose(ours.embed(x), expected, atol=1e-4)
        assert ours(x).shape == (4, 5)  # a MAML output layer on the embedding


def test_timm_backbones_train_with_protonet_and_maml(run_inprocess):
    for algo in ("protonet", "maml", "pretrain"):
        steps = ["algo.eval_inner_steps=1"] if algo == "maml" else []
        run_dir, _ = run_inprocess(
            [f"algo={algo}", "backbone=timm", f"backbone.name={MODEL}", "task.train_way=5",
             *steps, *GLYPHS], algo)  # fmt: skip
        assert (run_dir / "checkpoints" / "best.pt").is_file()


def test_bad_timm_names_and_weights_are_one_line(entry, tmp_path, monkeypatch):
    from tests.test_errors import RECORDED, Case, run_case

    _, path = _weights(tmp_path)
    quiet = [*GLYPHS, "backbone=timm"]
    cases = [
        Case("timm: unknown model name", [*quiet, "backbone.name=resnet181"],
             "backbone.name='resnet181' is not a timm model; close names: resnet18"),
        Case("timm: weights of another model", [*quiet, "backbone.name=resnet18",
             "backbone.weights={tmp}/" + path.name], "backbone.weights=.*/resnet10t.safetensors "
             "does not fit timm model resnet18 \\(size mismatch for .*\\); use a "
             "weights file of that model"),
        Case("timm: missing weights file", [*quiet, "backbone.weights={tmp}/none.pth"],
             "backbone.weights=.*/none.pth: no such file"),
    ]  # fmt: skip
    for case in cases:
        run_case(entry, tmp_path, monkeypatch, case, RECORDED)


@pytest.mark.parametrize("image_size", [None, 48])
def test_a_fixed_size_model_is_built_for_the_dataset_s_images(image_size):
    from metarun.backbones import TimmBackbone

    ours = TimmBackbone((1, 28, 28), None, name="vit_tiny_patch16_224", image_size=image_size)
    size = image_size or 28
    assert tuple(ours.features.patch_embed.img_size) == (size, size)
    assert ours.features.patch_embed.proj.in_channels == 1
    assert ours.eval()(torch.rand(2, 3, 1, 28, 28)).shape == (2, 3, ours.features.num_features)
