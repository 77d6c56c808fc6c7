"""The trial loop against a plain reference loop, and its contract: seeding, divergence,
per-epoch reports, device and config errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lrsearch.errors import LrsearchError
from lrsearch.idx import learnable_splits
from lrsearch.schedules import Constant, Cosine
from lrsearch.tasks import Task, TaskSource, lenet, prepare_task
from lrsearch.training import (
    TrainConfig,
    TrainResult,
    make_optimizer,
    resolve_device,
    train,
    uses_bf16,
)

SEED = 3


@pytest.fixture(scope="module")
def task() -> Task:
    (train_x, train_y), (test_x, test_y) = learnable_splits((28, 28), 448, 64, seed=0)
    source = TaskSource(
        train_images=torch.from_numpy(train_x).unsqueeze(1),
        train_labels=torch.from_numpy(train_y).long(),
        test_images=torch.from_numpy(test_x).unsqueeze(1),
        test_labels=torch.from_numpy(test_y).long(),
        num_classes=10,
        models={"lenet": lenet},
    )
    return prepare_task(
        source, name="tiny", model=None, val_size=64, split_seed=0, device=torch.device("cpu")
    )


def reference_losses(task: Task, schedule: Cosine, config: TrainConfig) -> list[float]:
    """The loop written the plain way: same seed, init, order and normalization."""
    torch.manual_seed(SEED)
    model = task.build_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=schedule.lr, momentum=config.momentum)
    per_epoch = len(task.train_labels) // config.batch_size
    total = config.epochs * per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: schedule(step, total) / schedule.lr
    )
    shuffle = torch.Generator().manual_seed(SEED)
    losses = []
    for _epoch in range(config.epochs):
        order = torch.randperm(len(task.train_labels), generator=shuffle)
        for i in range(per_epoch):
            batch = order[i * config.batch_size : (i + 1) * config.batch_size]
            images = (task.train_images[batch].float() - task.mean) / task.std
            loss = F.cross_entropy(model(images), task.train_labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
    return losses


def run(
    task: Task, schedule: Constant | Cosine, config: TrainConfig
) -> tuple[TrainResult, list[float]]:
    losses: list[float] = []
    result = train(
        task, schedule, config, seed=SEED, on_loss=lambda loss: losses.append(loss.item())
    )
    return result, losses


def test_loss_trajectory_matches_a_plain_reference_loop(task: Task) -> None:
    schedule = Cosine(lr=0.05, warmup=0.1)
    config = TrainConfig(epochs=3, batch_size=32, bf16=False)
    _, losses = run(task, schedule, config)
    expected = reference_losses(task, schedule, config)
    assert len(losses) == len(expected) == 3 * (384 // 32)
    assert losses == pytest.approx(expected, rel=1e-3, abs=1e-4)
    assert losses[-1] < losses[0]  # it learns


def test_bf16_loss_trajectory_stays_near_the_float32_reference(task: Task) -> None:
    """bf16 keeps 8 bits of mantissa: the same run, within a percent or two, not another one."""
    schedule = Cosine(lr=0.05, warmup=0.1)
    config = TrainConfig(epochs=3, batch_size=32, bf16=True)
    _, losses = run(task, schedule, config)
    expected = reference_losses(task, schedule, config)
    assert losses == pytest.approx(expected, rel=0.02)
    assert losses != pytest.approx(expected, rel=1e-4, abs=1e-5)  # bf16 did run


@pytest.mark.parametrize("amx", [True, False])
def test_float32_by_default_on_a_cpu_even_with_amx(
    monkeypatch: pytest.MonkeyPatch, amx: bool
) -> None:
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    cpu = torch.device("cpu")
    assert uses_bf16(None, cpu) is False
    assert uses_bf16(True, cpu) is True


@pytest.mark.parametrize(
    ("capability", "expected"), [((7, 0), False), ((8, 0), True), ((9, 0), True)]
)
def test_bf16_by_default_on_gpus_from_ampere_on(
    monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int], expected: bool
) -> None:
    asked: list[torch.device] = []
    monkeypatch.setattr(
        torch.cuda, "get_device_capability", lambda device: asked.append(device) or capability
    )
    gpu = torch.device("cuda:1")
    assert uses_bf16(None, gpu) is expected
    assert asked == [gpu]  # the trial's own GPU, not the current one
    assert uses_bf16(False, gpu) is False


def test_same_seed_same_run(task: Task) -> None:
    config = TrainConfig(epochs=2, batch_size=64)
    first, first_losses = run(task, Cosine(lr=0.05), config)
    second, second_losses = run(task, Cosine(lr=0.05), config)
    assert first_losses == second_losses
    assert first.val_accuracy == second.val_accuracy


def test_an_absurd_lr_is_reported_as_diverged_with_step_and_reason(task: Task) -> None:
    config = TrainConfig(epochs=5, batch_size=32, check_every=4)
    result = train(task, Constant(lr=1e6), config, seed=SEED)
    assert result.diverged_step is not None and result.diverged_step % 4 == 0
    assert result.steps == result.diverged_step < 5 * (384 // 32)
    assert result.diverged_reason is not None and result.diverged_reason.startswith("loss ")
    assert math.isnan(result.test_accuracy)


def test_report_is_called_once_per_epoch(task: Task) -> None:
    calls: list[tuple[int, float]] = []
    result = train(
        task,
        Constant(lr=0.01),
        TrainConfig(epochs=3, batch_size=64),
        seed=SEED,
        report=lambda epoch, accuracy: calls.append((epoch, accuracy)),
    )
    assert [epoch for epoch, _ in calls] == [1, 2, 3]
    assert calls[-1][1] == result.val_accuracy
    assert result.epochs == 3 and result.steps == 3 * (384 // 64)


def test_a_tensor_lr_is_filled_in_place_by_the_schedule() -> None:
    """What a compiled step relies on: the LR tensor it captured sees every new value."""
    schedule = Cosine(lr=0.1)
    lr = torch.tensor(schedule.lr)
    optimizer = make_optimizer(torch.nn.Linear(2, 2).parameters(), lr, TrainConfig())
    scheduler = schedule.torch_scheduler(optimizer, 10)
    for step in range(1, 6):
        optimizer.step()
        scheduler.step()
        assert optimizer.param_groups[0]["lr"] is lr
        assert lr.item() == pytest.approx(schedule(step, 10))


@pytest.mark.parametrize("name", ["cuda:7", "tpu", "garbage!", "meta"])
def test_bad_devices_are_one_line_errors(name: str) -> None:
    if name == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    with pytest.raises(LrsearchError, match=repr(name)) as error:
        resolve_device(name)
    assert "\n" not in str(error.value)


def test_auto_and_cpu_resolve() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("epochs", 0),
        ("batch_size", -1),
        ("eval_batch_size", 0),
        ("check_every", 0),
        ("momentum", 1.0),
        ("weight_decay", -0.1),
        ("divergence_factor", 1.0),
    ],
)
def test_train_config_rejects_bad_values(field: str, value: float) -> None:
    with pytest.raises(LrsearchError, match=f"training.{field}="):
        TrainConfig(**{field: value})  # type: ignore[arg-type]


def test_nesterov_needs_sgd_with_momentum() -> None:
    with pytest.raises(LrsearchError, match="nesterov"):
        TrainConfig(optimizer="adam", nesterov=True)
    with pytest.raises(LrsearchError, match="nesterov"):
        TrainConfig(momentum=0.0, nesterov=True)


def test_bf16_autocast_trains_on_the_cpu_too(task: Task) -> None:
    result = train(task, Cosine(lr=0.05), TrainConfig(epochs=3, batch_size=32, bf16=True), seed=0)
    assert result.diverged_step is None
    assert result.val_accuracy > 0.3  # ten classes: chance is 0.1
