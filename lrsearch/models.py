"""Small models that tasks and benchmarks share: a character-level GPT and a ResNet for digits.

Both are written so that lrsearch can train them as populations (lrsearch.stacking): every
layer acts on the last dimensions alone and leaves any leading ones as they are, so the same
forward runs unchanged on activations that carry a member axis in front.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["BasicBlock", "CharGPT", "resnet_digits"]


class _SelfAttention(nn.Module):
    """Causal multi-head self-attention through ``F.scaled_dot_product_attention``.

    Dropout is on the output projection only, as an ``nn.Dropout`` module: in a population
    each member draws that module's masks from its own generator, which dropout inside the
    attention kernel could not do.
    """

    def __init__(self, n_embd: int, n_head: int, dropout: float) -> None:
        super().__init__()
        self.n_head = n_head
        self.qkv = nn.Linear(n_embd, 3 * n_embd)
        self.proj = nn.Linear(n_embd, n_embd)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        *lead, length, width = x.shape
        # One batch dimension in front: the fused (flash) CPU kernel takes 4-D inputs only, a
        # member axis in front of the batch would send it to the slower math path.
        q, k, v = (
            part.reshape(-1, length, self.n_head, width // self.n_head).transpose(1, 2)
            for part in self.qkv(x).split(width, dim=-1)
        )
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = y.transpose(1, 2).reshape(*lead, length, width)
        out: torch.Tensor = self.dropout(self.proj(y))
        return out


class _Block(nn.Module):
    """Pre-norm transformer block: attention then a 4x-wide GELU MLP, each with a residual."""

    def __init__(self, n_embd: int, n_head: int, dropout: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(n_embd)
        self.attn = _SelfAttention(n_embd, n_head, dropout)
        self.ln2 = nn.LayerNorm(n_embd)
        self.mlp = nn.Sequential(
            nn.Linear(n_embd, 4 * n_embd),
            nn.GELU(),
            nn.Linear(4 * n_embd, n_embd),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        out: torch.Tensor = x + self.mlp(self.ln2(x))
        return out


class CharGPT(nn.Module):
    """A small decoder-only transformer in nanoGPT's shape: token ids ``[B, T]`` (int64) to
    next-token logits ``[B, T, vocab_size]``.

    As nanoGPT's ``model.py`` except: no weight tying between the token embedding and the
    output layer (a tied parameter would be one tensor shared by two layers, which a
    population cannot split by member; at a character vocabulary it is a few thousand
    weights), and no dropout on the attention weights (see ``_SelfAttention``).
    """

    def __init__(
        self,
        vocab_size: int,
        block_size: int,
        n_layer: int = 2,
        n_head: int = 4,
        n_embd: int = 64,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if n_embd % n_head:
            raise ValueError(f"n_embd must be a multiple of n_head, got {n_embd} and {n_head}")
        self.block_size = block_size
        self.token = nn.Embedding(vocab_size, n_embd)
        self.position = nn.Embedding(block_size, n_embd)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.Sequential(*(_Block(n_embd, n_head, dropout) for _ in range(n_layer)))
        self.ln_f = nn.LayerNorm(n_embd)
        self.head = nn.Linear(n_embd, vocab_size, bias=False)
        # nanoGPT's initialisation: N(0, 0.02), residual projections scaled by depth.
        for name, param in self.named_parameters():
            if name.endswith("weight") and param.dim() == 2:
                std = 0.02 / math.sqrt(2 * n_layer) if name.endswith("proj.weight") else 0.02
                nn.init.normal_(param, mean=0.0, std=std)
            elif name.endswith("bias") and "ln" not in name:
                nn.init.zeros_(param)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        length = idx.shape[-1]
        if length > self.block_size:
            raise ValueError(f"sequence of {length} tokens, block_size is {self.block_size}")
        positions = torch.arange(length, device=idx.device)
        # [T, C] -> [1, T, C]: broadcast over the batch, and over a member axis in front.
        x = self.dropout(self.token(idx) + self.position(positions).unsqueeze(-3))
        logits: torch.Tensor = self.head(self.ln_f(self.blocks(x)))
        return logits


class BasicBlock(nn.Module):
    """Two 3x3 convolutions plus a shortcut, the residual unit of ResNet-18/34."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def resnet_digits(num_classes: int = 10) -> nn.Module:
    """A two-stage ResNet for 1x8x8 images (scikit-learn's digits): 8x8 then 4x4."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        BasicBlock(16, 16, stride=1),
        BasicBlock(16, 32, stride=2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, num_classes),
    )
