"""``train.precision``: bf16 / fp16 autocast of training steps (inner loops included) and
evaluations, against the fp32 path of the same weights and batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from metarun.compose import compose_config
from metarun.experiment import build_experiment
from metarun.precision import Precision
from tests.conftest import GLYPHS_SMALL

ALGOS = {
    "maml": ["algo=maml", "algo.inner_steps=2"],
    "protonet": ["algo=protonet", "task.train_way=null"],
    # One SGD inner step: Adam's first steps move by about lr * sign(gradient), so the conv
    # biases before batch norm (true gradient 0, float noise either side) flip with any
    # rounding, and over 5 steps the weight difference Reptile follows gathers the rounding of
    # each (bf16, SGD: cosine 0.82 at 5 steps, 0.998 at 1).
    "reptile": ["algo=reptile", "algo.inner_optimizer=sgd", "algo.inner_lr=0.1"]
    + ["algo.inner_steps=1"],
    "mann": ["algo=mann", "task.query=0", "task.shot=4"],
}


def _gradient(algo: str, precision: str, written: bool = False) -> tuple[torch.Tensor, dict]:
    """One training step's meta-gradient (flattened) and metrics, from seed-0 weights
    (``written``: MAML's task step with its inner gradient written out, what compiles)."""
    overrides = ["dataset=glyphs", *GLYPHS_SMALL, *ALGOS[algo], "task.meta_batch=4"]
    cfg = compose_config([*overrides, f"train.precision={precision}"])
    exp = build_experiment(cfg, run_dir=Path("unused"))
    if written:
        exp.learner.compile_with(lambda fn, eager, what: fn)
    batch = exp.train_batch(torch.Generator().manual_seed(0))
    if exp.precision.scaler is not None:  # a scale that does not overflow: MAML's second-order
        # backward overflows fp16 from a scale of 16 here (the scaler then skips the step and
        # halves it; tested below)
        exp.precision.scaler = torch.amp.GradScaler("cpu", init_scale=1.0)
    exp.learner.loss_scale = exp.precision.loss_scale()
    with exp.precision.autocast():
        metrics = exp.learner.meta_backward(batch)
    scale = 1.0 if exp.learner.loss_scale is None else float(exp.learner.loss_scale)
    grads = [p.grad.flatten() / scale for p in exp.learner.parameters() if p.grad is not None]
    return torch.cat(grads).double(), metrics


#: Bounds on the meta-gradient under autocast against fp32's: cosine above, norm ratio within.
#: bf16 keeps 8 bits of mantissa, fp16 11; MAML's second-order gradient through two inner
#: steps is the least precise (measured: bf16 cosine 0.946, fp16 0.996; ProtoNet 0.988 / 0.999).
BOUNDS = {"bf16": (0.92, 0.06), "fp16": (0.98, 0.03)}


def _assert_close(reference, ref_metrics, mixed, metrics, precision: str) -> None:
    cosine = float(torch.nn.functional.cosine_similarity(reference, mixed, dim=0))
    least, norm = BOUNDS[precision]
    assert cosine > least
    assert float(mixed.norm() / reference.norm()) == pytest.approx(1, abs=norm)
    assert float(metrics["loss"]) == pytest.approx(float(ref_metrics["loss"]), rel=0.02)


@pytest.mark.parametrize("algo", sorted(ALGOS))
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_gradients_stay_close_to_fp32(algo, precision):
    """One training step from the same weights and batch: the meta-gradient under autocast
    (fp16: scaled, then unscaled) points where fp32's does, with about its norm, and the step's
    loss agrees within 2%."""
    reference, ref_metrics = _gradient(algo, "fp32")
    mixed, metrics = _gradient(algo, precision)
    _assert_close(reference, ref_metrics, mixed, metrics, precision)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mamls_written_out_step_under_autocast_stays_close_to_fp32(precision):
    """The task step ``train.compile`` compiles (its convolutions' backward cast to the
    autocast dtype as autograd's would be) keeps the same bounds against fp32 autograd."""
    reference, ref_metrics = _gradient("maml", "fp32")
    mixed, metrics = _gradient("maml", precision, written=True)
    _assert_close(reference, ref_metrics, mixed, metrics, precision)


def test_fp16_skips_a_step_whose_gradients_overflowed_and_lowers_its_scale():
    """The fp16 scaler's contract: gradients unscaled before the step; an inf one skips the
    step (the weights stay) and halves the scale; a finite one updates with the true gradient."""
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.SGD([weight], lr=0.5)
    precision = Precision("fp16", torch.device("cpu"))
    scale = float(precision.loss_scale())
    weight.grad = torch.tensor([float("inf"), 0.0, 0.0])
    precision.step(optimizer)
    assert torch.equal(weight.detach(), torch.ones(3))
    assert float(precision.loss_scale()) == scale / 2
    weight.grad = torch.full((3,), 2.0) * precision.loss_scale()  # what a scaled backward gives
    precision.step(optimizer)
    assert torch.allclose(weight.detach(), torch.zeros(3))  # 1 - 0.5 * 2
    assert Precision("fp32", torch.device("cpu")).loss_scale() is None
