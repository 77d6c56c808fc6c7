"""The shared models: shapes, causality, dropout only in training, and that they learn."""

from __future__ import annotations

import pytest
import torch

from lrsearch.models import CharGPT, resnet_digits

VOCAB, BLOCK = 11, 16


def test_char_gpt_maps_token_ids_to_next_token_logits() -> None:
    torch.manual_seed(0)
    model = CharGPT(VOCAB, BLOCK, n_layer=2, n_head=4, n_embd=32)
    idx = torch.randint(VOCAB, (3, BLOCK))
    assert model(idx).shape == (3, BLOCK, VOCAB)
    assert model(idx[:, :5]).shape == (3, 5, VOCAB)  # shorter than block_size


def test_char_gpt_is_causal() -> None:
    """A position's logits do not depend on the tokens after it."""
    torch.manual_seed(0)
    model = CharGPT(VOCAB, BLOCK, n_embd=32).eval()
    idx = torch.randint(VOCAB, (2, BLOCK))
    changed = idx.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % VOCAB
    with torch.no_grad():
        before, after = model(idx), model(changed)
    torch.testing.assert_close(before[:, :10], after[:, :10])
    assert not torch.allclose(before[:, 10:], after[:, 10:])


def test_char_gpt_runs_on_a_leading_member_axis() -> None:
    """Every layer leaves leading dimensions alone, which stacked populations rely on."""
    torch.manual_seed(0)
    model = CharGPT(VOCAB, BLOCK, n_embd=32).eval()
    idx = torch.randint(VOCAB, (2, 3, BLOCK))
    with torch.no_grad():
        both = model(idx)
        torch.testing.assert_close(both[1], model(idx[1]))


def test_char_gpt_dropout_acts_in_training_only() -> None:
    torch.manual_seed(0)
    model = CharGPT(VOCAB, BLOCK, n_embd=32, dropout=0.5)
    idx = torch.randint(VOCAB, (2, BLOCK))
    assert not torch.allclose(model(idx), model(idx))
    model.eval()
    torch.testing.assert_close(model(idx), model(idx))


def test_char_gpt_refuses_bad_shapes() -> None:
    with pytest.raises(ValueError, match="multiple of n_head"):
        CharGPT(VOCAB, BLOCK, n_head=3, n_embd=32)
    with pytest.raises(ValueError, match="block_size"):
        CharGPT(VOCAB, BLOCK, n_embd=32)(torch.zeros(1, BLOCK + 1, dtype=torch.int64))


def test_char_gpt_learns_a_repeated_sequence() -> None:
    torch.manual_seed(0)
    model = CharGPT(VOCAB, BLOCK, n_embd=32)
    text = torch.arange(BLOCK + 1) % VOCAB
    idx, targets = text[:-1].unsqueeze(0), text[1:].unsqueeze(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = torch.nn.functional.cross_entropy(model(idx).flatten(0, 1), targets.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 4


def test_resnet_digits_classifies_8x8_images() -> None:
    torch.manual_seed(0)
    model = resnet_digits(num_classes=7)
    images = torch.randn(5, 1, 8, 8)
    logits = model(images)
    assert logits.shape == (5, 7)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
