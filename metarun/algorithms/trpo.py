"""Trust-region policy optimisation's update (Schulman et al. 2015) as a torch optimizer.

``TRPO(params, max_kl=0.01).step(closure)`` with ``closure(differentiable) -> (loss, kl)``: the
surrogate loss and the mean KL divergence from the policy the data was sampled with, evaluated
at the parameters' current values (with a graph when ``differentiable``). The step is the one of
the MAML paper's outer loop (and of rllab / pytorch-maml-rl): the natural-gradient direction
``H^-1 g`` by ``cg_iters`` conjugate-gradient iterations on Hessian-vector products of the KL
(plus ``damping``), scaled so that its quadratic KL estimate is ``max_kl``, then a backtracking
line search (``backtrack_ratio`` per try, ``max_backtracks`` tries) that accepts the first step
improving the loss with a KL below ``max_kl``; when none does, the parameters stay as they were.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.nn.utils import parameters_to_vector, vector_to_parameters

Closure = Callable[[bool], tuple[torch.Tensor, torch.Tensor]]


def conjugate_gradient(
    hvp: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, iters: int, tol: float = 1e-10
) -> torch.Tensor:
    """An approximate solution of ``H x = b`` after ``iters`` conjugate-gradient iterations."""
    x = torch.zeros_like(b)
    r, p = b.clone(), b.clone()
    rr = r.dot(r)
    for _ in range(iters):
        hp = hvp(p)
        alpha = rr / p.dot(hp)
        x = x + alpha * p
        r = r - alpha * hp
        rr_next = r.dot(r)
        if rr_next < tol:
            break
        p = r + (rr_next / rr) * p
        rr = rr_next
    return x


class TRPO(torch.optim.Optimizer):
    """The TRPO step; ``step`` needs the closure (module docstring). Its last step's numbers
    are in :attr:`last` (``kl``, ``improvement``, ``backtracks``)."""

    def __init__(
        self,
        params,
        max_kl: float = 0.01,
        damping: float = 1e-5,
        cg_iters: int = 10,
        backtrack_ratio: float = 0.8,
        max_backtracks: int = 15,
    ) -> None:
        defaults = dict(
            max_kl=max_kl, damping=damping, cg_iters=cg_iters,
            backtrack_ratio=backtrack_ratio, max_backtracks=max_backtracks,
        )  # fmt: skip
        super().__init__(params, defaults)
        self.last: dict[str, float] = {}

    @staticmethod
    def _full_step(loss, kl, params, group) -> torch.Tensor:
        """``H^-1 g`` by conjugate gradient, scaled so that its quadratic KL estimate,
        ``0.5 s'Hs``, is ``max_kl``."""
        grads = torch.autograd.grad(loss, params, retain_graph=True)
        g = torch.cat([x.reshape(-1) for x in grads]).detach()
        kl_grads = torch.autograd.grad(kl, params, create_graph=True)
        flat_kl_grad = torch.cat([x.reshape(-1) for x in kl_grads])

        def hvp(v: torch.Tensor) -> torch.Tensor:
            hv = torch.autograd.grad(flat_kl_grad.dot(v), params, retain_graph=True)
            return torch.cat([x.reshape(-1) for x in hv]).detach() + group["damping"] * v

        direction = conjugate_gradient(hvp, g, group["cg_iters"])
        shs = 0.5 * direction.dot(hvp(direction))
        return direction * torch.sqrt(group["max_kl"] / shs.clamp_min(1e-30))

    def step(self, closure: Closure | None = None):  # type: ignore[override]
        if closure is None:
            raise RuntimeError("TRPO.step needs the closure of the surrogate loss and the KL")
        group = self.param_groups[0]
        params = [p for g in self.param_groups for p in g["params"] if p.requires_grad]
        loss, kl = closure(True)
        full_step = self._full_step(loss, kl, params, group)  # the graphs are freed here
        old = parameters_to_vector(params).detach()
        old_loss = loss.detach()
        ratio = 1.0
        for tries in range(group["max_backtracks"]):
            vector_to_parameters(old - ratio * full_step, params)
            with torch.no_grad():
                new_loss, new_kl = closure(False)
            improvement = float(new_loss - old_loss)
            if improvement < 0 and float(new_kl) < group["max_kl"]:
                self.last = {"kl": float(new_kl), "improvement": improvement, "backtracks": tries}
                return old_loss
            ratio *= group["backtrack_ratio"]
        vector_to_parameters(old, params)  # no step passed: keep the old policy
        self.last = {"kl": 0.0, "improvement": 0.0, "backtracks": group["max_backtracks"]}
        return old_loss
