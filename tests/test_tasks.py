from __future__ import annotations

import copy
import dataclasses
import math
import pickle
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.error import URLError

import numpy as np
import pytest
import torch
from idx_files import accept_cifar10_files, write_cifar10_like, write_mnist_like
from torch import nn

from lrsearch.errors import LrsearchError
from lrsearch.tasks import (
    BUILTIN_TASKS,
    Metric,
    Task,
    TaskSource,
    lenet,
    load_source,
    load_task,
    prepare_task,
    small_cnn,
)

CPU = torch.device("cpu")
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail every download at once, as offline, so no test depends on or waits for a network."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise URLError("network disabled in tests")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def write_builtin(task: str, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if task == "cifar10":
        write_cifar10_like(root)
        accept_cifar10_files(monkeypatch)
    else:
        write_mnist_like(root, dataset={"fashion-mnist": "FashionMNIST", "mnist": "MNIST"}[task])


def first_written_image(task: str, root: Path) -> np.ndarray:
    """The first training image as [C, H, W], read straight from the written file."""
    if task == "cifar10":
        batch = pickle.loads((root / "cifar-10-batches-py" / "data_batch_1").read_bytes())
        return np.asarray(batch["data"][0]).reshape(3, 32, 32)
    folder = {"fashion-mnist": "FashionMNIST", "mnist": "MNIST"}[task]
    raw = (root / folder / "raw" / "train-images-idx3-ubyte").read_bytes()
    return np.frombuffer(raw, dtype=np.uint8, offset=16)[: 28 * 28].reshape(1, 28, 28)


def load(task: str, root: Path, **overrides: Any) -> Task:
    options: dict[str, Any] = {
        "model": None,
        "data_dir": root,
        "val_size": 20,
        "split_seed": 0,
        "device": CPU,
        "download": False,
    }
    return load_task(task, **(options | overrides))


def numbered_source(n_train: int = 100, n_test: int = 10) -> TaskSource:
    """Image i is filled with the value i, so every sample can be told apart after a split."""
    train_images = torch.arange(n_train, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 1, 4, 4)
    return TaskSource(
        train_images=train_images.contiguous(),
        train_labels=torch.arange(n_train) % 10,
        test_images=torch.full((n_test, 1, 4, 4), 1000.0),
        test_labels=torch.arange(n_test) % 10,
        num_classes=10,
        models={"linear": tiny_linear},
    )


def tiny_linear() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 10))


def prepare(source: TaskSource, **overrides: Any) -> Task:
    options: dict[str, Any] = {
        "name": "numbered",
        "model": None,
        "val_size": 30,
        "split_seed": 0,
        "device": CPU,
    }
    return prepare_task(source, **(options | overrides))


def ids(images: torch.Tensor) -> set[int]:
    return {int(value) for value in images[:, 0, 0, 0]}


@pytest.mark.parametrize("download", [False, True])
@pytest.mark.parametrize(
    ("task", "shape", "n_train", "n_test"),
    [
        ("fashion-mnist", (1, 28, 28), 200, 100),
        ("mnist", (1, 28, 28), 200, 100),
        ("cifar10", (3, 32, 32), 100, 50),
    ],
)
def test_builtin_loads_written_files_as_nchw_uint8(
    task: str,
    shape: tuple[int, ...],
    n_train: int,
    n_test: int,
    download: bool,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    write_builtin(task, tmp_path, monkeypatch)

    source = load_source(task, tmp_path, download=download)

    assert source.train_images.shape == (n_train, *shape)
    assert source.test_images.shape == (n_test, *shape)
    assert source.train_images.dtype == source.test_images.dtype == torch.uint8
    assert source.train_labels.dtype == torch.int64
    assert source.train_labels.bincount().tolist() == [n_train // 10] * 10
    np.testing.assert_array_equal(
        source.train_images[0].numpy(), first_written_image(task, tmp_path)
    )


def test_task_keeps_uint8_splits_on_device(tmp_path: Path) -> None:
    write_mnist_like(tmp_path)

    task = load("fashion-mnist", tmp_path, val_size=50)

    assert (len(task.train_images), len(task.val_images), len(task.test_images)) == (150, 50, 100)
    for images in (task.train_images, task.val_images, task.test_images):
        assert images.dtype == torch.uint8
        assert images.device == CPU
    assert task.mean.shape == task.std.shape == (1, 1, 1, 1)
    assert task.mean.dtype == torch.float32


@pytest.mark.parametrize(("val_size", "n_val"), [(30, 30), (0.25, 25), (1, 1), (99, 99)])
def test_val_split_is_carved_from_train_disjoint_and_sized(
    val_size: int | float, n_val: int
) -> None:
    task = prepare(numbered_source(100), val_size=val_size)

    assert len(task.val_images) == len(task.val_labels) == n_val
    assert ids(task.train_images).isdisjoint(ids(task.val_images))
    assert ids(task.train_images) | ids(task.val_images) == set(range(100))
    assert (task.val_labels == task.val_images[:, 0, 0, 0].long() % 10).all()


def test_val_split_depends_on_the_split_seed_only() -> None:
    source = numbered_source(100)
    expected = torch.randperm(100, generator=torch.Generator().manual_seed(7))[:30]

    torch.manual_seed(1)
    first = prepare(source, split_seed=7)
    torch.manual_seed(2)
    second = prepare(source, split_seed=7)
    other_seed = prepare(source, split_seed=8)

    assert first.val_images[:, 0, 0, 0].long().tolist() == expected.tolist()
    assert torch.equal(first.val_images, second.val_images)
    assert not torch.equal(first.val_images, other_seed.val_images)


def test_mean_and_std_come_from_the_train_split_per_channel() -> None:
    generator = torch.Generator().manual_seed(0)
    train_images = torch.randint(0, 256, (60, 3, 4, 4), dtype=torch.uint8, generator=generator)
    train_images[:, 1] //= 4  # channels with different statistics
    source = TaskSource(
        train_images=train_images,
        train_labels=torch.zeros(60, dtype=torch.int64),
        test_images=torch.full((5, 3, 4, 4), 255, dtype=torch.uint8),
        test_labels=torch.zeros(5, dtype=torch.int64),
        num_classes=2,
        models={"linear": lambda: nn.Sequential(nn.Flatten(), nn.Linear(48, 2))},
    )

    task = prepare(source, val_size=20)

    train = task.train_images.double()
    expected_mean = train.mean(dim=(0, 2, 3))
    expected_std = train.std(dim=(0, 2, 3), correction=0)
    assert torch.allclose(task.mean.flatten().double(), expected_mean, atol=1e-4)
    assert torch.allclose(task.std.flatten().double(), expected_std, atol=1e-4)
    assert not torch.allclose(expected_mean, train_images.double().mean(dim=(0, 2, 3)), atol=1e-4)
    normalized = task.normalize(task.train_images)
    assert normalized.dtype == torch.float32
    assert torch.allclose(normalized.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)


def test_constant_channel_is_centered_not_divided_by_zero() -> None:
    source = numbered_source(10)
    constant = TaskSource(
        train_images=torch.full((10, 1, 4, 4), 7.0),
        train_labels=source.train_labels,
        test_images=source.test_images,
        test_labels=source.test_labels,
        num_classes=10,
        models=source.models,
    )

    task = prepare(constant, val_size=2)

    assert task.std.item() == 1.0
    assert torch.equal(task.normalize(task.val_images), torch.zeros(2, 1, 4, 4))


@pytest.mark.parametrize(("task_name", "default"), [("mnist", "lenet"), ("cifar10", "resnet")])
def test_every_model_gives_logits_per_class(
    task_name: str, default: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_builtin(task_name, tmp_path, monkeypatch)
    models = load_source(task_name, tmp_path).models

    assert next(iter(models)) == default
    assert load(task_name, tmp_path).model_name == default
    for model_name in models:
        task = load(task_name, tmp_path, model=model_name)
        logits = task.build_model()(task.normalize(task.train_images[:4]))
        assert logits.shape == (4, 10), model_name


@pytest.mark.parametrize(("factory", "parameters"), [(lenet, 61_706), (small_cnn, 421_642)])
def test_article_models_keep_their_layer_sizes(factory: Any, parameters: int) -> None:
    assert sum(p.numel() for p in factory().parameters()) == parameters


def _relu_then_pool(model: nn.Sequential) -> nn.Sequential:
    """The articles' layer order: each ReLU before its max pooling."""
    layers = list(model)
    for i in range(len(layers) - 1):
        if isinstance(layers[i], nn.MaxPool2d) and isinstance(layers[i + 1], nn.ReLU):
            layers[i], layers[i + 1] = layers[i + 1], layers[i]
    return nn.Sequential(*layers)


@pytest.mark.parametrize("factory", [lenet, small_cnn])
def test_pooling_before_relu_gives_the_articles_outputs_and_gradients(factory: Any) -> None:
    torch.manual_seed(0)
    ours = factory()
    article = _relu_then_pool(copy.deepcopy(ours))
    assert [type(m) for m in article] != [type(m) for m in ours]  # the order really differs
    # Parameters keep their indices, so the articles' checkpoints load as they are.
    assert ours.state_dict().keys() == article.state_dict().keys()
    images = torch.randn(16, 1, 28, 28)
    labels = torch.randint(0, 10, (16,))
    for model in (ours, article):
        nn.functional.cross_entropy(model(images), labels).backward()
    assert torch.equal(ours(images), article(images))
    for mine, theirs in zip(ours.parameters(), article.parameters(), strict=True):
        assert mine.grad is not None and theirs.grad is not None
        assert torch.equal(mine.grad, theirs.grad)


def test_written_data_is_learnable(tmp_path: Path) -> None:
    write_mnist_like(tmp_path)
    task = load("fashion-mnist", tmp_path)
    torch.manual_seed(0)
    model = task.build_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    for _ in range(15):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(
            model(task.normalize(task.train_images)), task.train_labels
        )
        loss.backward()
        optimizer.step()

    with torch.no_grad():
        predictions = model(task.normalize(task.test_images)).argmax(dim=1)
    assert (predictions == task.test_labels).float().mean() > 0.5


def test_unknown_task_lists_the_builtins(tmp_path: Path) -> None:
    with pytest.raises(LrsearchError, match="'imagenet'") as caught:
        load_source("imagenet", tmp_path)
    assert all(name in str(caught.value) for name in BUILTIN_TASKS)
    assert "module:function" in str(caught.value)


def test_unknown_model_lists_the_task_models(tmp_path: Path) -> None:
    write_mnist_like(tmp_path)

    with pytest.raises(LrsearchError, match=r"'vgg'.*lenet, cnn"):
        load("fashion-mnist", tmp_path, model="vgg")


def broken_factory() -> nn.Module:
    raise ValueError("no such layer")


@pytest.mark.parametrize(
    ("factory", "complaint"),
    [
        (broken_factory, "model 'm' raised ValueError: no such layer"),
        (lambda: "a model", "model 'm' returned str, expected a torch.nn.Module"),
        (
            lenet,
            r"model 'm' cannot take the task's inputs, torch.float32 of shape \(1, 4, 4\)",
        ),
        (lambda: nn.Sequential(nn.Flatten(), nn.Linear(16, 3)), r"returns \(2, 3\) for 2 examples"),
        (lambda: nn.Flatten(0), r"returns \(32,\) for 2 examples; expected logits"),
    ],
)
def test_a_broken_model_is_one_line_before_any_trial(factory: Any, complaint: str) -> None:
    source = numbered_source()
    source = TaskSource(**{**vars(source), "models": {"m": factory}})
    with pytest.raises(LrsearchError, match=complaint) as caught:
        prepare(source)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("val_size", [0, -3, 100, 150, 0.0, 1.0, 1.5, -0.2, 0.001])
def test_invalid_val_size_is_named(val_size: int | float) -> None:
    with pytest.raises(LrsearchError, match=f"val_size {val_size!r} ") as caught:
        prepare(numbered_source(100), val_size=val_size)
    assert "(0, 1)" in str(caught.value) or "1 and 99" in str(caught.value)


@pytest.mark.parametrize("download", [False, True])
@pytest.mark.parametrize("task", BUILTIN_TASKS)
def test_missing_data_names_the_directory_and_data_dir(
    task: str, download: bool, tmp_path: Path
) -> None:
    with pytest.raises(LrsearchError) as caught:
        load(task, tmp_path, download=download)

    message = str(caught.value)
    assert "\n" not in message
    assert repr(task) in message
    assert str(tmp_path.resolve()) in message
    assert "--data-dir" in message


def test_files_placed_flat_in_the_data_dir_are_told_the_layout_expected(tmp_path: Path) -> None:
    write_mnist_like(tmp_path / "nested", "FashionMNIST", n_train=20, n_test=10)
    for path in (tmp_path / "nested" / "FashionMNIST" / "raw").iterdir():
        path.rename(tmp_path / path.name)  # the files straight in --data-dir
    with pytest.raises(LrsearchError) as caught:
        load_source("fashion-mnist", tmp_path, download=False)
    assert str(caught.value).endswith("(expected: <dir>/FashionMNIST/raw/train-images-idx3-ubyte)")


def test_missing_cifar10_is_reported_even_when_md5_checks_are_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    accept_cifar10_files(monkeypatch)

    with pytest.raises(LrsearchError, match="--data-dir"):
        load_source("cifar10", tmp_path, download=False)


@pytest.mark.parametrize("task", BUILTIN_TASKS)
def test_a_failed_download_names_its_cause_and_leaves_no_folder_behind(
    task: str, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data" / "sets"

    with pytest.raises(LrsearchError) as caught:
        load_source(task, data_dir, download=True)

    message = str(caught.value)
    assert "\n" not in message
    assert "downloading it failed (" in message
    assert "<urlopen error network disabled in tests>" in message  # from no_network
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("task", BUILTIN_TASKS)
def test_a_failed_download_keeps_what_was_there(task: str, tmp_path: Path) -> None:
    folder = {"fashion-mnist": "FashionMNIST", "mnist": "MNIST", "cifar10": "cifar-10-batches-py"}
    (tmp_path / folder[task]).mkdir()
    (tmp_path / folder[task] / "notes.txt").write_text("mine")
    (tmp_path / "other.bin").write_bytes(b"mine")
    before = sorted(tmp_path.rglob("*"))

    with pytest.raises(LrsearchError, match="downloading it failed"):
        load_source(task, tmp_path, download=True)

    assert sorted(tmp_path.rglob("*")) == before
    assert (tmp_path / folder[task] / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(
    ("changes", "complaint"),
    [
        ({"train_images": torch.zeros(10, 4, 4, dtype=torch.uint8)}, "train_images must match"),
        ({"train_images": torch.zeros(0, 1, 4, 4, dtype=torch.uint8)}, "train_images must be"),
        (
            {"test_images": torch.zeros(4, 1, 4, 4, dtype=torch.int32)},
            "train_images must match the test images, torch.int32",
        ),
        ({"train_labels": torch.zeros(10, dtype=torch.int32)}, "train_labels must be int64"),
        ({"test_labels": torch.zeros(3, dtype=torch.int64)}, r"test_labels .* shape \(4,\)"),
        ({"train_labels": torch.full((10,), 10)}, r"train_labels must lie in \[0, 9\]"),
        ({"test_labels": torch.full((4,), -1)}, r"test_labels must lie in \[0, 9\]"),
        ({"test_images": torch.zeros(4, 1, 5, 5, dtype=torch.uint8)}, "must match the test"),
        ({"test_images": torch.zeros(4, 1, 4, 4)}, "must match the test"),
        ({"num_classes": 1}, "num_classes"),
        ({"models": {}}, "at least one model"),
        ({"num_classes": "10"}, "num_classes must be an int or None, got '10'"),
        ({"num_classes": True}, "num_classes must be an int or None, got True"),
        ({"num_classes": 10.0}, "num_classes must be an int or None, got 10.0"),
        ({"train_images": np.zeros((10, 1, 4, 4))}, "train_images must be a torch.Tensor"),
        ({"test_labels": [0, 1, 2, 3]}, "test_labels must be a torch.Tensor, got list"),
        ({"models": ["lenet"]}, "models must map names"),
        ({"models": {"lenet": "lenet"}}, "models must map names"),
    ],
)
def test_task_source_rejects_malformed_tensors(changes: dict[str, Any], complaint: str) -> None:
    fields: dict[str, Any] = {
        "train_images": torch.zeros(10, 1, 4, 4, dtype=torch.uint8),
        "train_labels": torch.arange(10),
        "test_images": torch.zeros(4, 1, 4, 4, dtype=torch.uint8),
        "test_labels": torch.arange(4),
        "num_classes": 10,
        "models": {"lenet": lenet},
    }

    with pytest.raises(LrsearchError, match=complaint):
        TaskSource(**(fields | changes))


USER_TASK = """
from pathlib import Path

import torch
from torch import nn

from lrsearch.tasks import TaskSource, lenet


def build(data_dir: Path) -> TaskSource:
    n = int((data_dir / "count.txt").read_text())
    return TaskSource(
        train_images=torch.zeros(n, 1, 28, 28, dtype=torch.uint8),
        train_labels=torch.arange(n) % 3,
        test_images=torch.zeros(5, 1, 28, 28, dtype=torch.uint8),
        test_labels=torch.arange(5) % 3,
        num_classes=3,
        models={"tiny": lenet},
    )


def wrong(data_dir: Path) -> list[int]:
    return [1, 2]


def raises(data_dir: Path) -> TaskSource:
    raise ValueError("no images in " + "the folder\\nsecond line")


def no_argument() -> TaskSource:
    return build(Path("."))


def string_classes(data_dir: Path) -> TaskSource:
    return TaskSource(
        train_images=torch.zeros(4, 1, 28, 28, dtype=torch.uint8),
        train_labels=torch.arange(4) % 3,
        test_images=torch.zeros(4, 1, 28, 28, dtype=torch.uint8),
        test_labels=torch.arange(4) % 3,
        num_classes="10",
        models={"tiny": lenet},
    )


not_a_function = 3
"""


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A user's task module on sys.path, with a fresh name so no earlier import is reused."""
    name = f"user_task_{uuid.uuid4().hex}"
    (tmp_path / f"{name}.py").write_text(USER_TASK)
    monkeypatch.syspath_prepend(tmp_path)
    return name


def test_user_task_loads_from_an_import_path(user_module: str, tmp_path: Path) -> None:
    (tmp_path / "count.txt").write_text("40")

    task = load(f"{user_module}:build", tmp_path, val_size=0.25)

    assert (task.name, task.model_name, task.num_classes) == (f"{user_module}:build", "tiny", 3)
    assert (len(task.train_images), len(task.val_images)) == (30, 10)


@pytest.mark.parametrize(
    ("spec", "complaint"),
    [
        ("{module}.sub:build", "cannot import '{module}.sub'"),
        ("{module}:missing", "has no function 'missing'"),
        ("{module}:not_a_function", "has no function 'not_a_function'"),
        ("{module}:", "not a valid import path"),
        (":build", "not a valid import path"),
        ("my-tasks:build", "not a valid import path"),
        ("{module}:build:extra", "not a valid import path"),
    ],
)
def test_bad_import_path_names_what_was_tried(
    spec: str, complaint: str, user_module: str, tmp_path: Path
) -> None:
    task = spec.format(module=user_module)

    with pytest.raises(LrsearchError, match=complaint.format(module=user_module)) as caught:
        load_source(task, tmp_path)
    assert repr(task) in str(caught.value)
    assert "module:function" in str(caught.value)


@pytest.mark.parametrize("module", ["no_such_module_for_lrsearch", "no_such_package_xyz.tasks"])
def test_a_module_not_on_the_path_says_where_python_looked(
    module: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    with pytest.raises(LrsearchError) as caught:
        load_source(f"{module}:build", tmp_path)

    message = str(caught.value)
    top = module.split(".")[0]
    assert f"no module {top!r} is importable from the working directory {tmp_path}" in message
    assert f"contains {top}.py or the {top}/ package" in message and "PYTHONPATH" in message
    assert "expected the form" not in message  # the form was right


def test_user_function_must_return_a_task_source(user_module: str, tmp_path: Path) -> None:
    with pytest.raises(LrsearchError, match=r"returned list, expected .*TaskSource"):
        load_source(f"{user_module}:wrong", tmp_path)


@pytest.mark.parametrize(
    ("function", "complaint"),
    [
        ("raises", ":raises': raises raised ValueError: no images in the folder$"),
        ("no_argument", ":no_argument': no_argument raised TypeError: .*positional argument"),
        ("string_classes", ":string_classes': num_classes must be an int or None, got '10'$"),
    ],
)
def test_a_task_function_that_fails_is_one_line_naming_it(
    function: str, complaint: str, user_module: str, tmp_path: Path
) -> None:
    with pytest.raises(LrsearchError, match=complaint) as caught:
        load_source(f"{user_module}:{function}", tmp_path)
    assert str(caught.value).startswith(f"task '{user_module}:{function}': ")
    assert "\n" not in str(caught.value)
    assert caught.value.__cause__ is not None  # what --debug prints


@pytest.mark.parametrize(
    ("source", "complaint"),
    [
        ("def build(data_dir)\n    pass\n", "importing '{module}' raised SyntaxError: "),
        ("raise RuntimeError('no GPU here')\n", "importing '{module}' raised RuntimeError: no GPU"),
        ("import json\njson.loads('{{')\n", "importing '{module}' raised JSONDecodeError: "),
        ("import no_such_package_for_lrsearch\n", "cannot import '{module}'"),
    ],
)
def test_a_task_module_that_fails_on_import_is_one_line_naming_it(
    source: str, complaint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = f"user_task_{uuid.uuid4().hex}"
    (tmp_path / f"{module}.py").write_text(source)
    monkeypatch.syspath_prepend(tmp_path)
    with pytest.raises(LrsearchError) as caught:
        load_source(f"{module}:build", tmp_path)
    message = str(caught.value)
    assert message.startswith(f"task '{module}:build': ")
    assert complaint.format(module=module) in message and "\n" not in message


def test_example_custom_task_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(REPO_ROOT)

    task = load("examples.custom_task:build", tmp_path, val_size=0.1)

    assert task.model_name == "mlp"
    assert task.train_images.dtype == torch.uint8
    assert task.train_images.shape[1:] == (1, 8, 8)
    assert len(task.train_images) + len(task.val_images) + len(task.test_images) == 1797
    assert task.build_model()(task.normalize(task.val_images)).shape == (len(task.val_images), 10)


def test_load_task_is_cached_per_argument_set(tmp_path: Path) -> None:
    write_mnist_like(tmp_path)

    first = load("fashion-mnist", tmp_path)
    again = load("fashion-mnist", tmp_path)
    other_seed = load("fashion-mnist", tmp_path, split_seed=1)

    assert again is first
    assert again.train_images is first.train_images
    assert other_seed is not first
    assert not torch.equal(other_seed.val_images, first.val_images)


# --- the general protocol: any inputs and targets, the task's loss and metrics ---------------


def cpu_prepare(source: TaskSource, **overrides: Any) -> Task:
    options: dict[str, Any] = {
        "name": "general",
        "model": None,
        "val_size": 0.25,
        "split_seed": 0,
        "device": torch.device("cpu"),
    }
    return prepare_task(source, **(options | overrides))


class TinyLM(nn.Module):
    """Token ids [B, T] -> logits [B, T, V]."""

    def __init__(self, vocab: int = 7) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, 8)
        self.head = nn.Linear(8, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.embed(ids))
        return out


def token_source(**changes: Any) -> TaskSource:
    ids = torch.randint(0, 7, (40, 6), generator=torch.Generator().manual_seed(0))
    targets = ids.roll(-1, dims=1)
    targets[:, -1] = -100  # the last position has no next token: ignored
    fields: dict[str, Any] = {
        "train_images": ids[:32],
        "train_labels": targets[:32],
        "test_images": ids[32:],
        "test_labels": targets[32:],
        "num_classes": 7,
        "models": {"lm": TinyLM},
    }
    return TaskSource(**(fields | changes))


def test_a_token_task_keeps_its_ids_and_scores_per_position() -> None:
    task = cpu_prepare(token_source())

    assert task.mean is None  # token ids are never standardised
    assert task.normalize(task.train_images) is task.train_images
    assert set(task.metrics) == {"loss", "token_accuracy", "perplexity"}
    assert not task.metrics["loss"].higher_is_better
    logits = torch.zeros(2, 6, 7)
    logits[..., 3] = 5.0  # always predicts token 3
    targets = torch.tensor([[3, 3, 1, 1, 3, -100], [-100] * 6])
    accuracy = task.metrics["token_accuracy"].per_example(logits, targets)
    assert accuracy.tolist() == pytest.approx([3 / 5, 0.0])  # ignored positions do not count
    losses = task.metrics["loss"].per_example(logits, targets)
    assert losses.shape == (2,) and losses[0] > 0 and losses[1] == 0


def test_targets_per_position_outside_the_classes_are_named_but_ignore_index_is_not() -> None:
    source = token_source()
    bad = source.test_labels.clone()
    bad[0, 0] = 7
    with pytest.raises(LrsearchError, match=r"test_labels must lie in \[0, 6\] \(or ignore_index"):
        token_source(test_labels=bad)


@pytest.mark.parametrize(
    ("inputs", "standardize", "stat_shape"),
    [
        (torch.randn(40, 3, 16), None, None),  # signals: as they come unless asked
        (torch.randn(40, 3, 16), True, (1, 3, 1)),  # per channel
        (torch.randn(40, 5), True, (1, 5)),  # tables: per feature
        (torch.randint(0, 255, (40, 2, 4, 4), dtype=torch.uint8), None, (1, 2, 1, 1)),  # images
    ],
)
def test_standardisation_is_the_tasks_choice(
    inputs: torch.Tensor, standardize: bool | None, stat_shape: tuple[int, ...] | None
) -> None:
    labels = torch.arange(40) % 3
    model = nn.Sequential(nn.Flatten(), nn.LazyLinear(3))
    source = TaskSource(
        inputs[:32],
        labels[:32],
        inputs[32:],
        labels[32:],
        num_classes=3,
        models={"m": lambda: model},
        standardize=standardize,
    )
    task = cpu_prepare(source)
    if stat_shape is None:
        assert task.mean is None and torch.equal(task.normalize(inputs), inputs)
    else:
        assert task.mean is not None and tuple(task.mean.shape) == stat_shape
        assert task.normalize(task.train_images).mean().abs() < 0.2


def regression_source(**changes: Any) -> TaskSource:
    inputs = torch.randn(40, 4, generator=torch.Generator().manual_seed(0))
    targets = inputs.sum(dim=1, keepdim=True) * 3
    fields: dict[str, Any] = {
        "train_images": inputs[:32],
        "train_labels": targets[:32],
        "test_images": inputs[32:],
        "test_labels": targets[32:],
        "num_classes": None,
        "models": {"mlp": lambda: nn.Linear(4, 1)},
        "loss": "mse",
    }
    return TaskSource(**(fields | changes))


def test_a_regression_task_scores_squared_error_and_scales_divergence_by_its_targets() -> None:
    task = cpu_prepare(regression_source())

    assert set(task.metrics) == {"loss", "mse"}
    targets = task.train_labels
    assert task.loss_scale == pytest.approx(float(targets.var(unbiased=False)), rel=1e-5)
    outputs = torch.tensor([[1.0], [3.0]])
    squared = task.loss(outputs, torch.tensor([[0.0], [1.0]]))
    assert squared.tolist() == [1.0, 4.0]


@pytest.mark.parametrize(
    ("changes", "complaint"),
    [
        (
            {"models": {"mlp": lambda: nn.Sequential(nn.Linear(4, 1), nn.Flatten(0))}},
            r"task 'general': model 'mlp' returns \(2,\) for 2 examples; expected one output "
            r"per target \(the targets' shape\) of shape \(2, 1\)",
        ),
        ({"loss": "hinge"}, "loss 'hinge' is not known"),
        ({"metrics": ["f1"]}, "metric 'f1' is not known"),
        (
            {"loss": lambda outputs, targets: (outputs - targets).abs().sum()},
            r"task 'general': loss returns \(\) for 2 examples; expected one figure per example",
        ),
        ({"train_labels": torch.zeros(32, 1, dtype=torch.int64)}, "must be real values"),
        (
            {"train_labels": torch.zeros(32, 1).index_fill(0, torch.tensor([3, 5]), math.inf)},
            "train_labels must be finite real values for loss 'mse', got 2 nan or inf",
        ),
    ],
)
def test_a_loss_that_does_not_fit_is_one_line_naming_the_task(
    changes: dict[str, Any], complaint: str
) -> None:
    with pytest.raises(LrsearchError, match=complaint) as caught:
        cpu_prepare(regression_source(**changes))
    assert "\n" not in str(caught.value)


def test_a_users_loss_and_metric_are_the_tasks_own() -> None:
    def absolute(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return (outputs - targets).abs().flatten(1).mean(1)

    within = Metric("within_one", lambda o, t: ((o - t).abs() < 1).float().squeeze(1), True)
    task = cpu_prepare(regression_source(loss=absolute, metrics=[within, "mse"]))

    assert list(task.metrics) == ["loss", "within_one", "mse"]
    assert task.loss is absolute
    assert task.loss_scale == math.inf  # unknown for a user's loss: only NaN is divergence


def test_a_model_that_reads_token_ids_from_standardised_images_fails_before_any_trial() -> None:
    """The check runs on what training feeds: standardised floats, not the raw uint8."""
    images = torch.randint(0, 255, (40, 1, 4, 4), dtype=torch.uint8)
    labels = torch.arange(40) % 3

    class Casts(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(256, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = self.embed(x.long()).mean(dim=(1, 2, 3))
            return out

    source = TaskSource(
        images[:32], labels[:32], images[32:], labels[32:], num_classes=3, models={"m": Casts}
    )
    with pytest.raises(LrsearchError, match="model 'm' cannot take the task's inputs"):
        cpu_prepare(source)
    assert cpu_prepare(dataclasses.replace(source, standardize=False)).mean is None


def test_the_tasks_own_validation_split_is_used_as_given() -> None:
    source = token_source()
    val = torch.full((5, 6), 2), torch.full((5, 6), 3)
    task = cpu_prepare(token_source(val_images=val[0], val_labels=val[1]))

    assert torch.equal(task.val_images, val[0]) and torch.equal(task.val_labels, val[1])
    assert torch.equal(task.train_images, source.train_images)  # nothing carved out of train


def test_a_transform_that_changes_the_batch_size_is_refused() -> None:
    def halves(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return images[: len(images) // 2]

    with pytest.raises(LrsearchError, match="its transform must keep the batch size"):
        prepare(TaskSource(**{**vars(numbered_source()), "transform": halves}))


def streamed_source(batches: Any, base: TaskSource | None = None, **changes: Any) -> TaskSource:
    """``base`` (a regression task by default) with its training data streamed as ``batches``."""
    source = base or regression_source()
    fields: dict[str, Any] = {
        **vars(source),
        "train_images": None,
        "train_labels": None,
        "val_images": source.test_images,
        "val_labels": source.test_labels,
        "batches": batches,
        "steps": 6,
    }
    return TaskSource(**(fields | changes))


def test_a_streamed_task_checks_its_first_batch_before_any_trial() -> None:
    good = [(torch.randn(8, 4), torch.randn(8, 1))]
    task = cpu_prepare(streamed_source(good))
    assert task.steps == 6 and len(task.train_images) == 0

    with pytest.raises(LrsearchError, match=r"batch 1 has inputs .* expected \[B, \.\.\.\]"):
        cpu_prepare(streamed_source([(torch.randn(8, 5), torch.randn(8, 1))]))
    with pytest.raises(LrsearchError, match="its batches yielded no batch"):
        cpu_prepare(streamed_source([]))
    with pytest.raises(LrsearchError, match="the targets of batch 1 must be finite real values"):
        cpu_prepare(streamed_source([(torch.randn(8, 4), torch.full((8, 1), math.nan))]))
    with pytest.raises(LrsearchError, match="needs steps"):
        streamed_source(good, steps=None)
    with pytest.raises(LrsearchError, match="needs its own val_images"):
        streamed_source(good, val_images=None, val_labels=None)


def spoil_class(targets: torch.Tensor) -> torch.Tensor:
    spoiled = targets.clone()
    spoiled[1, 2] = 9  # a class per position, of 7 classes
    return spoiled


def spoil_value(targets: torch.Tensor) -> torch.Tensor:
    spoiled = targets.clone()
    spoiled[1, 0] = math.nan
    return spoiled


@pytest.mark.parametrize(
    ("source", "spoil"),
    [
        (token_source, spoil_class),
        (token_source, lambda targets: targets.float()),
        (regression_source, spoil_value),
    ],
    ids=["class", "dtype", "nan"],
)
def test_a_bad_target_in_a_later_streamed_batch_is_the_one_line_of_the_same_data_in_memory(
    source: Callable[..., TaskSource], spoil: Callable[[torch.Tensor], torch.Tensor]
) -> None:
    """Batch 3 spoiled: its targets are refused as they would be in memory, naming the batch;
    what reaches the loss meanwhile is a target it can take."""
    good = source()
    assert good.train_images is not None and good.train_labels is not None
    with pytest.raises(LrsearchError) as in_memory:
        source(train_labels=spoil(good.train_labels))
    assert str(in_memory.value).startswith("train_labels must ")

    batches = [
        (good.train_images[8 * i : 8 * i + 8], good.train_labels[8 * i : 8 * i + 8])
        for i in range(4)
    ]
    batches[2] = (batches[2][0], spoil(batches[2][1]))
    task = cpu_prepare(streamed_source(batches, good))
    stream = task.stream()
    next(stream), next(stream)
    stream.verify()  # two good batches
    with pytest.raises(LrsearchError) as streamed:
        _, targets = next(stream)
        assert task.targets is not None and not task.targets.outside(targets).any()
        next(stream)  # read on: the check waits for verify
        stream.verify()
    expected = str(in_memory.value).replace("train_labels", "the targets of batch 3", 1)
    assert str(streamed.value) == f"task 'general': {expected}"


def test_a_custom_task_does_not_import_torchvision() -> None:
    code = (
        "import sys; from pathlib import Path; from lrsearch.tasks import load_task; "
        "load_task('examples.regression:build', model=None, data_dir=Path('data'), "
        "val_size=0.25, split_seed=0, device=__import__('torch').device('cpu')); "
        "print('torchvision' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"
