"""torch.optim's SGD, Adam and AdamW updates with one learning rate per population member.

A population's parameters are stacked tensors whose first dimension is member-major
(lrsearch.stacking); each member's rows get that member's learning rate for this step,
read from a device tensor, so no step waits on the host. The arithmetic is torch.optim's
single-tensor update, line for line (dampening 0, no amsgrad), which the tests check
against torch.optim itself. Gradient clipping is ``torch.nn.utils.clip_grad_norm_`` applied
to each member's own gradients: one member's large gradient never shrinks another's step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from lrsearch.config import TrainConfig

__all__ = ["MemberOptimizer"]

CLIP_EPS = 1e-6  # clip_grad_norm_'s guard against a zero norm


class MemberOptimizer:
    """``step(lr)`` with ``lr`` of shape ``[members]``; a member whose lr is 0 does not move."""

    def __init__(
        self,
        params: Sequence[torch.Tensor],
        members: int,
        config: TrainConfig,
        matrices: Sequence[bool] | None = None,
    ) -> None:
        """``matrices[i]``: parameter i is a weight matrix, which ``decay_all=False`` limits
        weight decay to; None: all of them are."""
        self.params = list(params)
        self.members = members
        self.config = config
        self.steps = 0
        for param in self.params:
            if param.shape[0] % members:
                raise ValueError(f"a parameter of shape {tuple(param.shape)} is not member-major")
        self.state: list[dict[str, torch.Tensor]] = [{} for _ in self.params]
        matrices = [True] * len(self.params) if matrices is None else list(matrices)
        if len(matrices) != len(self.params):
            raise ValueError(f"{len(matrices)} matrix flags for {len(self.params)} parameters")
        self.decay = [
            config.weight_decay if config.decay_all or matrix else 0.0 for matrix in matrices
        ]

    def zero_grad(self) -> None:
        for param in self.params:
            param.grad = None

    def _per_row(self, lr: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
        """``lr`` broadcast to ``param``: member k's value on its rows."""
        rows = param.shape[0] // self.members
        column = lr if rows == 1 else lr.repeat_interleave(rows)
        return column.view(-1, *(1,) * (param.dim() - 1))

    @torch.no_grad()
    def clip(self, max_norm: float) -> torch.Tensor:
        """``clip_grad_norm_`` per member: each member's gradients scaled so that their global
        norm, over all its rows of every parameter, is at most ``max_norm``; returns the
        members' norms before clipping, ``[members]``."""
        grads = [param.grad for param in self.params if param.grad is not None]
        norms = torch.stack(
            [torch.linalg.vector_norm(grad.reshape(self.members, -1), dim=1) for grad in grads]
        )
        total: torch.Tensor = torch.linalg.vector_norm(norms, dim=0)
        scale = (max_norm / (total + CLIP_EPS)).clamp(max=1.0)
        for grad in grads:
            grad.mul_(self._per_row(scale, grad))
        return total

    @torch.no_grad()
    def step(self, lr: torch.Tensor) -> None:
        self.steps += 1
        config = self.config
        if config.clip_norm is not None:
            self.clip(config.clip_norm)
        for param, state, decay in zip(self.params, self.state, self.decay, strict=True):
            if param.grad is None:
                continue
            rate = self._per_row(lr, param)
            if config.optimizer == "sgd":
                self._sgd(param, param.grad, rate, state, decay)
            else:
                self._adam(param, param.grad, rate, state, decay)

    def _sgd(
        self,
        param: torch.Tensor,
        grad: torch.Tensor,
        rate: torch.Tensor,
        state: dict[str, torch.Tensor],
        decay: float,
    ) -> None:
        config = self.config
        if decay:
            grad = grad.add(param, alpha=decay)
        if config.momentum:
            buffer = state.get("momentum")
            if buffer is None:
                buffer = state["momentum"] = grad.clone()
            else:
                buffer.mul_(config.momentum).add_(grad)
            grad = grad.add(buffer, alpha=config.momentum) if config.nesterov else buffer
        param.addcmul_(grad, rate, value=-1)

    def _adam(
        self,
        param: torch.Tensor,
        grad: torch.Tensor,
        rate: torch.Tensor,
        state: dict[str, torch.Tensor],
        decay: float,
    ) -> None:
        config = self.config
        beta1, beta2 = config.beta1, config.beta2
        if decay:
            if config.optimizer == "adamw":
                param.mul_(1 - rate * decay)
            else:
                grad = grad.add(param, alpha=decay)
        if not state:
            state["exp_avg"] = torch.zeros_like(param)
            state["exp_avg_sq"] = torch.zeros_like(param)
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        correction1 = 1 - beta1**self.steps
        correction2_sqrt = (1 - beta2**self.steps) ** 0.5
        denom = (exp_avg_sq.sqrt() / correction2_sqrt).add_(config.eps)
        param.addcdiv_(exp_avg * rate, denom, value=-1 / correction1)
