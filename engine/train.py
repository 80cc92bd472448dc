"""The training loop: sparse topology, MOON loss, alpha schedule, voting, in one pass.

Data stays on the device as tensors and batches are taken by index; the only host syncs
are once per epoch, for the logged figures.

Example:
    >>> from engine.config import load_config
    >>> from engine.train import train
    >>> result = train(load_config("default", ["epochs=3", "voting.epochs=1"]))  # doctest: +SKIP
    >>> result.metrics["accuracy"]  # doctest: +SKIP
    0.97
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engine.config import TrainConfig
from engine.data import Suite, load_suite
from engine.evaluate import evaluate
from engine.models import Classifier, build_model
from engine.moon import AlphaSchedule, moon_loss
from engine.sparsity import SparseMasks, drop_fraction_at
from engine.voting import Voter, snapshot_steps


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the run cannot continue."""


@dataclass
class TrainResult:
    config: TrainConfig
    metrics: dict[str, float]
    history: list[dict[str, float]]
    models: list[Classifier]  # the evaluated model(s): one, or one per snapshot when voting
    masks: SparseMasks | None
    suite: Suite = field(repr=False)

    def checkpoint(self) -> dict[str, Any]:
        """Everything needed to rebuild and audit the run; loads with weights_only=True."""
        return {
            "format": 1,
            "config": self.config.model_dump(mode="json"),
            "models": [m.state_dict() for m in self.models],
            "masks": {} if self.masks is None else self.masks.state_dict(),
            "metrics": self.metrics,
            "history": self.history,
        }


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but no CUDA device is available")
    return torch.device(name)


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


class LearningRate:
    """Cosine from lr to lr_end over the steps before averaging, then constant lr_end."""

    def __init__(self, cfg: TrainConfig, cosine_steps: int) -> None:
        self.cfg = cfg.optim
        self.cosine_steps = max(cosine_steps, 1)

    def __call__(self, step: int) -> float:
        c = self.cfg
        if c.schedule == "constant":
            return c.lr
        if step >= self.cosine_steps:
            return c.lr_end
        return c.lr_end + (c.lr - c.lr_end) * 0.5 * (
            1 + math.cos(math.pi * step / self.cosine_steps)
        )


@torch.no_grad()
def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 2048) -> float:
    model.eval()
    correct = sum(
        (model(xb).argmax(1) == yb).sum()
        for xb, yb in zip(x.split(batch), y.split(batch), strict=True)
    )
    model.train()
    return float(correct) / max(len(y), 1)


EpochCallback = Callable[[dict[str, float]], None]


def train(cfg: TrainConfig, on_epoch: EpochCallback | None = None) -> TrainResult:
    """Train and evaluate one configuration; `on_epoch` receives each epoch's figures."""
    device = resolve_device(cfg.device)
    generator = seed_everything(cfg.seed)
    suite = load_suite(cfg.data).to(device)
    k = suite.num_classes
    model = build_model(
        cfg.model.name,
        suite.input_shape,
        k + cfg.num_outputs_extra,
        cfg.model.width,
        cfg.model.depth,
    ).to(device)
    sp = cfg.sparsity
    masks = None
    if sp.method != "dense":
        masks = SparseMasks(model, sp.density, sp.init, sp.method, generator)
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=cfg.optim.lr,
        momentum=cfg.optim.momentum,
        nesterov=cfg.optim.nesterov and cfg.optim.momentum > 0,
        weight_decay=cfg.optim.weight_decay,
    )

    x_train, y_train = suite.train.x, suite.train.y
    n = len(y_train)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    voting = cfg.voting.mode != "off"
    avg_start_epoch = cfg.epochs - cfg.voting.epochs + 1 if voting else cfg.epochs + 1
    avg_start_step = (avg_start_epoch - 1) * steps_per_epoch
    # The mask freezes before averaging so the averaged weights keep exactly its zeros.
    mask_stop_step = min(int(sp.end_fraction * total_steps), avg_start_step)
    lr_at = LearningRate(cfg, avg_start_step if voting else total_steps)
    alphas = AlphaSchedule(cfg.moon, cfg.epochs) if cfg.moon.enabled else None
    voter = Voter(cfg.voting.mode) if voting else None
    snap_at = set(snapshot_steps(steps_per_epoch, cfg.voting.snapshots_per_epoch))

    history: list[dict[str, float]] = []
    step = 0
    for epoch in range(1, cfg.epochs + 1):
        started = time.perf_counter()
        alpha = alphas.alpha(epoch) if alphas else None
        warming = alphas is not None and alphas.in_warmup(epoch) and cfg.moon.alpha_mode == "auto"
        model.train()
        perm = torch.randperm(n, generator=generator).to(device)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        moved = 0
        for i in range(steps_per_epoch):
            idx = perm[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            xb, yb = x_train[idx], y_train[idx]
            lr = lr_at(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            logits = model(xb)
            if alphas is not None:
                loss, warmup_stat = moon_loss(logits, yb, alpha)
                if warming:
                    alphas.observe(warmup_stat)
            else:
                loss = F.cross_entropy(logits, yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            step += 1
            if masks is not None:
                if (
                    sp.method != "static"
                    and step % sp.update_interval == 0
                    and step < mask_stop_step
                ):
                    moved += masks.update(
                        drop_fraction_at(step, sp.drop_fraction, mask_stop_step), optimizer
                    )
                masks.mask_grads_()
            optimizer.step()
            if masks is not None:
                masks.apply_()
            loss_sum += loss.detach() * len(yb)
            correct += (logits.detach().argmax(1) == yb).sum()
            if voter is not None and epoch >= avg_start_epoch and i in snap_at:
                voter.add(model)

        train_loss = float(loss_sum) / n
        if not math.isfinite(train_loss):
            raise TrainingDiverged(f"loss is {train_loss} at epoch {epoch}")
        record = {
            "epoch": epoch,
            "loss": train_loss,
            "train_accuracy": float(correct) / n,
            "val_accuracy": _accuracy(model, suite.val.x, suite.val.y),
            "alpha": 0.0 if alpha is None else alpha,
            "lr": lr,
            "density": 1.0 if masks is None else masks.global_density(),
            "mask_moved": moved,
            "seconds": time.perf_counter() - started,
        }
        history.append(record)
        if on_epoch is not None:
            on_epoch(record)

    final = voter.finalize(model, x_train, cfg.batch_size) if voter else [model.eval()]
    metrics = evaluate(final, suite, cfg, masks)
    return TrainResult(cfg, metrics, history, final, masks, suite)
