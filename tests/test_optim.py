"""The per-member optimizer against torch.optim, member by member."""

from __future__ import annotations

import pytest
import torch

from lrsearch.config import OptimizerName
from lrsearch.optim import MemberOptimizer, MemberScaler
from lrsearch.training import TrainConfig

CONFIGS = [
    TrainConfig(optimizer="sgd", momentum=0.0),
    TrainConfig(optimizer="sgd", momentum=0.9, weight_decay=1e-2),
    TrainConfig(optimizer="sgd", momentum=0.9, nesterov=True, weight_decay=1e-3),
    TrainConfig(optimizer="adam", weight_decay=1e-2),
    TrainConfig(optimizer="adamw", weight_decay=1e-1),
    TrainConfig(optimizer="adam", beta1=0.8, beta2=0.95, eps=1e-6),
    TrainConfig(optimizer="adamw", beta1=0.9, beta2=0.95, eps=1e-10, weight_decay=1e-1),
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
    return kind(
        [param],
        lr=lr,
        betas=(config.beta1, config.beta2),
        eps=config.eps,
        weight_decay=config.weight_decay,
    )


@pytest.mark.parametrize(
    "config", CONFIGS, ids=lambda c: f"{c.optimizer}-{c.nesterov}-{c.beta2}-{c.eps}"
)
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


def member_rows(param: torch.Tensor, k: int, members: int) -> torch.Tensor:
    rows = param.shape[0] // members
    return param[k * rows : (k + 1) * rows]


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_clipping_and_decay_of_matrices_only_match_torch_member_by_member(optimizer: str) -> None:
    """Each member clipped by its own global norm (clip_grad_norm_ over its rows of every
    parameter), weight decay on matrices only (nanoGPT's two param groups)."""
    members = 3
    config = TrainConfig(optimizer=optimizer, weight_decay=0.1, decay_all=False, clip_norm=1.0)  # type: ignore[arg-type]
    generator = torch.Generator().manual_seed(0)
    # A member-major matrix [K * 4, 5], a bias [K, 1, 5] and a matrix [K, 2, 3].
    shapes = [(members * 4, 5), (members, 1, 5), (members, 2, 3)]
    matrices = [True, False, True]
    stacked = [torch.randn(shape, generator=generator).requires_grad_() for shape in shapes]
    alone = [
        [member_rows(p, k, members).detach().clone().requires_grad_() for p in stacked]
        for k in range(members)
    ]
    ours = MemberOptimizer(stacked, members, config, matrices)
    theirs = []
    for params in alone:
        decayed = [p for p, matrix in zip(params, matrices, strict=True) if matrix]
        kept = [p for p, matrix in zip(params, matrices, strict=True) if not matrix]
        groups = [{"params": decayed}, {"params": kept, "weight_decay": 0.0}]
        lone = torch_optimizer(decayed[0], 0.1, config)  # the hyperparameters, then the groups
        lone.param_groups.clear()
        for group in groups:
            lone.add_param_group(group)
        theirs.append(lone)
    lrs = [[0.1, 0.01, 0.05], [0.2, 0.0, 0.05], [0.05, 0.02, 0.3]]
    for step, step_lrs in enumerate(lrs):
        # Gradients on both sides of the clip: member 1 small, the others large.
        scale = torch.tensor([5.0, 0.01, 1.0 + step]).view(-1, 1)
        grads = [
            (torch.randn(shape, generator=generator).reshape(members, -1) * scale).reshape(shape)
            for shape in shapes
        ]
        for param, grad in zip(stacked, grads, strict=True):
            param.grad = grad.clone()
        ours.step(torch.tensor(step_lrs))
        for k, (params, lone) in enumerate(zip(alone, theirs, strict=True)):
            for param, grad in zip(params, grads, strict=True):
                param.grad = member_rows(grad, k, members).clone()
            torch.nn.utils.clip_grad_norm_(params, max_norm=1.0)
            for group in lone.param_groups:
                group["lr"] = step_lrs[k]
            lone.step()
    for k, params in enumerate(alone):
        for param, own in zip(stacked, params, strict=True):
            torch.testing.assert_close(member_rows(param, k, members), own, rtol=1e-6, atol=1e-7)


def test_clip_returns_each_members_own_norm() -> None:
    param = torch.zeros(2, 2, requires_grad=True)
    bias = torch.zeros(2, 1, requires_grad=True)
    optimizer = MemberOptimizer([param, bias], 2, TrainConfig())
    param.grad = torch.tensor([[3.0, 0.0], [0.0, 0.5]])
    bias.grad = torch.tensor([[4.0], [0.0]])
    norms = optimizer.clip(max_norm=1.0)
    torch.testing.assert_close(norms, torch.tensor([5.0, 0.5]))
    torch.testing.assert_close(param.grad[0], torch.tensor([3.0, 0.0]) / (5.0 + 1e-6))
    torch.testing.assert_close(param.grad[1], torch.tensor([0.0, 0.5]))  # under the limit


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_fp16_loss_scaling_matches_grad_scaler_member_by_member(optimizer: str) -> None:
    """torch.amp.GradScaler per member, on a CPU with a small scale (the arithmetic is the
    same as on CUDA): an overflow skips that member's step alone and halves its scale, two
    clean steps double it. What runs on CUDA only, fp16 autocast itself, is not tested here."""
    members, rows, steps = 3, 2, 6
    config = TrainConfig(optimizer=optimizer, fp16=True, momentum=0.9, clip_norm=5.0)  # type: ignore[arg-type]
    generator = torch.Generator().manual_seed(0)
    stacked = torch.randn(members * rows, 4, generator=generator).requires_grad_()
    alone = [member_rows(stacked, k, members).detach().clone().requires_grad_() for k in range(3)]
    ours = MemberOptimizer([stacked], members, config)
    ours.scaler = MemberScaler(members, stacked.device, init_scale=4.0, growth_interval=2)
    theirs = [torch_optimizer(p, 0.05, config) for p in alone]
    scalers = [torch.amp.GradScaler("cpu", init_scale=4.0, growth_interval=2) for _ in alone]
    for step in range(steps):
        weights = torch.randn(members * rows, 4, generator=generator)
        if step in (1, 4):  # member 1 overflows, then member 2
            weights[rows * (step // 3 + 1)] = float("inf")
        losses = (stacked * weights).reshape(members, -1).sum(dim=1)
        ours.zero_grad()
        ours.scaled(losses).sum().backward()
        ours.step(torch.full((members,), 0.05))
        for k, (param, lone, scaler) in enumerate(zip(alone, theirs, scalers, strict=True)):
            lone.zero_grad()
            scaler.scale((param * member_rows(weights, k, members)).sum()).backward()
            scaler.unscale_(lone)
            torch.nn.utils.clip_grad_norm_([param], max_norm=5.0)
            scaler.step(lone)
            scaler.update()
    assert ours.scaler.scales.tolist() == [s.get_scale() for s in scalers]
    assert len({s.get_scale() for s in scalers}) > 1  # the overflows made the scales differ
    for k, param in enumerate(alone):
        torch.testing.assert_close(member_rows(stacked, k, members), param, rtol=1e-6, atol=1e-7)


SCHEDULE_FREE = [
    TrainConfig(optimizer="adamw-schedulefree", beta2=0.99),
    TrainConfig(optimizer="adamw-schedulefree", beta2=0.99, weight_decay=1e-2),
    TrainConfig(optimizer="sgd-schedulefree", momentum=0.8),
    TrainConfig(optimizer="sgd-schedulefree", momentum=0.95, weight_decay=1e-2),
]


def package_optimizer(param: torch.Tensor, config: TrainConfig) -> torch.optim.Optimizer:
    """The schedulefree package's optimizer for ``config``, its own warmup off."""
    import schedulefree

    if config.optimizer == "sgd-schedulefree":
        return schedulefree.SGDScheduleFree(
            [param],
            lr=0.0,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
            warmup_steps=0,
            foreach=False,
        )
    return schedulefree.AdamWScheduleFree(
        [param],
        lr=0.0,
        betas=(config.beta1, config.beta2),
        eps=config.eps,
        weight_decay=config.weight_decay,
        warmup_steps=0,
        foreach=False,
    )


@pytest.mark.parametrize(
    "config", SCHEDULE_FREE, ids=lambda c: f"{c.optimizer}-{c.weight_decay}-{c.momentum}"
)
def test_schedule_free_matches_the_package_member_by_member_in_train_and_eval(
    config: TrainConfig,
) -> None:
    pytest.importorskip("schedulefree")
    members, rows = 3, 4
    generator = torch.Generator().manual_seed(0)
    stacked = torch.randn(members * rows, 5, generator=generator).requires_grad_()
    alone = [member_rows(stacked, k, members).detach().clone() for k in range(members)]
    # A warmup from 0 then each member's own LRs; the package's own warmup is off.
    lrs = [[0.0, 0.0, 0.0], [0.05, 0.01, 0.1], [0.1, 0.02, 0.05], [0.1, 0.02, 0.01]]
    ours = MemberOptimizer([stacked], members, config)
    theirs = []
    for param in alone:
        param.requires_grad_()
        optimizer = package_optimizer(param, config)
        optimizer.train()  # type: ignore[attr-defined]
        theirs.append(optimizer)
    for step_lrs in lrs:
        grads = torch.randn(members * rows, 5, generator=generator)
        stacked.grad = grads.clone()
        ours.step(torch.tensor(step_lrs))
        for k, (param, optimizer) in enumerate(zip(alone, theirs, strict=True)):
            param.grad = member_rows(grads, k, members).clone()
            optimizer.param_groups[0]["lr"] = step_lrs[k]
            optimizer.step()
    for mode in ("eval", "train"):  # the averaged weights x, then back to y
        getattr(ours, mode)()
        for k, (param, optimizer) in enumerate(zip(alone, theirs, strict=True)):
            getattr(optimizer, mode)()
            torch.testing.assert_close(
                member_rows(stacked, k, members), param, rtol=1e-5, atol=1e-6
            )


def test_schedule_free_eval_changes_the_weights_and_other_optimizers_ignore_it() -> None:
    for name, moves in (("adamw-schedulefree", True), ("sgd-schedulefree", True), ("adamw", False)):
        param = torch.ones(4, 3, requires_grad=True)
        optimizer = MemberOptimizer([param], 2, TrainConfig(optimizer=name))
        for _ in range(3):
            param.grad = torch.randn(4, 3, generator=torch.Generator().manual_seed(1))
            optimizer.step(torch.tensor([0.1, 0.1]))
        before = param.detach().clone()
        optimizer.eval()
        optimizer.eval()  # twice is once
        assert (not torch.equal(param, before)) == moves
        optimizer.train()
        torch.testing.assert_close(param, before)


@pytest.mark.parametrize("name", ["adamw-schedulefree", "sgd-schedulefree"])
def test_a_schedule_free_member_at_lr_zero_does_not_move(name: OptimizerName) -> None:
    param = torch.ones(4, 3, requires_grad=True)
    optimizer = MemberOptimizer([param], 2, TrainConfig(optimizer=name))
    param.grad = torch.ones(4, 3)
    optimizer.step(torch.tensor([0.1, 0.1]))
    frozen = param[2:].detach().clone()
    param.grad = torch.ones(4, 3)
    optimizer.step(torch.tensor([0.1, 0.0]))
    torch.testing.assert_close(param[2:], frozen)
    assert not torch.equal(param[:2], torch.ones(2, 3))
