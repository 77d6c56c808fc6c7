"""The trial loop against a plain reference loop, and its contract: seeding, divergence,
per-epoch reports, device and config errors."""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lrsearch.errors import LrsearchError
from lrsearch.idx import learnable_splits
from lrsearch.models import CharGPT
from lrsearch.schedules import Constant, Cosine
from lrsearch.tasks import Task, TaskSource, lenet, prepare_task
from lrsearch.training import (
    EpochMetrics,
    Member,
    TrainConfig,
    TrainResult,
    resolve_device,
    steps_per_epoch,
    thread_count,
    train,
    train_population,
    uses_bf16,
)
from lrsearch.transforms import random_crop_flip

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


def torch_optimizer(
    params: Iterator[torch.nn.Parameter], lr: float, config: TrainConfig
) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=lr,
            momentum=config.momentum,
            nesterov=config.nesterov,
            weight_decay=config.weight_decay,
        )
    optimizer = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
    return optimizer(params, lr=lr, weight_decay=config.weight_decay)


def reference_losses(task: Task, schedule: Cosine, config: TrainConfig) -> list[float]:
    """The loop written the plain way with torch.optim: same seed, init, order, normalization."""
    torch.manual_seed(SEED)
    model = task.build_model()
    optimizer = torch_optimizer(model.parameters(), schedule.lr, config)
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


OPTIMIZERS = [
    TrainConfig(epochs=2, batch_size=32, optimizer="sgd", momentum=0.9),
    TrainConfig(
        epochs=2, batch_size=32, optimizer="sgd", momentum=0.9, nesterov=True, weight_decay=5e-4
    ),
    TrainConfig(epochs=2, batch_size=32, optimizer="sgd", momentum=0.0, weight_decay=1e-3),
    TrainConfig(epochs=2, batch_size=32, optimizer="adam", weight_decay=1e-4),
    TrainConfig(epochs=2, batch_size=32, optimizer="adamw", weight_decay=1e-2),
]


def peak(config: TrainConfig) -> float:
    """Adam's steps are lr-sized: it trains stably at a tenth of SGD's peak."""
    return 0.05 if config.optimizer == "sgd" else 0.005


@pytest.mark.parametrize("config", OPTIMIZERS, ids=lambda c: f"{c.optimizer}-{c.nesterov}")
def test_loss_trajectory_matches_torch_optim_in_a_plain_loop(
    task: Task, config: TrainConfig
) -> None:
    """A population of one computes torch.optim's own update, for every optimizer."""
    schedule = Cosine(lr=peak(config), warmup=0.1)
    config = dataclasses.replace(config, epochs=3, bf16=False)
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


MEMBERS = [Member(Cosine(lr=0.02), 1), Member(Constant(lr=0.005), 2), Member(Cosine(lr=0.01), 1)]


def members_for(config: TrainConfig) -> list[Member]:
    scale = peak(config) / 0.05
    return [
        Member(dataclasses.replace(m.schedule, lr=m.schedule.lr * scale), m.seed) for m in MEMBERS
    ]


def population_losses(
    task: Task, members: list[Member], config: TrainConfig
) -> tuple[tuple[TrainResult, ...], list[list[float]]]:
    losses: list[list[float]] = []
    result = train_population(
        task, members, config, data_seed=7, on_loss=lambda step: losses.append(step.tolist())
    )
    return result.members, losses


@pytest.mark.parametrize("config", OPTIMIZERS, ids=lambda c: f"{c.optimizer}-{c.nesterov}")
def test_a_population_trains_each_member_as_it_would_alone(task: Task, config: TrainConfig) -> None:
    """Same seeds, same batches: member k of a population follows its lone run's trajectory."""
    members = members_for(config)
    together, losses = population_losses(task, members, config)
    for k, member in enumerate(members):
        (alone,), lone_losses = population_losses(task, [member], config)
        assert [step[k] for step in losses] == pytest.approx(
            [step[0] for step in lone_losses], rel=1e-4, abs=1e-5
        )
        assert together[k].val_accuracy == alone.val_accuracy
        assert together[k].test_accuracy == alone.test_accuracy


def test_a_diverging_member_fails_alone(task: Task) -> None:
    """Its NaN stays in its own rows: the others end exactly as without it."""
    config = TrainConfig(epochs=2, batch_size=32)
    absurd = Member(Constant(lr=1e6), 5)
    with_it, _ = population_losses(task, [MEMBERS[0], absurd, MEMBERS[1]], config)
    without, _ = population_losses(task, [MEMBERS[0], MEMBERS[1]], config)
    assert with_it[1].diverged_step is not None and "loss" in (with_it[1].diverged_reason or "")
    assert math.isnan(with_it[1].test_accuracy)
    for mine, theirs in zip((with_it[0], with_it[2]), without, strict=True):
        assert mine.diverged_step is None
        assert mine.val_accuracy == theirs.val_accuracy
        assert mine.epoch_val_loss == pytest.approx(theirs.epoch_val_loss, rel=1e-5)
        np.testing.assert_array_equal(mine.val_correct, theirs.val_correct)


def test_a_stopped_member_keeps_its_results_and_the_others_go_on(task: Task) -> None:
    seen: list[EpochMetrics] = []

    def stop_first_after_epoch_one(metrics: EpochMetrics) -> list[int]:
        seen.append(metrics)
        return [0] if metrics.epoch == 1 else []

    config = TrainConfig(epochs=3, batch_size=64)
    result = train_population(
        task, MEMBERS[:2], config, data_seed=0, on_epoch=stop_first_after_epoch_one
    )
    stopped, other = result.members
    assert [m.training for m in seen] == [(True, True), (False, True), (False, True)]
    assert stopped.stopped_epoch == 1 and stopped.epochs == 1 and len(stopped.epoch_val_loss) == 1
    assert math.isnan(stopped.test_accuracy)
    assert other.epochs == 3 and other.stopped_epoch is None
    assert len(other.epoch_train_loss) == 3 and not math.isnan(other.test_accuracy)
    assert result.path == "stacked"


def test_each_member_records_per_example_correctness_and_losses(task: Task) -> None:
    (result,) = train_population(
        task, MEMBERS[:1], TrainConfig(epochs=2, batch_size=64), data_seed=0
    ).members
    assert result.val_correct.shape == (len(task.val_labels),)
    assert result.val_correct.mean() == result.val_accuracy
    assert result.test_correct.mean() == result.test_accuracy
    assert len(result.epoch_val_loss) == len(result.epoch_train_loss) == 2
    assert result.val_loss == result.epoch_val_loss[-1] > 0


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


@pytest.mark.parametrize(
    ("load", "workers", "expected"),
    [(0.1, 1, 4), (1.2, 1, 3), (3.9, 1, 1), (9.0, 1, 1), (0.0, 2, 2), (2.0, 2, 1)],
)
def test_the_default_threads_are_the_idle_cores_shared_among_workers(
    monkeypatch: pytest.MonkeyPatch, load: float, workers: int, expected: int
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1, 2, 3})
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    assert thread_count(None, workers) == expected
    assert thread_count(3, workers) == 3  # asked for: as asked


# --- any task: K-independence, augmentation, streamed batches, other losses -------------------


def test_identical_schedules_score_the_same_at_any_population_size_with_augmentation(
    task: Task,
) -> None:
    """One draw of the transform per batch, from a generator of the population's own: eight
    copies of one member train as the member alone does, crops and flips included."""
    augmented = dataclasses.replace(task, transform=random_crop_flip(pad=2))
    config = TrainConfig(epochs=1, batch_size=32)
    member = Member(Cosine(lr=0.02), 1)
    (alone,), lone_losses = population_losses(augmented, [member], config)
    eight, losses = population_losses(augmented, [member] * 8, config)
    plain, _ = population_losses(task, [member], config)

    assert plain[0].val_loss != alone.val_loss  # the transform changed what was trained on
    for k in range(8):
        assert [step[k] for step in losses] == pytest.approx(
            [step[0] for step in lone_losses], rel=1e-4, abs=1e-5
        )
        assert eight[k].val_accuracy == alone.val_accuracy


def test_the_global_generator_after_training_does_not_depend_on_the_population_size(
    task: Task,
) -> None:
    """Building K models (and the wide network) draws in proportion to K: forked, and the
    global generator is seeded from the data seed, so a stochastic model's draws are the same
    at K = 1 and K = 8, whatever the process drew before."""
    config = TrainConfig(epochs=1, batch_size=128)
    after = []
    for size, before in ((1, 123), (8, 456)):
        torch.manual_seed(before)
        train_population(task, [Member(Constant(lr=0.01), 1)] * size, config, data_seed=7)
        after.append(torch.rand(3))
    assert torch.equal(after[0], after[1])


def small_task(source: TaskSource) -> Task:
    return prepare_task(
        source, name="small", model=None, val_size=16, split_seed=0, device=torch.device("cpu")
    )


def streamed_task(source: TaskSource, batches: Any, *, steps: int) -> Task:
    """``source`` with its training examples replaced by ``batches`` and a step budget."""
    return small_task(
        dataclasses.replace(
            source,
            train_images=None,
            train_labels=None,
            val_images=source.train_images[:16],
            val_labels=source.train_labels[:16],
            batches=batches,
            steps=steps,
        )
    )


def regression_source(**changes: Any) -> TaskSource:
    inputs = torch.randn(144, 4, generator=torch.Generator().manual_seed(0))
    targets = inputs @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
    fields: dict[str, Any] = {
        "train_images": inputs[:128],
        "train_labels": targets[:128],
        "test_images": inputs[128:],
        "test_labels": targets[128:],
        "num_classes": None,
        "models": {"linear": lambda: torch.nn.Linear(4, 1)},
        "loss": "mse",
    }
    return TaskSource(**(fields | changes))


def test_a_regression_population_learns_its_targets() -> None:
    regression = small_task(regression_source())
    config = TrainConfig(epochs=5, batch_size=16)
    result = train(regression, Constant(lr=0.05), config, seed=1, metric="loss")

    assert set(result.val) == {"loss", "mse"}
    assert result.val["loss"] < 0.1 * regression.loss_scale  # far below predicting the mean
    assert result.val_figures["mse"].shape == (16,)
    assert result.val["mse"] == pytest.approx(float(result.val_figures["mse"].mean()))
    assert math.isnan(result.val_accuracy)  # no such metric: nothing made up


class Counting:
    """An iterable of batches (a DataLoader's shape) that counts what is read from it."""

    def __init__(self, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.batches, self.reads, self.passes = batches, 0, 0

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.passes += 1
        for batch in self.batches:
            self.reads += 1
            yield batch


def test_a_streamed_task_feeds_one_read_to_every_member_for_its_step_budget() -> None:
    source = regression_source()
    batches = [
        (source.train_images[8 * i : 8 * i + 8], source.train_labels[8 * i : 8 * i + 8])
        for i in range(5)
    ]
    stream = Counting(batches)
    streamed = streamed_task(source, stream, steps=12)
    stream.reads = stream.passes = 0  # the up-front check read one
    config = TrainConfig(epochs=3, batch_size=8)
    members = [Member(Constant(lr=0.01), seed) for seed in (1, 2, 3)]
    result = train_population(streamed, members, config, data_seed=0)

    assert stream.reads == 12  # one read a step, whatever K
    assert stream.passes == 3  # 5 batches a pass: read again when it ends
    assert all(member.steps == 12 and member.epochs == 3 for member in result.members)
    assert steps_per_epoch(streamed, config) == 4


def test_a_stream_yielding_the_wrong_shape_mid_run_is_one_line_naming_the_task() -> None:
    source = regression_source()
    good = (source.test_images[:8], source.test_labels[:8])
    bad = (source.test_images[:8, :3], source.test_labels[:8])
    streamed = streamed_task(source, [good, bad], steps=4)
    with pytest.raises(LrsearchError, match=r"task 'small': batch 2 has inputs"):
        train_population(
            streamed, [Member(Constant(lr=0.01), 1)], TrainConfig(epochs=1), data_seed=0
        )


def classes_source() -> TaskSource:
    inputs = torch.randn(144, 4, generator=torch.Generator().manual_seed(0))
    labels = (inputs[:, 0] > 0).long() + (inputs[:, 1] > 0).long()  # classes 0, 1, 2
    return TaskSource(
        inputs[:128],
        labels[:128],
        inputs[128:],
        labels[128:],
        3,
        {"linear": lambda: nn.Linear(4, 3)},
    )


@pytest.mark.parametrize(
    ("source", "bad", "complaint"),
    [
        (classes_source, 5, r"must lie in \[0, 2\], got values from 0 to 5"),
        (
            regression_source,
            math.nan,
            "must be finite real values for loss 'mse', got 1 nan or inf",
        ),
    ],
    ids=["class", "nan"],
)
def test_a_bad_target_in_the_third_streamed_batch_ends_the_run_in_one_line(
    source: Callable[[], TaskSource], bad: float, complaint: str
) -> None:
    """Not an IndexError (a CUDA assert on a GPU) from the loss, nor a NaN member."""
    good = source()
    assert good.train_images is not None and good.train_labels is not None
    batches = [
        (good.train_images[8 * i : 8 * i + 8], good.train_labels[8 * i : 8 * i + 8].clone())
        for i in range(5)
    ]
    batches[2][1][4] = bad
    streamed = streamed_task(good, batches, steps=6)
    members = [Member(Constant(lr=0.01), seed) for seed in (1, 2)]
    with pytest.raises(LrsearchError) as caught:
        train_population(streamed, members, TrainConfig(epochs=2, batch_size=8), data_seed=0)
    assert re.fullmatch(f"task 'small': the targets of batch 3 {complaint}", str(caught.value))


def test_a_token_task_trains_a_language_model_per_position() -> None:
    ids = torch.randint(0, 5, (96, 8), generator=torch.Generator().manual_seed(0))
    source = TaskSource(
        ids[:80],
        ids.roll(-1, dims=1)[:80],
        ids[80:],
        ids.roll(-1, dims=1)[80:],
        num_classes=5,
        models={"gpt": lambda: CharGPT(5, 8, n_layer=1, n_head=2, n_embd=16)},
    )
    lm = small_task(source)
    config = TrainConfig(epochs=2, batch_size=16, optimizer="adamw")
    result = train(lm, Constant(lr=3e-3), config, seed=0, metric="loss")

    assert set(result.val) == {"loss", "token_accuracy", "perplexity"}
    assert result.val["perplexity"] == pytest.approx(math.exp(result.val["loss"]), rel=1e-6)
    assert len(result.epoch_val["loss"]) == 2


def test_a_stream_that_cannot_be_read_again_ends_early_in_one_line() -> None:
    source = regression_source()
    once = iter([(source.test_images[:8], source.test_labels[:8])] * 3)
    streamed = streamed_task(source, once, steps=6)
    with pytest.raises(LrsearchError, match=r"task 'small': its batches ended before the 6 steps"):
        train_population(
            streamed, [Member(Constant(lr=0.01), 1)], TrainConfig(epochs=1), data_seed=0
        )


def test_accumulating_two_half_batches_takes_the_step_of_one_full_batch(task: Task) -> None:
    """Gradients summed over micro-batches of the same examples: one step, one schedule step."""
    schedule = Cosine(lr=0.05, warmup=0.1)
    full = TrainConfig(epochs=2, batch_size=32, bf16=False)
    result, losses = run(task, schedule, full)
    halves, half_losses = run(
        task, schedule, dataclasses.replace(full, batch_size=16, accumulate=2)
    )
    assert len(half_losses) == len(losses) == 2 * (384 // 32)
    assert half_losses == pytest.approx(losses, rel=1e-4, abs=1e-5)
    assert halves.val_accuracy == pytest.approx(result.val_accuracy, abs=1 / 64)


def test_fp16_off_cuda_is_one_line_naming_the_setting(task: Task) -> None:
    with pytest.raises(LrsearchError, match=r"training\.fp16 needs a CUDA device") as refused:
        train(task, Cosine(lr=0.05), TrainConfig(epochs=1, batch_size=32, fp16=True), seed=0)
    assert "\n" not in str(refused.value)


def test_schedule_free_evaluates_its_averaged_weights_and_trains_on_the_others(
    task: Task, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lrsearch.training as training
    from lrsearch.optim import MemberOptimizer

    seen: list[bool] = []
    original = training._evaluate
    made: list[MemberOptimizer] = []
    init = MemberOptimizer.__init__

    def remember(self: MemberOptimizer, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        made.append(self)

    def evaluate(*args: Any, **kwargs: Any) -> Any:
        seen.append(made[-1].averaged)
        return original(*args, **kwargs)

    stepped: list[bool] = []
    step = MemberOptimizer.step

    def step_on_y(self: MemberOptimizer, lr: torch.Tensor) -> None:
        stepped.append(self.averaged)
        step(self, lr)

    monkeypatch.setattr(MemberOptimizer, "__init__", remember)
    monkeypatch.setattr(MemberOptimizer, "step", step_on_y)
    monkeypatch.setattr(training, "_evaluate", evaluate)
    config = TrainConfig(epochs=2, batch_size=64, optimizer="adamw-schedulefree")
    result, _ = run(task, Constant(lr=0.005, warmup=0.1), config)
    assert seen and all(seen)  # every evaluation (each epoch's and the test's) on x
    assert len(stepped) == 2 * steps_per_epoch(task, config) and not any(stepped)  # on y
    assert math.isfinite(result.val_accuracy) and result.diverged_step is None
