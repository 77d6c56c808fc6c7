"""A character-level GPT on text every Python installation has: the standard library's source.

Run from the repository root: ``python -m lrsearch run --study studies/char_gpt.toml``.

Inputs are token ids ``[N, T]`` (int64, never standardised), targets the next character at
every position ``[N, T]``, the loss cross-entropy per position; the study minimises the loss
on held-out text. The text is cut in three contiguous pieces (train, then validation, then
test), so validation windows never neighbour the training ones: the task gives its own
validation split instead of letting lrsearch carve random windows out of train.

``--data-dir FILE`` (or ``[task] data_dir``) names another UTF-8 text file to train on.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import torch
from torch import nn

from lrsearch.errors import LrsearchError
from lrsearch.models import CharGPT
from lrsearch.tasks import TaskSource

BLOCK = 64  # characters of context
# Fixed standard library modules: their source ships with every CPython (about 110,000
# characters together; the exact text changes a little between Python versions).
MODULES = ("textwrap", "string", "heapq", "bisect", "fractions", "shlex", "queue")
SPLITS = (0.8, 0.9)  # train up to 80% of the text, validation to 90%, test the rest


def stdlib_text() -> str:
    return "\n".join(
        Path(str(inspect.getsourcefile(importlib.import_module(name)))).read_text("utf-8")
        for name in MODULES
    )


def windows(ids: torch.Tensor, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs ``[N, BLOCK]`` and next-character targets from windows ``stride`` apart."""
    chunks = ids.unfold(0, BLOCK + 1, stride)
    return chunks[:, :-1].contiguous(), chunks[:, 1:].contiguous()


def build(data_dir: Path) -> TaskSource:
    """The standard library's text, or the file ``data_dir`` names."""
    if data_dir.is_file():
        try:
            text = data_dir.read_text("utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise LrsearchError(f"cannot read {data_dir} as UTF-8 text: {error}") from None
    else:
        text = stdlib_text()
    vocabulary = sorted(set(text))
    index = {char: number for number, char in enumerate(vocabulary)}
    ids = torch.tensor([index[char] for char in text], dtype=torch.int64)
    first, second = (int(fraction * len(ids)) for fraction in SPLITS)
    if first < 10 * (BLOCK + 1):
        raise LrsearchError(
            f"the text has {len(ids)} characters; char_gpt needs at least "
            f"{int(10 * (BLOCK + 1) / SPLITS[0]) + 1}"
        )
    train = windows(ids[:first], BLOCK)
    val = windows(ids[first:second], BLOCK)
    test = windows(ids[second:], BLOCK)

    def gpt() -> nn.Module:
        return CharGPT(len(vocabulary), BLOCK, n_layer=2, n_head=4, n_embd=64)

    return TaskSource(
        train_images=train[0],
        train_labels=train[1],
        val_images=val[0],
        val_labels=val[1],
        test_images=test[0],
        test_labels=test[1],
        num_classes=len(vocabulary),
        models={"gpt": gpt},
    )
