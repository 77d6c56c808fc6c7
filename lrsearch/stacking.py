"""K models as one: the members of a population run their forward passes together.

Three ways, tried in this order, each checked against the members' own models on a probe
batch before it is used, so a model that one way cannot express falls through to the next:

- ``stacked``: the network rebuilt wide. The first layer reads the shared input once with K
  times the outputs; later convolutions (1-D and 2-D) become grouped (``groups=K``), batch
  norms K times as wide, linear layers batched matmuls (``baddbmm``); embeddings read the
  shared token ids from K tables at once, layer norms and linear layers act on ``[K, ...]``
  activations, and a block of the model's own (a residual unit, a transformer block, the
  model itself) keeps its forward with its children made wide. A layer is rebuilt only when
  it is exactly of a type this way knows, with no hook: a subclass's or a hook's code (a
  LoRA branch, a parametrized weight) would be dropped, and a difference in training mode
  alone escapes the probe. On a 2-core CPU this is the way that pays: small layers become
  large ones (BENCHMARKS.md).
- ``vmap``: ``torch.func.stack_module_state`` + ``vmap`` + ``functional_call``, for models
  built from layers the first way does not know.
- ``loop``: the same stacked parameters, each member's slice run in turn by
  ``functional_call``: slow, and always correct.

Every way keeps the parameters as tensors whose first dimension is member-major (member k's
rows are ``k * rows .. (k + 1) * rows - 1``), in the order of the members' own parameters,
so one optimizer serves them all.

Dropout: a member must train as it would alone, whatever the population's size, so each
member draws its ``nn.Dropout`` masks from a generator of its own, seeded from its seed. The
stacked way draws them per member; the loop runs each member on its own random stream;
``vmap``, which draws for all members at once, is skipped for a model with dropout.
"""

from __future__ import annotations

import contextlib
import copy
import enum
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from lrsearch.optim import weight_matrices

__all__ = ["StackedModels", "stack_models"]

Path = Literal["stacked", "vmap", "loop"]
# Dropout generators are seeded past every initialisation seed (at most 2**32 - 1), so a
# member's masks never replay the random numbers its weights were drawn from.
DROPOUT_STREAM = 2**32


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
)
_POOLS = (
    nn.MaxPool1d,
    nn.AvgPool1d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveMaxPool1d,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
)
# Every layer rebuilt wide, or run unchanged on wide activations, by its exact type.
_KNOWN = (
    nn.Sequential,
    nn.Conv1d,
    nn.Conv2d,
    nn.Linear,
    nn.Embedding,
    nn.LayerNorm,
    nn.Dropout,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.Flatten,
    *_CHANNEL_WISE,
    *_POOLS,
)


@dataclass(frozen=True)
class StackedModels:
    """K models' forward pass as one call returning outputs ``[K, B, ...]``."""

    module: nn.Module
    params: list[torch.Tensor]  # leaves with a member-major first dimension
    members: int
    path: Path
    # params[i] is a weight matrix (two or more dimensions, not an embedding): what weight
    # decay is limited to when it skips norms, biases and embeddings.
    matrices: list[bool]


def stack_models(
    models: Sequence[nn.Module], probe: torch.Tensor, seeds: Sequence[int] | None = None
) -> StackedModels:
    """Stack ``models`` (same architecture, one per member) the fastest way that is correct.

    ``probe`` is a small input batch, as training feeds it: each candidate's output on it
    must match the members' own models, in eval mode, before the candidate is used; a
    train-mode forward and backward must also run. The models' parameters are copied, the
    models left unchanged. ``seeds`` (default 0, 1, ...) seed each member's dropout masks.
    """
    seeds = list(range(len(models))) if seeds is None else list(seeds)
    if len(seeds) != len(models):
        raise ValueError(f"{len(seeds)} seeds for {len(models)} models")
    reasons = []
    for name, build in (("stacked", _stacked), ("vmap", _vmapped), ("loop", _looped)):
        try:
            generators = [
                torch.Generator(probe.device).manual_seed(DROPOUT_STREAM + seed) for seed in seeds
            ]
            candidate = build(models, generators)
            _check(candidate, models, probe)
            return candidate
        except Exception as error:  # any failure of one way means: try the next
            reasons.append(f"{name}: {type(error).__name__}: {error}")
    raise RuntimeError("the model cannot be trained as a population (" + "; ".join(reasons) + ")")


def _has_dropout(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules())


def _check(candidate: StackedModels, models: Sequence[nn.Module], probe: torch.Tensor) -> None:
    own = list(models[0].parameters())
    if [p.numel() for p in candidate.params] != [p.numel() * len(models) for p in own]:
        raise _NotStackable("its parameters do not match the members' one for one")
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


def _stacked(models: Sequence[nn.Module], generators: list[torch.Generator]) -> StackedModels:
    module, layout = _wide(list(models), _Layout.SHARED, generators)
    # NHWC convolutions: 16% faster LeNet steps on a 2-core CPU (BENCHMARKS.md), and the
    # layout bf16 tensor-core convolutions run in on CUDA.
    wide = _Output(module, layout, len(models)).to(memory_format=torch.channels_last)
    # Parameters here are plain leaves; a wide network's are already member-major.
    params: list[torch.Tensor] = list(wide.parameters())
    return StackedModels(wide, params, len(models), "stacked", weight_matrices(models[0]))


class _Output(nn.Module):
    """Outputs as ``[K, B, ...]`` whatever layout the last layer left."""

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


def _wide(
    models: list[nn.Module], layout: _Layout, generators: list[torch.Generator]
) -> tuple[nn.Module, _Layout]:
    """The members' copies of one layer as one wide layer, and the layout it outputs."""
    first = models[0]
    if any(type(m) is not type(first) for m in models):
        raise _NotStackable("the members' models differ in structure")
    if any(_hooked(m) for m in models):
        raise _NotStackable(f"a hook on {type(first).__name__}")
    if isinstance(first, _KNOWN) and type(first) not in _KNOWN:
        # A subclass may compute anything (an output scaled, a LoRA branch, a parametrized
        # weight, a helper of its forward replaced): the wide layer would silently drop it,
        # and the probe, comparing eval-mode outputs, misses a difference in training alone.
        # Its own forward is kept as a block's, or vmap and the loop run it.
        if _is_block(first):
            return _wide_block(models, layout, generators)
        raise _NotStackable(f"{type(first).__name__} subclasses a known layer")
    if isinstance(first, nn.Sequential):
        layers = []
        for parts in zip(*(list(m.children()) for m in models), strict=True):
            layer, layout = _wide(list(parts), layout, generators)
            layers.append(layer)
        return nn.Sequential(*layers), layout
    if isinstance(first, (nn.Conv1d, nn.Conv2d)):
        return _wide_conv(models, layout), _Layout.GROUPED
    if isinstance(first, nn.Linear):
        return _WideLinear(models, layout), _Layout.MEMBER
    if isinstance(first, nn.Embedding):  # reads token ids, which every member shares
        return _WideEmbedding(models), _Layout.MEMBER
    if isinstance(first, nn.LayerNorm) and layout is _Layout.MEMBER:
        return _WideLayerNorm(models), layout
    if isinstance(first, nn.Dropout) and (layout is not _Layout.SHARED or first.p == 0):
        return _MemberDropout(first.p, generators, layout), layout
    if isinstance(first, (nn.BatchNorm1d, nn.BatchNorm2d)) and layout is _Layout.GROUPED:
        return _wide_batch_norm(models), layout
    if isinstance(first, nn.Flatten) and first.start_dim == 1 and first.end_dim == -1:
        return (_FlattenMembers() if layout is _Layout.MEMBER else nn.Flatten()), layout
    if isinstance(first, _CHANNEL_WISE):
        return copy.deepcopy(first), layout
    if isinstance(first, _POOLS) and layout is not _Layout.MEMBER:
        return copy.deepcopy(first), layout
    if _is_block(first):
        return _wide_block(models, layout, generators)
    raise _NotStackable(f"{type(first).__name__} after a {layout.value} layout")


def _hooked(module: nn.Module) -> bool:
    """A hook may change the module's inputs, outputs or gradients: a wide rebuild of it
    would not run the hook as the model does."""
    hooks = (
        module._forward_hooks,
        module._forward_pre_hooks,
        module._backward_hooks,
        module._backward_pre_hooks,
    )
    return any(hooks)


def _is_block(module: nn.Module) -> bool:
    """Children and no parameters of its own: its forward can be kept, its children made wide."""
    return any(True for _ in module.children()) and not any(True for _ in module.parameters(False))


def _wide_block(
    models: list[nn.Module], layout: _Layout, generators: list[torch.Generator]
) -> tuple[nn.Module, _Layout]:
    """A block of the model's own (a residual unit, a transformer block): its children made
    wide, its forward kept. In the channel layout every child must keep it; otherwise the
    children act on ``[K, ...]`` activations (or read shared token ids), which needs a forward
    that leaves leading dimensions alone. The probe check rejects a forward that mixes
    members (a concatenation of channels, a view of the batch)."""
    first = models[0]
    block = copy.deepcopy(first)
    inner = _Layout.GROUPED if layout is _Layout.GROUPED else _Layout.MEMBER
    for name, _ in first.named_children():
        child, child_layout = _wide([getattr(m, name) for m in models], inner, generators)
        if child_layout is not inner:
            raise _NotStackable(f"{type(first).__name__}.{name} leaves the {inner.value} layout")
        setattr(block, name, child)
    return block, inner


def _wide_conv(models: list[nn.Module], layout: _Layout) -> nn.Module:
    convs = [m for m in models if isinstance(m, (nn.Conv1d, nn.Conv2d))]
    first = convs[0]
    if layout is _Layout.MEMBER or (layout is _Layout.SHARED and first.groups != 1):
        raise _NotStackable("a convolution after a linear layer, or grouped on the input")
    members = len(convs)
    shared = layout is _Layout.SHARED
    wide = type(first)(
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
    a batched matmul (``baddbmm``) otherwise; outputs ``[K, B, ..., out]``."""

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
            return out.view(*x.shape[:-1], self.members, self.out_features).movedim(-2, 0)
        if self.layout is _Layout.GROUPED:
            x = x.view(x.shape[0], self.members, -1).transpose(0, 1)
        lead = x.shape[1:-1]  # [K, B, ..., in] -> [K, rows, in] for one batched matmul
        x = x.reshape(self.members, -1, x.shape[-1])
        weight = self.weight.transpose(1, 2)
        out = torch.bmm(x, weight) if self.bias is None else torch.baddbmm(self.bias, x, weight)
        return out.view(self.members, *lead, self.out_features)


class _WideEmbedding(nn.Module):
    """K embedding tables as one ``[K * rows, dim]`` table: member k looks up ids offset by
    ``k * rows``; reads shared ids ``[...]``, outputs ``[K, ..., dim]``."""

    def __init__(self, models: list[nn.Module]) -> None:
        super().__init__()
        tables = [m for m in models if isinstance(m, nn.Embedding)]
        first = tables[0]
        if first.padding_idx is not None or first.max_norm is not None or first.sparse:
            raise _NotStackable("an embedding with padding_idx, max_norm or sparse gradients")
        self.members, self.rows = len(tables), first.num_embeddings
        self.weight = nn.Parameter(torch.cat([m.weight.detach() for m in tables]))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        offsets = torch.arange(self.members, device=ids.device) * self.rows
        offsets = offsets.view(-1, *(1,) * ids.dim())
        return nn.functional.embedding(ids.unsqueeze(0) + offsets, self.weight)


class _WideLayerNorm(nn.Module):
    """K layer norms over the last dimension of ``[K, ..., C]``: one normalisation for all,
    then each member's scale and shift."""

    def __init__(self, models: list[nn.Module]) -> None:
        super().__init__()
        norms = [m for m in models if isinstance(m, nn.LayerNorm)]
        first = norms[0]
        if len(first.normalized_shape) != 1:
            raise _NotStackable("a layer norm over more than the last dimension")
        self.shape, self.eps = first.normalized_shape, first.eps
        self.weight = self.bias = None
        if first.weight is not None:
            self.weight = nn.Parameter(torch.stack([n.weight.detach() for n in norms]))
        if first.bias is not None:
            self.bias = nn.Parameter(torch.stack([n.bias.detach() for n in norms]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = nn.functional.layer_norm(x, self.shape, eps=self.eps)
        broadcast = (x.shape[0], *(1,) * (x.dim() - 2), x.shape[-1])
        if self.weight is not None:
            out = out * self.weight.view(broadcast)
        if self.bias is not None:
            out = out + self.bias.view(broadcast)
        return out


class _MemberDropout(nn.Module):
    """Dropout with each member's masks from its own generator, drawn in the shape of one
    member's activations: the same masks at any population size."""

    def __init__(self, p: float, generators: list[torch.Generator], layout: _Layout) -> None:
        super().__init__()
        self.p, self.generators, self.layout = p, generators, layout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        members = len(self.generators)
        # The member axis: 0 of [K, B, ...], or 1 of [B, K * C, ...] seen as [B, K, C, ...].
        axis = 0 if self.layout is _Layout.MEMBER else 1
        view = x if axis == 0 else x.reshape(x.shape[0], members, -1, *x.shape[2:])
        shape = view.shape[:axis] + view.shape[axis + 1 :]
        draws = [
            torch.empty(shape, device=x.device, dtype=x.dtype).bernoulli_(1 - self.p, generator=g)
            for g in self.generators
        ]
        return (view * torch.stack(draws, dim=axis) / (1 - self.p)).reshape(x.shape)


class _FlattenMembers(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2)


# ----- vmap and loop: the members' parameters stacked, the model run functionally -----


class _Functional(nn.Module):
    """The members' parameters and buffers stacked ``[K, ...]``, applied to one template."""

    def __init__(
        self, models: Sequence[nn.Module], vectorized: bool, generators: list[torch.Generator]
    ) -> None:
        super().__init__()
        self.generators = generators if _has_dropout(models[0]) else None
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
        outs = []
        for k in range(len(params[0])):
            stream: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
            if self.generators is not None and self.training:
                stream = _drawing_from(self.generators[k])
            with stream:
                outs.append(one([p[k] for p in params], [b[k] for b in buffers]))
        return torch.stack(outs)


@contextlib.contextmanager
def _drawing_from(generator: torch.Generator) -> Iterator[None]:
    """Random draws on ``generator``'s device come from its stream, which then moves on."""
    device = generator.device
    default = (
        torch.cuda.default_generators[device.index or 0]
        if device.type == "cuda"
        else torch.default_generator
    )
    saved = default.get_state()
    default.set_state(generator.get_state())
    try:
        yield
    finally:
        generator.set_state(default.get_state())
        default.set_state(saved)


def _vmapped(models: Sequence[nn.Module], generators: list[torch.Generator]) -> StackedModels:
    if _has_dropout(models[0]):
        raise _NotStackable("vmap draws dropout masks for all members at once, not per member")
    return _functional(models, generators, "vmap")


def _looped(models: Sequence[nn.Module], generators: list[torch.Generator]) -> StackedModels:
    return _functional(models, generators, "loop")


def _functional(
    models: Sequence[nn.Module], generators: list[torch.Generator], path: Path
) -> StackedModels:
    module = _Functional(models, vectorized=path == "vmap", generators=generators)
    params = list(module.stacked)
    return StackedModels(module, params, len(models), path, weight_matrices(models[0]))
