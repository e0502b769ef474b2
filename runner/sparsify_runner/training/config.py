"""Training arguments (``--train-kwargs``): keys, defaults that scale with the data, validation."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from ..errors import InputError


@dataclass
class TrainConfig:
    epochs: int = 0
    """0 = auto: about 600 optimizer steps, between 2 and 20 epochs."""
    batch_size: int = 0
    """0 = auto: 32 (images) / 16 (text, detection), never more than the training set."""
    lr: float = 0.0
    """0 = auto: 1e-3 (images and detection, AdamW) / 5e-5 (text, AdamW)."""
    weight_decay: float = 1e-4
    optimizer: str = "adamw"
    warmup_fraction: float = 0.05
    dense_epochs: int = -1
    """Dense fine-tuning before pruning (gives the baseline and the distillation teacher).
    -1 = auto: half of ``epochs`` (at least 1) when the model got a new classifier head, else 0."""
    image_size: int = 0
    """0 = auto: the images' native size rounded up to a multiple of 32, within [32, 224]
    (detection: the checkpoint's or the detector's size, else within [64, 640])."""
    max_length: int = 0
    """0 = auto: the 95th percentile token count of the training texts, within [16, 256]."""
    checkpoint_every: int = 0
    """Steps between checkpoints; 0 = auto: about 4 per epoch, at least every 200 steps."""
    num_workers: int = 0
    eval_batch_size: int = 64
    calibration_samples: int = 128
    max_train_samples: int = 0
    """0 = all; else a seeded random subset (quick experiments)."""
    max_val_samples: int = 0

    def resolved(self, *, kind: str, train_count: int) -> TrainConfig:
        cfg = TrainConfig(**asdict(self))
        n = min(train_count, cfg.max_train_samples) if cfg.max_train_samples > 0 else train_count
        if cfg.batch_size <= 0:
            cfg.batch_size = 32 if kind == "image" else 16
        cfg.batch_size = max(1, min(cfg.batch_size, n))
        steps_per_epoch = max(1, math.ceil(n / cfg.batch_size))
        if cfg.epochs <= 0:
            cfg.epochs = int(min(20, max(2, round(600 / steps_per_epoch))))
        if cfg.lr <= 0:
            cfg.lr = 5e-5 if kind == "text" else 1e-3
        if cfg.checkpoint_every <= 0:
            cfg.checkpoint_every = max(1, min(200, steps_per_epoch // 4 or 1))
        return cfg

    def steps_per_epoch(self, train_count: int, world: int = 1) -> int:
        """Optimizer steps per epoch, as the Trainer counts them: under torchrun each of ``world``
        processes takes ``batch_size`` of every step's samples."""
        n = min(train_count, self.max_train_samples) if self.max_train_samples > 0 else train_count
        return max(1, math.ceil(n / world / self.batch_size))


def parse_train_kwargs(raw: dict[str, Any]) -> TrainConfig:
    known = {f.name: f for f in fields(TrainConfig)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise InputError(f"unknown train-kwargs key(s) {unknown}; known keys: {', '.join(sorted(known))}")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        typ = type(getattr(TrainConfig(), key))
        try:
            if typ is int and (isinstance(value, bool) or float(value) != int(float(value))):
                raise ValueError
            values[key] = typ(value)
        except (TypeError, ValueError):
            raise InputError(f"train-kwargs '{key}' must be a {typ.__name__}, got {value!r}") from None
    cfg = TrainConfig(**values)
    if cfg.optimizer not in ("adamw", "sgd"):
        raise InputError(f"train-kwargs 'optimizer' must be adamw or sgd, got '{cfg.optimizer}'")
    for key in ("epochs", "batch_size", "image_size", "max_length", "checkpoint_every"):
        if getattr(cfg, key) < 0:
            raise InputError(f"train-kwargs '{key}' must be >= 0, got {getattr(cfg, key)}")
    if cfg.lr < 0:
        raise InputError(f"train-kwargs 'lr' must be > 0, got {cfg.lr}")
    return cfg
