"""Stacked models against the members' own: outputs, gradients and the way each model runs."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from examples.custom_task import mlp
from lrsearch.models import CharGPT, resnet_digits
from lrsearch.stacking import StackedModels, stack_models
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


def mlp_with_input_dropout_off() -> nn.Module:
    """Dropout at p = 0 on the shared input: nothing to draw, so the stacked way takes it."""
    return nn.Sequential(nn.Dropout(0.0), *mlp())


def members(factory: Callable[[], nn.Module], count: int = MEMBERS) -> list[nn.Module]:
    built = []
    for seed in range(count):
        torch.manual_seed(seed)
        built.append(factory())
    return built


def assert_members_gradients(stacked: StackedModels, models: list[nn.Module]) -> None:
    """Each member's rows of every stacked gradient equal its own model's gradient."""
    for param, *own in zip(stacked.params, *(m.parameters() for m in models), strict=True):
        assert param.grad is not None
        rows = param.grad.reshape(len(models), -1)
        for k, member_param in enumerate(own):
            assert member_param.grad is not None
            torch.testing.assert_close(rows[k], member_param.grad.flatten(), rtol=1e-4, atol=1e-5)


CASES = [
    (lenet, (1, 28, 28), "stacked"),
    (small_cnn, (1, 28, 28), "stacked"),
    (small_resnet, (3, 32, 32), "stacked"),
    (mlp, (1, 8, 8), "stacked"),
    (mlp_with_input_dropout_off, (1, 8, 8), "stacked"),
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
    assert_members_gradients(stacked, models)


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


def char_gpt(dropout: float = 0.0) -> nn.Module:
    return CharGPT(vocab_size=13, block_size=12, n_layer=2, n_head=2, n_embd=16, dropout=dropout)


def signal_net() -> nn.Module:
    """A 1-D CNN on [B, 1, 40] signals."""
    return nn.Sequential(
        nn.Conv1d(1, 8, 5, padding=2),
        nn.BatchNorm1d(8),
        nn.ReLU(),
        nn.MaxPool1d(2),
        nn.Conv1d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool1d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    )


def sequence_mlp() -> nn.Module:
    """Linear layers and a layer norm on [B, T, F] sequences of features."""
    return nn.Sequential(nn.Linear(5, 16), nn.LayerNorm(16), nn.GELU(), nn.Linear(16, 3))


def sequences(generator: torch.Generator) -> torch.Tensor:
    return torch.randn(6, 7, 5, generator=generator)


def tokens(generator: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 13, (6, 12), generator=generator)


def signals(generator: torch.Generator) -> torch.Tensor:
    return torch.randn(6, 1, 40, generator=generator)


def digits(generator: torch.Generator) -> torch.Tensor:
    return torch.randn(6, 1, 8, 8, generator=generator)


TRANSFORMER_CASES = [
    (char_gpt, tokens, "stacked"),
    (resnet_digits, digits, "stacked"),
    (signal_net, signals, "stacked"),
    (sequence_mlp, sequences, "stacked"),
]


@pytest.mark.parametrize(
    ("factory", "inputs", "path"), TRANSFORMER_CASES, ids=lambda c: getattr(c, "__name__", c)
)
def test_embeddings_layer_norms_attention_and_1d_convolutions_stack(
    factory: Callable[[], nn.Module],
    inputs: Callable[[torch.Generator], torch.Tensor],
    path: str,
) -> None:
    """Outputs of any shape, and gradients, as the members' own models give them."""
    models = members(factory)
    generator = torch.Generator().manual_seed(0)
    x = inputs(generator)
    stacked = stack_models(models, x[:2])
    assert stacked.path == path
    outputs = stacked.module(x)
    expected = torch.stack([model(x) for model in models])
    torch.testing.assert_close(outputs, expected, rtol=1e-4, atol=1e-5)
    weights = torch.randn(expected.shape[1:], generator=generator)  # a loss of every output
    (outputs * weights).sum().backward()
    for model in models:
        (model(x) * weights).sum().backward()
    assert_members_gradients(stacked, models)


def test_weight_matrices_are_told_from_norms_biases_and_embeddings() -> None:
    models = members(char_gpt)
    stacked = stack_models(models, torch.zeros(2, 12, dtype=torch.int64))
    own = dict(models[0].named_parameters())
    expected = [
        p.dim() >= 2 and not name.startswith(("token", "position")) for name, p in own.items()
    ]
    assert stacked.matrices == expected
    assert any(expected) and not all(expected)


class DroppingBranch(nn.Module):
    """Dropout in a model only the loop runs (data-dependent control flow)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(64, 10)
        self.dropout = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.dropout(self.linear(x.flatten(1)))
        return out if out.sum() > -1e9 else -out


class DroppingConcat(nn.Module):
    """Dropout in a model the stacked way refuses: vmap would draw every member's masks."""

    def __init__(self) -> None:
        super().__init__()
        self.net = concat_net()
        self.dropout = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.dropout(self.net(x))
        return out


@pytest.mark.parametrize(
    ("factory", "inputs", "path"),
    [
        (lambda: char_gpt(dropout=0.3), tokens, "stacked"),
        (DroppingBranch, digits, "loop"),
        (DroppingConcat, digits, "loop"),
    ],
    ids=["char_gpt", "loop", "not_vmap"],
)
def test_a_member_draws_the_same_dropout_masks_at_any_population_size(
    factory: Callable[[], nn.Module],
    inputs: Callable[[torch.Generator], torch.Tensor],
    path: str,
) -> None:
    x = inputs(torch.Generator().manual_seed(0))
    seed = 5

    def outputs(seeds: list[int], member: int = 0) -> torch.Tensor:
        models = []
        for s in seeds:
            torch.manual_seed(s)
            models.append(factory())
        torch.manual_seed(123)  # what else ran before must not matter
        stacked = stack_models(models, x[:2], seeds)
        assert stacked.path == path
        return stacked.module(x)[member].detach()

    alone = outputs([seed])
    assert not torch.allclose(alone, outputs([seed + 1]))  # the masks differ between seeds
    torch.testing.assert_close(outputs([0, 1, 2, seed, 7, 8, 9, 10], member=3), alone)
    torch.testing.assert_close(outputs([seed, 3]), alone)


# ----- layers the stacker knows, changed by a subclass, a hook or a parametrization -----
# Each change shows in training mode, or in gradients, alone: the probe, comparing eval-mode
# outputs, cannot see it, so only the rule that such a layer is never rebuilt wide keeps it.


class DoubledInTraining(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        return out * 2 if self.training else out


class LoRALinear(nn.Linear):
    """A low-rank update beside the weight, zero at first as LoRA starts it."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features)
        self.down = nn.Parameter(torch.randn(2, in_features))
        self.up = nn.Parameter(torch.zeros(out_features, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + x @ self.down.T @ self.up.T


class CenteredInTraining(nn.ReLU):
    """Mixes the channels of a wide network's activations, its members' included."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        return out - out.mean(dim=1, keepdim=True) if self.training else out


class NegatedInTraining(nn.Sequential):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = super().forward(x)
        return -out if self.training else out


class Symmetric(nn.Module):
    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.triu() + weight.triu(1).T


def head(hidden: nn.Module) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), hidden, nn.ReLU(), nn.Linear(16, 10))


def doubling_hook(module: nn.Module, inputs: object, output: torch.Tensor) -> torch.Tensor:
    return output * 2 if module.training else output


def hooked() -> nn.Module:
    linear = nn.Linear(16, 16)
    linear.register_forward_hook(doubling_hook)
    return head(linear)


def symmetric() -> nn.Module:
    linear = nn.Linear(16, 16, bias=False)
    parametrize.register_parametrization(linear, "weight", Symmetric())
    return head(linear)


CHANGED = [
    (lambda: head(DoubledInTraining(16, 16)), "vmap"),
    (lambda: head(LoRALinear(16, 16)), "vmap"),
    (
        lambda: nn.Sequential(
            nn.Conv2d(1, 4, 3), CenteredInTraining(), nn.Flatten(), nn.Linear(144, 10)
        ),
        "vmap",
    ),
    (lambda: head(NegatedInTraining(nn.Linear(16, 16))), "stacked"),  # a block: forward kept
    (lambda: NegatedInTraining(nn.Flatten(), nn.Linear(64, 10)), "vmap"),  # on the shared input
    (hooked, "vmap"),
    (symmetric, "vmap"),
]


@pytest.mark.parametrize("count", [1, MEMBERS])
@pytest.mark.parametrize(
    ("factory", "path"),
    CHANGED,
    ids=["subclass", "lora", "channel_wise", "sequential", "top_sequential", "hook", "param"],
)
def test_a_known_layer_changed_by_its_model_is_not_rebuilt_wide(
    factory: Callable[[], nn.Module], path: str, count: int
) -> None:
    """Each member trains as its own model alone does: the same outputs in training and the
    same gradients, at any population size, whichever way runs it."""
    models = members(factory, count)
    generator = torch.Generator().manual_seed(0)
    x = digits(generator)
    stacked = stack_models(models, x[:2])
    assert stacked.path == path
    outputs = stacked.module(x)
    expected = torch.stack([model(x) for model in models])
    torch.testing.assert_close(outputs, expected, rtol=1e-4, atol=1e-5)
    weights = torch.randn(expected.shape[1:], generator=generator)
    (outputs * weights).sum().backward()
    for model in models:
        (model(x) * weights).sum().backward()
    assert_members_gradients(stacked, models)
