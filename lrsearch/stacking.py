"""K models as one: the members of a population run their forward passes together.

Three ways, tried in this order, each checked against the members' own models on a probe
batch before it is used, so a model that one way cannot express falls through to the next:

- ``stacked``: the network rebuilt wide. The first layer reads the shared input once with K
  times the outputs; later convolutions become grouped (``groups=K``), batch norms K times
  as wide, linear layers batched matmuls (``baddbmm``). On a 2-core CPU this is the way that
  pays: small layers become large ones (BENCHMARKS.md).
- ``vmap``: ``torch.func.stack_module_state`` + ``vmap`` + ``functional_call``, for models
  built from layers the first way does not know.
- ``loop``: the same stacked parameters, each member's slice run in turn by
  ``functional_call``: slow, and always correct.

Every way keeps the parameters as tensors whose first dimension is member-major (member k's
rows are ``k * rows .. (k + 1) * rows - 1``), so one optimizer serves them all.
"""

from __future__ import annotations

import copy
import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

__all__ = ["StackedModels", "stack_models"]

Path = Literal["stacked", "vmap", "loop"]


class _Layout(enum.Enum):
    """Where the member axis is in the activations between two layers."""

    SHARED = "shared"  # no member axis yet: the input every member reads
    GROUPED = "grouped"  # [B, K * C, ...]: member k owns channels k * C .. (k + 1) * C - 1
    MEMBER = "member"  # [K, B, F]


class _NotStackable(Exception):
    """This model cannot be rebuilt wide; the next way is tried."""


# Layers that act on each channel (or value) alone: a wide network runs them unchanged.
_CHANNEL_WISE = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.GELU,
    nn.SiLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.ELU,
    nn.Identity,
    nn.Dropout,
)
_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


@dataclass(frozen=True)
class StackedModels:
    """K models' forward pass as one call returning logits ``[K, B, classes]``."""

    module: nn.Module
    params: list[torch.Tensor]  # leaves with a member-major first dimension
    members: int
    path: Path


def stack_models(models: Sequence[nn.Module], probe: torch.Tensor) -> StackedModels:
    """Stack ``models`` (same architecture, one per member) the fastest way that is correct.

    ``probe`` is a small normalized input batch: each candidate's output on it must match the
    members' own models, in eval mode, before the candidate is used; a train-mode forward and
    backward must also run. The models' parameters are copied, the models left unchanged.
    """
    reasons = []
    for name, build in (("stacked", _stacked), ("vmap", _vmapped), ("loop", _looped)):
        try:
            candidate = build(models)
            _check(candidate, models, probe)
            return candidate
        except Exception as error:  # any failure of one way means: try the next
            reasons.append(f"{name}: {type(error).__name__}: {error}")
    raise RuntimeError("the model cannot be trained as a population (" + "; ".join(reasons) + ")")


def _check(candidate: StackedModels, models: Sequence[nn.Module], probe: torch.Tensor) -> None:
    buffers = {name: b.clone() for name, b in candidate.module.named_buffers()}
    with torch.no_grad():
        candidate.module.eval()
        got = candidate.module(probe)
        for model in models:
            model.eval()
        want = torch.stack([model(probe) for model in models])
        for model in models:
            model.train()
    candidate.module.train()
    if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-3, atol=1e-4):
        raise _NotStackable("its outputs differ from the members' own models")
    candidate.module(probe).float().sum().backward()  # train mode runs, gradients flow
    for param in candidate.params:
        param.grad = None
    with torch.no_grad():  # undo the probe's update of batch-norm running statistics
        for name, buffer in candidate.module.named_buffers():
            buffer.copy_(buffers[name])


# ----- stacked: the network rebuilt wide -----


def _stacked(models: Sequence[nn.Module]) -> StackedModels:
    module, layout = _wide(list(models), _Layout.SHARED)
    # NHWC convolutions: 16% faster LeNet steps on a 2-core CPU (BENCHMARKS.md), and the
    # layout bf16 tensor-core convolutions run in on CUDA.
    wide = _Output(module, layout, len(models)).to(memory_format=torch.channels_last)
    # Parameters here are plain leaves; a wide network's are already member-major.
    return StackedModels(wide, list(wide.parameters()), len(models), "stacked")


class _Output(nn.Module):
    """Logits as ``[K, B, classes]`` whatever layout the last layer left."""

    def __init__(self, net: nn.Module, layout: _Layout, members: int) -> None:
        super().__init__()
        if layout is _Layout.SHARED:
            raise _NotStackable("no layer with parameters")
        self.net, self.layout, self.members = net, layout, members

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        if self.layout is _Layout.GROUPED:
            out = out.reshape(out.shape[0], self.members, -1).transpose(0, 1)
        return out


def _wide(models: list[nn.Module], layout: _Layout) -> tuple[nn.Module, _Layout]:
    """The members' copies of one layer as one wide layer, and the layout it outputs."""
    first = models[0]
    if any(type(m) is not type(first) for m in models):
        raise _NotStackable("the members' models differ in structure")
    if isinstance(first, nn.Sequential):
        layers = []
        for parts in zip(*(list(m.children()) for m in models), strict=True):
            layer, layout = _wide(list(parts), layout)
            layers.append(layer)
        return nn.Sequential(*layers), layout
    if isinstance(first, nn.Conv2d):
        return _wide_conv(models, layout), _Layout.GROUPED
    if isinstance(first, nn.Linear):
        return _WideLinear(models, layout), _Layout.MEMBER
    if isinstance(first, (nn.BatchNorm1d, nn.BatchNorm2d)) and layout is _Layout.GROUPED:
        return _wide_batch_norm(models), layout
    if isinstance(first, nn.Flatten) and first.start_dim == 1 and first.end_dim == -1:
        return (_FlattenMembers() if layout is _Layout.MEMBER else nn.Flatten()), layout
    if isinstance(first, _CHANNEL_WISE):
        return copy.deepcopy(first), layout
    if isinstance(first, _POOLS) and layout is not _Layout.MEMBER:
        return copy.deepcopy(first), layout
    if layout is _Layout.GROUPED and any(True for _ in first.children()):
        # A block of its own (a residual unit): its children made wide, its forward kept.
        # The probe check rejects a forward that mixes channels (a concatenation, a view).
        block = copy.deepcopy(first)
        for name, _ in first.named_children():
            child, child_layout = _wide([getattr(m, name) for m in models], _Layout.GROUPED)
            if child_layout is not _Layout.GROUPED:
                raise _NotStackable(f"{type(first).__name__}.{name} leaves the channel layout")
            setattr(block, name, child)
        return block, layout
    raise _NotStackable(f"{type(first).__name__} after a {layout.value} layout")


def _wide_conv(models: list[nn.Module], layout: _Layout) -> nn.Conv2d:
    convs = [m for m in models if isinstance(m, nn.Conv2d)]
    first = convs[0]
    if layout is _Layout.MEMBER or (layout is _Layout.SHARED and first.groups != 1):
        raise _NotStackable("a convolution after a linear layer, or grouped on the input")
    members = len(convs)
    shared = layout is _Layout.SHARED
    wide = nn.Conv2d(
        first.in_channels * (1 if shared else members),
        first.out_channels * members,
        first.kernel_size,  # type: ignore[arg-type]
        first.stride,  # type: ignore[arg-type]
        first.padding,  # type: ignore[arg-type]
        first.dilation,  # type: ignore[arg-type]
        groups=first.groups * (1 if shared else members),
        bias=first.bias is not None,
        padding_mode=first.padding_mode,
        device=first.weight.device,
        dtype=first.weight.dtype,
    )
    with torch.no_grad():
        wide.weight.copy_(torch.cat([c.weight for c in convs]))
        if wide.bias is not None:
            wide.bias.copy_(torch.cat([c.bias for c in convs if c.bias is not None]))
    return wide


def _wide_batch_norm(models: list[nn.Module]) -> nn.Module:
    norms = [m for m in models if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    first = norms[0]
    wide = type(first)(
        first.num_features * len(norms),
        eps=first.eps,
        momentum=first.momentum,
        affine=first.affine,
        track_running_stats=first.track_running_stats,
        device=next(first.buffers()).device,
    )
    with torch.no_grad():
        for name, value in wide.named_parameters():
            value.copy_(torch.cat([getattr(n, name) for n in norms]))
        for name, buffer in wide.named_buffers():
            if name == "num_batches_tracked":
                buffer.copy_(getattr(first, name))
            else:
                buffer.copy_(torch.cat([getattr(n, name) for n in norms]))
    return wide


class _WideLinear(nn.Module):
    """K linear layers: one matmul with K times the outputs when the input is shared,
    a batched matmul (``baddbmm``) otherwise; outputs ``[K, B, out]``."""

    def __init__(self, models: list[nn.Module], layout: _Layout) -> None:
        super().__init__()
        linears = [m for m in models if isinstance(m, nn.Linear)]
        self.members, self.layout = len(linears), layout
        self.out_features = linears[0].out_features
        weights = torch.stack([m.weight.detach() for m in linears])  # [K, out, in]
        biases = [m.bias.detach() for m in linears if m.bias is not None]
        if layout is _Layout.SHARED:
            self.weight = nn.Parameter(weights.flatten(0, 1).clone())  # [K * out, in]
            self.bias = nn.Parameter(torch.cat(biases)) if biases else None
        else:
            self.weight = nn.Parameter(weights.clone())
            # [K, 1, out]: baddbmm broadcasts it over the batch.
            self.bias = nn.Parameter(torch.stack(biases).unsqueeze(1)) if biases else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.layout is _Layout.SHARED:
            out = nn.functional.linear(x, self.weight, self.bias)
            return out.view(x.shape[0], self.members, self.out_features).transpose(0, 1)
        if self.layout is _Layout.GROUPED:
            x = x.view(x.shape[0], self.members, -1).transpose(0, 1)
        weight = self.weight.transpose(1, 2)
        if self.bias is None:
            return torch.bmm(x, weight)
        return torch.baddbmm(self.bias, x, weight)


class _FlattenMembers(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2)


# ----- vmap and loop: the members' parameters stacked, the model run functionally -----


class _Functional(nn.Module):
    """The members' parameters and buffers stacked ``[K, ...]``, applied to one template."""

    def __init__(self, models: Sequence[nn.Module], vectorized: bool) -> None:
        super().__init__()
        params, buffers = stack_module_state(list(models))
        self.names = list(params)
        self.buffer_names = list(buffers)
        self.stacked = nn.ParameterList(params.values())
        for index, buffer in enumerate(buffers.values()):
            self.register_buffer(f"buffer{index}", buffer)
        # The template holds no data of its own; functional_call supplies every tensor.
        self.template = copy.deepcopy(models[0]).to("meta")
        self.vectorized = vectorized

    def train(self, mode: bool = True) -> _Functional:
        super().train(mode)
        self.template.train(mode)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        params = list(self.stacked)
        buffers = [getattr(self, f"buffer{i}") for i in range(len(self.buffer_names))]

        def one(
            member_params: list[torch.Tensor], member_buffers: list[torch.Tensor]
        ) -> torch.Tensor:
            state = dict(zip(self.names, member_params, strict=True))
            state.update(zip(self.buffer_names, member_buffers, strict=True))
            out: torch.Tensor = functional_call(self.template, state, (x,))
            return out

        if self.vectorized:
            out: torch.Tensor = vmap(one, randomness="different")(params, buffers)
            return out
        return torch.stack(
            [one([p[k] for p in params], [b[k] for b in buffers]) for k in range(len(params[0]))]
        )


def _vmapped(models: Sequence[nn.Module]) -> StackedModels:
    module = _Functional(models, vectorized=True)
    return StackedModels(module, list(module.stacked), len(models), "vmap")


def _looped(models: Sequence[nn.Module]) -> StackedModels:
    module = _Functional(models, vectorized=False)
    return StackedModels(module, list(module.stacked), len(models), "loop")
