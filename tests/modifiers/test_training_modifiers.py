"""In-process unit tests of the torch training modifiers and the loop's event dispatch:
GMP's cubic schedule and masks, fixed masks, distillation loss, fake-quant finalize, and
checkpoint state keyed by the modifier's place in the recipe."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from sparsify_runner.modifiers.base import Event, Modifier, ModifierResult, checkpoint_key
from sparsify_runner.modifiers.training.distillation import DistillationModifier, kd_loss
from sparsify_runner.modifiers.training.gmp import GMPModifier, cubic_sparsity
from sparsify_runner.modifiers.training.masks import FixedMasks, MaskSet, classifier_name, prunable_weights
from sparsify_runner.modifiers.training.qat import FakeQuantModifier
from sparsify_runner.training.checkpoint import CheckpointStore
from sparsify_runner.training.config import TrainConfig
from sparsify_runner.training.loop import Trainer
from sparsify_runner.training.task import Task
from torch import nn
from torch.utils.data import Dataset


class _Blobs(Dataset):
    """Two separable classes of 8-d points (seeded)."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.y = torch.arange(n) % 2
        self.x = torch.randn(n, 8, generator=g) + (self.y[:, None].float() * 2 - 1) * 1.5

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return {"input": self.x[i]}, int(self.y[i])


def _task() -> Task:
    return Task(
        kind="image", classes=["a", "b"], train=_Blobs(64, 0), val=_Blobs(16, 1), input_names=["input"]
    )


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2))


def _trainer(tmp_path: Path, model: nn.Module, modifiers: list, epochs: int = 2) -> Trainer:
    cfg = TrainConfig(epochs=epochs, batch_size=16, lr=1e-2, checkpoint_every=1000, eval_batch_size=16)
    store = CheckpointStore(tmp_path / "ckpt", "fp", lambda: None)
    return Trainer(_task(), model, cfg, "main", store, modifiers, show_progress=False)


# ---- GMP ----------------------------------------------------------------------------------
def test_cubic_schedule_starts_ends_and_rises_fast_first():
    assert cubic_sparsity(0, 10, 110, 0.05, 0.8) == 0.0  # before the start: dense
    assert cubic_sparsity(10, 10, 110, 0.05, 0.8) == pytest.approx(0.05)
    assert cubic_sparsity(110, 10, 110, 0.05, 0.8) == pytest.approx(0.8)
    assert cubic_sparsity(500, 10, 110, 0.05, 0.8) == pytest.approx(0.8)
    quarter, half = cubic_sparsity(35, 10, 110, 0.05, 0.8), cubic_sparsity(60, 10, 110, 0.05, 0.8)
    # cubic: most of the pruning happens early (first half > 3/4 of the way)
    assert quarter < half and (half - 0.05) / (0.8 - 0.05) > 0.85


def test_gmp_reaches_target_and_pruned_weights_stay_zero(tmp_path: Path):
    model = _mlp()
    names = list(prunable_weights(model, exclude=(classifier_name(model),)))
    assert names == ["0", "2"]
    gmp = GMPModifier(
        MaskSet(model, names),
        init_sparsity=0.1,
        final_sparsity=0.75,
        start_step=0,
        end_step=4,
        update_every=1,
    )
    trainer = _trainer(tmp_path, model, [gmp], epochs=3)
    trainer.fit()
    for name in names:
        weight = model.get_submodule(name).weight
        assert float((weight == 0).float().mean()) == pytest.approx(0.75, abs=0.01)
        # the zeros are exactly the masked entries (optimizer steps did not revive any)
        assert torch.equal(weight != 0, gmp.masks.masks[name])
    assert float((model[4].weight == 0).float().mean()) == 0.0  # the classifier stayed dense
    assert gmp.current == pytest.approx(0.75)


def test_fixed_masks_keep_zeros_through_training(tmp_path: Path):
    model = _mlp()
    with torch.no_grad():
        model[2].weight[:, ::2] = 0.0
    masks = MaskSet.from_zeros(model)
    before = masks.sparsity()
    _trainer(tmp_path, model, [FixedMasks(masks)]).fit()
    assert masks.sparsity() == pytest.approx(before)
    assert bool((model[2].weight[:, ::2] == 0).all())
    assert bool((model[2].weight[:, 1::2] != 0).all())  # the rest trained


# ---- distillation ---------------------------------------------------------------------------
def test_kd_loss_is_zero_for_equal_logits_and_grows_with_distance():
    logits = torch.randn(4, 5)
    assert float(kd_loss(logits, logits, 2.0)) == pytest.approx(0.0, abs=1e-6)
    near, far = kd_loss(logits + 0.1 * torch.randn(4, 5), logits, 2.0), kd_loss(-logits, logits, 2.0)
    assert 0 < float(near) < float(far)


def test_distillation_mixes_task_and_teacher_loss(tmp_path: Path):
    teacher = _mlp()
    mod = DistillationModifier(teacher, weight=0.25, temperature=2.0)
    trainer = _trainer(tmp_path, _mlp(), [mod])
    inputs = {"input": torch.randn(3, 8)}
    student = torch.randn(3, 2)
    task_loss = torch.tensor(1.0)
    mixed = mod.on_event(trainer, Event.loss, loss=task_loss, logits=student, inputs=inputs, labels=None)
    expected = 0.75 * 1.0 + 0.25 * float(kd_loss(student, teacher(inputs["input"]), 2.0))
    assert float(mixed) == pytest.approx(expected, rel=1e-5)
    assert mod.on_event(trainer, Event.batch_start) is None  # other events: no opinion
    assert not any(p.requires_grad for p in teacher.parameters())


# ---- the loop's dispatch ----------------------------------------------------------------
class _Recorder(Modifier):
    """Records the lifecycle it sees; optionally reports a structure change once."""

    def __init__(self, change_at: int | None = None) -> None:
        self.seen: list[str] = []
        self.change_at = change_at
        self.counter = 0

    def initialize(self, trainer) -> None:
        self.seen.append("initialize")

    def on_event(self, trainer, event: Event, **payload):
        self.seen.append(event.value)
        if event is Event.loss:
            return payload["loss"] * 0.0 + 7.0  # the loop must use what a modifier returns
        if event is Event.batch_start:
            self.counter += 1
            return trainer.step == self.change_at
        return None

    def finalize(self, trainer) -> ModifierResult:
        self.seen.append("finalize")
        return ModifierResult(notes=[f"{self.counter} batches"])

    def state_dict(self):
        return {"counter": self.counter}

    def load_state_dict(self, state):
        self.counter = int(state["counter"])


def test_loop_sends_events_in_order_and_collects_results(tmp_path: Path):
    rec = _Recorder(change_at=2)
    trainer = _trainer(tmp_path, _mlp(), [rec], epochs=1)
    rebuilt = []
    original = trainer.build_optimizer
    trainer.build_optimizer = lambda: (rebuilt.append(trainer.step), original())[1]
    trainer.fit()
    assert rec.seen[0] == "initialize" and rec.seen[-1] == "finalize"
    one_step = ["batch_start", "loss", "after_backward", "optimizer_step"]
    assert rec.seen[1:5] == one_step
    assert rec.seen.count("batch_start") == trainer.total_steps == 4
    assert rebuilt == [0, 2]  # built at the start, rebuilt when the structure changed
    assert trainer.results[0].notes == ["4 batches"]
    assert trainer.history[-1].train_loss == pytest.approx(7.0)


def test_checkpoint_state_is_keyed_by_place_so_two_of_a_class_do_not_collide(tmp_path: Path):
    first, second = _Recorder(), _Recorder()
    trainer = _trainer(tmp_path, _mlp(), [first, second], epochs=1)
    first.counter, second.counter = 3, 9
    payload = trainer._payload(done=False)
    assert set(payload["modifiers"]) == {"0._Recorder", "1._Recorder"}
    trainer.store.save("main", payload)

    a, b = _Recorder(), _Recorder()
    resumed = _trainer(tmp_path, _mlp(), [a, b], epochs=1)
    assert resumed.try_resume() is not None
    assert (a.counter, b.counter) == (3, 9)
    assert checkpoint_key(1, b) == "1._Recorder"


def test_fake_quant_is_removed_when_training_ends(tmp_path: Path):
    model = _mlp()
    fq = FakeQuantModifier()
    trainer = _trainer(tmp_path, model, [fq], epochs=1)
    trainer.fit()
    assert not any(getattr(m, "_sparsify_fake_quant", False) for m in model.modules())
    assert "forward" not in vars(model[0])  # the plain nn.Linear.forward is back
    assert set(fq.observers) >= {"0", "2", "4", "4:output"}  # the ranges it learned are kept
