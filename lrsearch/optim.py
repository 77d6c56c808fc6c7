"""torch.optim's SGD, Adam and AdamW updates with one learning rate per population member.

A population's parameters are stacked tensors whose first dimension is member-major
(lrsearch.stacking); each member's rows get that member's learning rate for this step,
read from a device tensor, so no step waits on the host. The arithmetic is torch.optim's
single-tensor update, line for line (dampening 0, no amsgrad), which the tests check
against torch.optim itself. Gradient clipping is ``torch.nn.utils.clip_grad_norm_`` applied
to each member's own gradients: one member's large gradient never shrinks another's step.
fp16 loss scaling is ``torch.amp.GradScaler``'s, again per member: one member's overflow
skips its own step only.

``adamw-schedulefree`` and ``sgd-schedulefree`` are schedule-free AdamW and SGD (Defazio et
al. 2024, "The Road Less Scheduled"), the ``schedulefree`` package's ``AdamWScheduleFree``
and ``SGDScheduleFree`` updates (r = 0, weight_lr_power = 2, warmup from the schedule rather
than their own), with each member's running weight sum and largest LR so far kept apart.
The two differ only in the direction z steps along: AdamW's gradient normalized by its
second moment, SGD's raw gradient; both add weight decay at y, as the package does, and
interpolate with their own beta (AdamW's beta1, SGD's momentum). The parameters hold the
point the gradient is taken at (y) while training; ``eval()`` moves them to the average (x)
that the method evaluates, ``train()`` back. A member at LR 0 neither moves nor adds to its
average.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from lrsearch.config import TrainConfig

__all__ = ["MemberOptimizer", "MemberScaler", "weight_matrices"]

CLIP_EPS = 1e-6  # clip_grad_norm_'s guard against a zero norm


def weight_matrices(model: torch.nn.Module) -> list[bool]:
    """Per parameter of ``model``: a weight matrix (two or more dimensions, not an embedding),
    what ``decay_all=False`` limits weight decay to."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    return [p.dim() >= 2 and id(p) not in embeddings for p in model.parameters()]


def _per_row(values: torch.Tensor, param: torch.Tensor, members: int) -> torch.Tensor:
    """``values`` (one per member) broadcast to ``param``: member k's value on its rows."""
    rows = param.shape[0] // members
    column = values if rows == 1 else values.repeat_interleave(rows)
    return column.view(-1, *(1,) * (param.dim() - 1))


class MemberScaler:
    """``torch.amp.GradScaler`` for each member alone, with its defaults: a member's loss is
    multiplied by its own scale; a member whose unscaled gradients are not finite skips its
    step and halves its scale, and one that goes ``growth_interval`` steps without doubles it.
    """

    def __init__(
        self,
        members: int,
        device: torch.device,
        init_scale: float = 2.0**16,
        growth_factor: float = 2.0,
        backoff_factor: float = 0.5,
        growth_interval: int = 2000,
    ) -> None:
        self.members = members
        self.scales = torch.full((members,), init_scale, device=device)
        self.tracker = torch.zeros(members, dtype=torch.int32, device=device)
        self.growth_factor, self.backoff_factor = growth_factor, backoff_factor
        self.growth_interval = growth_interval

    def scale(self, losses: torch.Tensor) -> torch.Tensor:
        """``losses`` ``[members]``, each times its member's scale."""
        return losses * self.scales

    @torch.no_grad()
    def unscale(self, params: Sequence[torch.Tensor]) -> list[bool]:
        """Divide the gradients by their member's scale and update the scales for the next
        step (GradScaler's ``unscale_`` then ``update``); return which members overflowed.
        One host sync, as ``GradScaler.step`` makes."""
        inverse = self.scales.double().reciprocal().float()
        found = torch.zeros(self.members, dtype=torch.bool, device=self.scales.device)
        for param in params:
            if param.grad is None:
                continue
            param.grad.mul_(_per_row(inverse, param.grad, self.members))
            found |= ~torch.isfinite(param.grad.reshape(self.members, -1)).all(dim=1)
        self.tracker = torch.where(found, 0, self.tracker + 1)
        grown = self.tracker == self.growth_interval
        factor = torch.where(grown, self.growth_factor, 1.0)
        self.scales = self.scales * torch.where(found, self.backoff_factor, factor)
        self.tracker = torch.where(grown, 0, self.tracker)
        overflowed: list[bool] = found.tolist()
        return overflowed


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
        self.steps = [0] * members  # per member: an fp16 overflow skips one member's step
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
        self.scaler = MemberScaler(members, self.params[0].device) if config.fp16 else None
        device = self.params[0].device
        self.weight_sum = torch.zeros(members, dtype=torch.float64, device=device)
        self.lr_max = torch.zeros(members, dtype=torch.float64, device=device)
        self.averaged = False  # schedule-free: the parameters hold x (eval) rather than y
        self.beta = config.schedule_free_beta  # None: not schedule-free

    @torch.no_grad()
    def eval(self) -> None:
        """Schedule-free: the parameters become the averaged weights x; else nothing."""
        self._move_to_average(True)

    @torch.no_grad()
    def train(self) -> None:
        """Schedule-free: the parameters go back to the gradient point y; else nothing."""
        self._move_to_average(False)

    def _move_to_average(self, averaged: bool) -> None:
        beta = self.beta
        if beta is None or self.averaged == averaged:
            return
        for param, state in zip(self.params, self.state, strict=True):
            if "z" in state:  # y = b x + (1 - b) z  <=>  x = (y - (1 - b) z) / b
                param.lerp_(state["z"], 1 - 1 / beta if averaged else 1 - beta)
        self.averaged = averaged

    def scaled(self, losses: torch.Tensor) -> torch.Tensor:
        """The members' losses ``[members]`` to backpropagate: scaled for fp16, else as they are."""
        return losses if self.scaler is None else self.scaler.scale(losses)

    def zero_grad(self) -> None:
        for param in self.params:
            param.grad = None

    def _per_row(self, values: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
        return _per_row(values, param, self.members)

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
        """Unscale (fp16), clip, then update each member with its own ``lr``."""
        skip = [False] * self.members if self.scaler is None else self.scaler.unscale(self.params)
        self.steps = [n + (not skipped) for n, skipped in zip(self.steps, skip, strict=True)]
        if not any(skip):
            self._update(lr)
            return
        # As GradScaler skips optimizer.step: the overflowed members' parameters and state
        # stay as they were. Their gradients are zeroed so that nothing else sees a NaN.
        mask = torch.tensor(skip, device=lr.device)
        for param in self.params:
            if param.grad is not None:
                param.grad.masked_fill_(self._per_row(mask, param.grad), 0.0)
        saved = [
            (tensor, tensor.clone())
            for param, state in zip(self.params, self.state, strict=True)
            for tensor in (param, *state.values())
        ]
        self._update(lr * ~mask)
        for tensor, old in saved:
            tensor.copy_(torch.where(self._per_row(mask, tensor), old, tensor))

    def _update(self, lr: torch.Tensor) -> None:
        config = self.config
        if config.clip_norm is not None:
            self.clip(config.clip_norm)
        mix = None if self.beta is None else self._average_weight(lr)
        for param, state, decay in zip(self.params, self.state, self.decay, strict=True):
            if param.grad is None:
                continue
            rate = self._per_row(lr, param)
            if mix is not None:
                self._schedule_free(param, param.grad, rate, mix, state, decay)
            elif config.optimizer == "sgd":
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
        if len(set(self.steps)) == 1:  # every member has taken as many steps
            correction1 = 1 - beta1 ** self.steps[0]
            correction2_sqrt = (1 - beta2 ** self.steps[0]) ** 0.5
            denom = (exp_avg_sq.sqrt() / correction2_sqrt).add_(config.eps)
            param.addcdiv_(exp_avg * rate, denom, value=-1 / correction1)
            return
        # Some member skipped a step (fp16): each member's bias correction for its own count.
        counts = torch.tensor(self.steps, dtype=torch.float64, device=param.device)
        corrections1 = self._per_row((1 - beta1**counts).float(), param)
        corrections2_sqrt = self._per_row(((1 - beta2**counts) ** 0.5).float(), param)
        denom = (exp_avg_sq.sqrt() / corrections2_sqrt).add_(config.eps)
        param.addcdiv_(exp_avg * rate / corrections1, denom, value=-1)

    def _average_weight(self, lr: torch.Tensor) -> torch.Tensor:
        """Each member's weight of this step's point in its average x: ``lr_max ** 2`` over
        the running sum (``ckp1`` in the package); 0 for a member at LR 0."""
        moving = lr > 0
        self.lr_max = torch.maximum(self.lr_max, lr.double())
        weight = torch.where(moving, self.lr_max**2, 0.0)
        self.weight_sum += weight
        share = torch.where(self.weight_sum > 0, weight / self.weight_sum, 0.0)
        return share.float()

    def _schedule_free(
        self,
        param: torch.Tensor,
        grad: torch.Tensor,
        rate: torch.Tensor,
        mix: torch.Tensor,
        state: dict[str, torch.Tensor],
        decay: float,
    ) -> None:
        assert self.beta is not None  # only schedule-free optimizers come here
        mix = self._per_row(mix, param)
        if not state:
            state["z"] = param.clone()
        if self.config.optimizer == "adamw-schedulefree":
            grad = self._normalized(grad, state)
        if decay:
            grad = grad.add(param, alpha=decay)
        param.lerp_(state["z"], mix)
        param.add_(grad * rate * (self.beta * (1 - mix) - 1))
        state["z"].sub_(grad * rate)

    def _normalized(self, grad: torch.Tensor, state: dict[str, torch.Tensor]) -> torch.Tensor:
        """Schedule-free AdamW's step direction: the gradient over its bias-corrected RMS."""
        beta2 = self.config.beta2
        exp_avg_sq = state.setdefault("exp_avg_sq", torch.zeros_like(grad))
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        counts = torch.tensor(self.steps, dtype=torch.float64, device=grad.device)
        correction2 = self._per_row((1 - beta2**counts).float(), grad)
        return grad / (exp_avg_sq / correction2).sqrt().add_(self.config.eps)
