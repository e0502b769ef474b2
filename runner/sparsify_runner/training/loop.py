"""The training loop: AMP on CUDA, CPU otherwise, DDP under torchrun, modifier events,
periodic checkpoints, SIGTERM -> checkpoint -> ``Terminated``, rich progress bars.

Modifiers follow ``modifiers.base.Modifier``: ``initialize(trainer)`` when training starts,
``on_event(trainer, Event.X, ...)`` at each point of a step (in list order), ``finalize(trainer)``
when training ends; their ``state_dict`` is checkpointed under ``checkpoint_key``.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler

from .. import signals
from ..errors import Terminated
from ..modifiers.base import Event, Modifier, ModifierResult, checkpoint_key
from ..report import EpochRecord
from .checkpoint import CheckpointStore, rng_state, set_rng_state
from .config import TrainConfig
from .shapes import restore_shapes, size_attributes
from .task import Task


def distributed() -> tuple[int, int]:
    """(rank, world size) when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world


def device_for_run() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


class _EpochSampler(Sampler[list[int]]):
    """Seeded per-epoch shuffle that can start mid-epoch (resume) and shard for DDP."""

    def __init__(
        self, n: int, batch_size: int, seed: int, epoch: int, start_batch: int, rank: int, world: int
    ):
        self.n, self.bs, self.seed, self.epoch, self.start, self.rank, self.world = (
            n,
            batch_size,
            seed,
            epoch,
            start_batch,
            rank,
            world,
        )

    def _batches(self) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        order = torch.randperm(self.n, generator=g).tolist()
        order = order[self.rank :: self.world]
        return [order[i : i + self.bs] for i in range(0, len(order), self.bs)]

    def __iter__(self) -> Iterator[list[int]]:
        yield from self._batches()[self.start :]

    def __len__(self) -> int:
        return max(0, len(self._batches()) - self.start)


def _collate(batch):
    inputs = {k: torch.stack([b[0][k] for b in batch]) for k in batch[0][0]}
    return inputs, torch.tensor([int(b[1]) for b in batch])


def make_loader(ds, batch_size: int, num_workers: int = 0, sampler=None, collate=_collate) -> DataLoader:
    if sampler is not None:
        return DataLoader(ds, batch_sampler=sampler, collate_fn=collate, num_workers=num_workers)
    return DataLoader(ds, batch_size=batch_size, shuffle=False, collate_fn=collate, num_workers=num_workers)


def evaluate(task: Task, model: nn.Module, device: torch.device, batch_size: int = 64) -> float:
    """The task's headline validation metric (top-1 accuracy, or mAP for detection) in PyTorch."""
    return task.evaluate(model, device, batch_size)[task.metric]


def prunable_sparsity(model: nn.Module) -> float:
    zeros = total = 0
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            zeros += int((m.weight == 0).sum())
            total += m.weight.numel()
    return zeros / max(1, total)


@dataclass
class Trainer:
    task: Task
    model: nn.Module
    cfg: TrainConfig
    phase: str
    store: CheckpointStore
    modifiers: list[Modifier] = field(default_factory=list)
    telemetry: Any = None
    show_progress: bool = True
    seed: int = 0
    progress_span: tuple[float, float] = (0.0, 1.0)
    device: torch.device = field(default_factory=device_for_run)

    def __post_init__(self) -> None:
        self.rank, self.world = distributed()
        self.steps_per_epoch = math.ceil(len(self.task.train) / self.world / self.cfg.batch_size)
        self.total_steps = self.steps_per_epoch * self.cfg.epochs
        self.step = 0
        self.history: list[EpochRecord] = []
        self.resumed_from: int | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.use_amp = self.device.type == "cuda"
        self.amp_dtype = torch.bfloat16 if self.use_amp and torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp and self.amp_dtype == torch.float16)
        self.results: list[ModifierResult] = []

    # ---- helpers used by modifiers ---------------------------------------------------
    @property
    def epoch_float(self) -> float:
        return self.step / self.steps_per_epoch

    @property
    def bare_model(self) -> nn.Module:
        return self.model.module if hasattr(self.model, "module") and self.world > 1 else self.model

    def build_optimizer(self) -> None:
        params = [p for p in self.bare_model.parameters() if p.requires_grad]
        if self.cfg.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(
                params, lr=self.cfg.lr, momentum=0.9, weight_decay=self.cfg.weight_decay, nesterov=True
            )
        else:
            self.optimizer = torch.optim.AdamW(params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)

    def lr_at(self, step: int) -> float:
        warm = max(1, int(self.cfg.warmup_fraction * self.total_steps))
        if step < warm:
            return self.cfg.lr * (step + 1) / warm
        progress = (step - warm) / max(1, self.total_steps - warm)
        return self.cfg.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))

    # ---- checkpoints --------------------------------------------------------------------
    def _payload(self, done: bool) -> dict[str, Any]:
        model = self.bare_model
        return {
            "phase": self.phase,
            "step": self.step,
            "done": done,
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "shapes": size_attributes(model),
            "optimizer": self.optimizer.state_dict() if self.optimizer and not done else None,
            "modifiers": {checkpoint_key(i, m): m.state_dict() for i, m in enumerate(self.modifiers)},
            "history": [r.model_dump() for r in self.history],
            "rng": rng_state(),
        }

    def save(self, done: bool = False) -> None:
        if self.rank == 0:
            self.store.save(self.phase, self._payload(done))

    def try_resume(self) -> dict[str, Any] | None:
        payload = self.store.load(self.phase)
        if payload is None:
            return None
        model = self.bare_model
        restore_shapes(model, payload["model"], payload.get("shapes", {}))
        model.load_state_dict(payload["model"])
        saved = payload.get("modifiers", {})
        for i, m in enumerate(self.modifiers):
            state = saved.get(checkpoint_key(i, m))
            if state is not None:
                m.load_state_dict(state)
        self.step = int(payload["step"])
        self.history = [EpochRecord(**r) for r in payload.get("history", [])]
        set_rng_state(payload["rng"])
        self.resumed_from = self.step
        return payload

    # ---- the loop ---------------------------------------------------------------------
    def fit(self) -> list[EpochRecord]:
        payload = self.try_resume()
        if payload is not None and payload.get("done"):
            self.model.to(self.device)
            return self.history
        self.model.to(self.device)
        for m in self.modifiers:
            m.initialize(self)
        self.build_optimizer()
        if payload is not None and payload.get("optimizer"):
            self.optimizer.load_state_dict(payload["optimizer"])
        self._wrap_ddp()
        signals.install()
        with self._progress() as bar:
            while self.step < self.total_steps:
                epoch, start = divmod(self.step, self.steps_per_epoch)
                sampler = _EpochSampler(
                    len(self.task.train), self.cfg.batch_size, self.seed, epoch, start, self.rank, self.world
                )
                losses: list[float] = []
                for inputs, labels in make_loader(
                    self.task.train, self.cfg.batch_size, self.cfg.num_workers, sampler, self.task.collate
                ):
                    if signals.stop_requested():
                        self.save()
                        raise Terminated(
                            f"stopped by SIGTERM at step {self.step}/{self.total_steps} of {self.phase}; "
                            "checkpoint saved, rerun with the same output to resume"
                        )
                    losses.append(self._train_step(inputs, labels))
                    self.step += 1
                    bar(self.step, losses[-1])
                    if self.step % self.cfg.checkpoint_every == 0 and self.step < self.total_steps:
                        self.save()
                if self.step % self.steps_per_epoch == 0 or self.step >= self.total_steps:
                    self._end_epoch(losses)
        self.save(done=True)
        if self.world > 1:
            self.model = self.model.module
        self.results = [m.finalize(self) for m in self.modifiers]
        return self.history

    def _dispatch(self, event: Event, **payload: Any) -> list[Any]:
        """Send one event to every modifier in recipe order; their return values, in order."""
        return [m.on_event(self, event, **payload) for m in self.modifiers]

    def _wrap_ddp(self) -> None:
        """(Re)wrap the bare model in DistributedDataParallel under torchrun: DDP's gradient
        buckets are fixed at wrap time, so a structure change needs a fresh wrapper."""
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.model = DDP(
                self.bare_model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )

    def _train_step(self, inputs: dict[str, torch.Tensor], labels: Any) -> float:
        if any(self._dispatch(Event.batch_start)):
            self._wrap_ddp()
            self.build_optimizer()  # structure changed: fresh optimizer state for the new shapes
        self.model.train()
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.step)
        inputs = {k: v.to(self.device, non_blocking=True) for k, v in inputs.items()}
        labels = self.task.targets_to(labels, self.device)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.use_amp):
            loss, outputs = self.task.training_loss(self.model, inputs, labels)
            for m in self.modifiers:  # each modifier sees the loss the previous one returned
                changed = m.on_event(
                    self, Event.loss, loss=loss, logits=outputs, inputs=inputs, labels=labels
                )
                loss = loss if changed is None else changed
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self._dispatch(Event.after_backward)
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 5.0)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self._dispatch(Event.optimizer_step)
        value = float(loss.detach())
        if self.telemetry is not None:
            self.telemetry.training_step(self.epoch_float, self.step, value)
            lo, hi = self.progress_span
            self.telemetry.progress(lo + (hi - lo) * (self.step + 1) / max(1, self.total_steps))
        return value

    def _end_epoch(self, losses: list[float]) -> None:
        metrics = self.task.evaluate(self.bare_model, self.device, self.cfg.eval_batch_size)
        acc = metrics[self.task.metric]
        record = EpochRecord(
            epoch=round(self.epoch_float, 3),
            phase=self.phase,
            step=self.step,
            train_loss=round(sum(losses) / max(1, len(losses)), 5) if losses else float("nan"),
            val_accuracy=_rounded(metrics.get("accuracy")),
            val_map=_rounded(metrics.get("map")),
            val_map50=_rounded(metrics.get("map50")),
            val_perplexity=_rounded(metrics.get("perplexity")),
            sparsity=round(prunable_sparsity(self.bare_model), 5),
            lr=self.lr_at(max(0, self.step - 1)),
        )
        self.history.append(record)
        if self.telemetry is not None:
            self.telemetry.evaluation(f"{self.phase}_val_{self.task.metric}", acc)

    def _progress(self):
        return _ProgressBar(
            self.phase,
            self.total_steps,
            self.steps_per_epoch,
            self.step,
            enabled=self.show_progress and self.rank == 0,
        )


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 5)


class _ProgressBar:
    """rich progress bar: phase, epoch, step, loss, ETA."""

    def __init__(self, phase: str, total: int, per_epoch: int, start: int, enabled: bool) -> None:
        self.phase, self.total, self.per_epoch, self.start, self.enabled = (
            phase,
            total,
            per_epoch,
            start,
            enabled,
        )
        self.progress = None
        self.last = time.monotonic()

    def __enter__(self):
        if self.enabled:
            from rich.progress import MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            from ..progress import make_progress

            self.progress = make_progress(
                extra=(
                    MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}"),
                    TimeElapsedColumn(),
                    TextColumn("ETA"),
                    TimeRemainingColumn(),
                )
            )
            self.progress.start()
            self.task = self.progress.add_task(self.phase, total=self.total, completed=self.start, info="")
        return self

    def __call__(self, step: int, loss: float) -> None:
        if self.progress is not None:
            epoch = min(step // self.per_epoch + 1, max(1, self.total // self.per_epoch))
            self.progress.update(
                self.task,
                completed=step,
                info=f"epoch {epoch}/{max(1, self.total // self.per_epoch)} loss {loss:.4f}",
            )

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()
