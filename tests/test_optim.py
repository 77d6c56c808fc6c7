"""The per-member optimizer against torch.optim, member by member."""

from __future__ import annotations

import pytest
import torch

from lrsearch.optim import MemberOptimizer
from lrsearch.training import TrainConfig

CONFIGS = [
    TrainConfig(optimizer="sgd", momentum=0.0),
    TrainConfig(optimizer="sgd", momentum=0.9, weight_decay=1e-2),
    TrainConfig(optimizer="sgd", momentum=0.9, nesterov=True, weight_decay=1e-3),
    TrainConfig(optimizer="adam", weight_decay=1e-2),
    TrainConfig(optimizer="adamw", weight_decay=1e-1),
]


def torch_optimizer(param: torch.Tensor, lr: float, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            [param],
            lr=lr,
            momentum=config.momentum,
            nesterov=config.nesterov,
            weight_decay=config.weight_decay,
        )
    kind = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
    return kind([param], lr=lr, weight_decay=config.weight_decay)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.optimizer}-{c.nesterov}")
def test_each_member_gets_torch_optims_update_with_its_own_lr(config: TrainConfig) -> None:
    members, rows = 3, 4  # a [members * rows, 5] parameter, member-major like a wide layer
    generator = torch.Generator().manual_seed(0)
    stacked = torch.randn(members * rows, 5, generator=generator).requires_grad_()
    alone = [stacked[k * rows : (k + 1) * rows].detach().clone().requires_grad_() for k in range(3)]
    lrs = [[0.1, 0.01, 0.05], [0.2, 0.0, 0.05], [0.05, 0.02, 0.0]]  # per step, per member
    ours = MemberOptimizer([stacked], members, config)
    theirs = [torch_optimizer(p, lrs[0][k], config) for k, p in enumerate(alone)]
    for step_lrs in lrs:
        grads = torch.randn(members * rows, 5, generator=generator)
        stacked.grad = grads.clone()
        ours.step(torch.tensor(step_lrs))
        for k, (param, optimizer) in enumerate(zip(alone, theirs, strict=True)):
            param.grad = grads[k * rows : (k + 1) * rows].clone()
            optimizer.param_groups[0]["lr"] = step_lrs[k]
            optimizer.step()
    for k, param in enumerate(alone):
        torch.testing.assert_close(stacked[k * rows : (k + 1) * rows], param, rtol=1e-6, atol=1e-7)


def test_a_member_whose_lr_is_zero_does_not_move_even_with_nan_gradients() -> None:
    param = torch.ones(4, 3, requires_grad=True)
    optimizer = MemberOptimizer([param], 2, TrainConfig(optimizer="sgd", momentum=0.9))
    param.grad = torch.cat([torch.ones(2, 3), torch.full((2, 3), float("nan"))])
    optimizer.step(torch.tensor([0.1, 0.0]))
    torch.testing.assert_close(param[:2], torch.full((2, 3), 0.9))
    assert torch.isnan(param[2:]).all()  # its own rows only: the NaN stays the member's


def test_a_parameter_that_is_not_member_major_is_refused() -> None:
    with pytest.raises(ValueError, match="not member-major"):
        MemberOptimizer([torch.zeros(5, 2)], 2, TrainConfig())
