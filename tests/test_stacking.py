"""Stacked models against the members' own: outputs, gradients and the way each model runs."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from examples.custom_task import mlp
from lrsearch.stacking import stack_models
from lrsearch.tasks import lenet, small_cnn, small_resnet

MEMBERS = 3


class ConcatBlock(nn.Module):
    """Concatenates channels: a wide network would mix the members' channels."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(4, 2, 3, padding=1)
        self.b = nn.Conv2d(4, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.a(x), self.b(x)], dim=1)


def concat_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), ConcatBlock(), nn.ReLU(), nn.Flatten(), nn.Linear(256, 10)
    )


class Branching(nn.Module):
    """Data-dependent control flow, which vmap refuses."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.linear(x.flatten(1))
        return out if out.sum() > -1e9 else -out


def members(factory: Callable[[], nn.Module]) -> list[nn.Module]:
    built = []
    for seed in range(MEMBERS):
        torch.manual_seed(seed)
        built.append(factory())
    return built


CASES = [
    (lenet, (1, 28, 28), "stacked"),
    (small_cnn, (1, 28, 28), "stacked"),
    (small_resnet, (3, 32, 32), "stacked"),
    (mlp, (1, 8, 8), "stacked"),
    (concat_net, (1, 8, 8), "vmap"),
    (Branching, (1, 8, 8), "loop"),
]


@pytest.mark.parametrize(
    ("factory", "shape", "path"), CASES, ids=lambda c: getattr(c, "__name__", c)
)
def test_stacked_models_compute_the_members_outputs_and_gradients(
    factory: Callable[[], nn.Module], shape: tuple[int, ...], path: str
) -> None:
    models = members(factory)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(8, *shape, generator=generator)
    labels = torch.randint(0, 10, (8,), generator=generator)
    stacked = stack_models(models, images[:2])
    assert stacked.path == path and stacked.members == MEMBERS

    logits = stacked.module(images)  # train mode: batch norm uses the batch's statistics
    expected = torch.stack([model(images) for model in models])
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5)

    losses = F.cross_entropy(logits.flatten(0, 1), labels.repeat(MEMBERS), reduction="none")
    losses.view(MEMBERS, -1).mean(dim=1).sum().backward()
    for model in models:
        F.cross_entropy(model(images), labels).backward()
    for param, *own in zip(stacked.params, *(m.parameters() for m in models), strict=True):
        assert param.grad is not None
        rows = param.grad.reshape(MEMBERS, -1)
        for k, member_param in enumerate(own):
            assert member_param.grad is not None
            torch.testing.assert_close(rows[k], member_param.grad.flatten(), rtol=1e-4, atol=1e-5)


def test_stacking_leaves_the_members_models_unchanged() -> None:
    models = members(lenet)
    before = [[p.clone() for p in m.parameters()] for m in models]
    stacked = stack_models(models, torch.randn(2, 1, 28, 28))
    with torch.no_grad():
        for param in stacked.params:
            param.add_(1.0)
    for model, saved in zip(models, before, strict=True):
        for param, old in zip(model.parameters(), saved, strict=True):
            assert torch.equal(param, old)


def test_a_model_that_cannot_run_at_all_is_an_error_naming_each_way() -> None:
    with pytest.raises(RuntimeError, match=r"stacked: .*vmap: .*loop: "):
        stack_models(members(lambda: nn.Linear(5, 10)), torch.randn(2, 1, 8, 8))
