"""On-device batch transforms: the same batch size, the draws the generator decides."""

from __future__ import annotations

import pytest
import torch

from lrsearch.errors import LrsearchError
from lrsearch.transforms import random_crop_flip


def images(batch: int = 64) -> torch.Tensor:
    return torch.arange(batch * 2 * 5 * 5, dtype=torch.float32).view(batch, 2, 5, 5) + 1


def test_crops_shift_each_image_by_at_most_pad_and_keep_the_batch() -> None:
    batch = images()
    out = random_crop_flip(pad=1, flip=False)(batch, torch.Generator().manual_seed(0))

    assert out.shape == batch.shape and out.dtype == batch.dtype
    for original, cropped in zip(batch, out, strict=True):
        padded = torch.nn.functional.pad(original, (1, 1, 1, 1))
        assert any(
            torch.equal(cropped, padded[:, dy : dy + 5, dx : dx + 5])
            for dy in range(3)
            for dx in range(3)
        )
    shifted = sum(not torch.equal(a, b) for a, b in zip(batch, out, strict=True))
    assert 0 < shifted < len(batch)  # one shift of nine keeps the image where it was


def test_flips_mirror_some_images_and_leave_the_others() -> None:
    batch = images()
    out = random_crop_flip(pad=0)(batch, torch.Generator().manual_seed(0))

    flipped = [torch.equal(b, a.flip(-1)) for a, b in zip(batch, out, strict=True)]
    kept = [torch.equal(b, a) for a, b in zip(batch, out, strict=True)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert 0 < sum(flipped) < len(batch)


def test_the_generator_decides_every_draw() -> None:
    transform = random_crop_flip(pad=2)
    first = transform(images(), torch.Generator().manual_seed(5))
    again = transform(images(), torch.Generator().manual_seed(5))
    other = transform(images(), torch.Generator().manual_seed(6))
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_uint8_images_stay_uint8() -> None:
    batch = torch.randint(0, 255, (8, 1, 8, 8), dtype=torch.uint8)
    out = random_crop_flip(pad=1)(batch, torch.Generator().manual_seed(0))
    assert out.dtype == torch.uint8 and out.shape == batch.shape


@pytest.mark.parametrize("pad", [-1, 1.5, True])
def test_a_bad_pad_is_named(pad: object) -> None:
    with pytest.raises(LrsearchError, match=f"pad must be an int >= 0, got {pad!r}"):
        random_crop_flip(pad=pad)  # type: ignore[arg-type]


def test_images_of_another_shape_are_named() -> None:
    with pytest.raises(LrsearchError, match=r"takes \[B, C, H, W\] images, got shape \(4, 3\)"):
        random_crop_flip(pad=1)(torch.zeros(4, 3), torch.Generator())
