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

import contextlib
import math
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engine.config import ConfigError, RuntimeConfig, TrainConfig
from engine.data import Suite, load_suite
from engine.evaluate import evaluate
from engine.models import Classifier, build_model
from engine.moon import AlphaSchedule, moon_loss
from engine.pipeline import DeviceLoader
from engine.sparse_methods import DENSE
from engine.sparsity import SparseMasks, drop_fraction_at
from engine.voting import Voter, snapshot_steps

# Devices with PyTorch's fused SGD kernel.
FUSED_SGD_DEVICES = ("cpu", "cuda")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the run cannot continue."""


class TrainingFailed(RuntimeError):
    """Training stopped by `cause` after `epoch` completed epochs; the one failure type.

    `last_state` is the last saved state (serialised run states) to retry from, None when
    none was saved; `kind` names the fault for a retry policy.

        >>> failed = TrainingFailed(TrainingDiverged("loss is nan at epoch 3"), epoch=2)
        >>> failed.kind, failed.epoch, str(failed)
        ('nan', 2, 'TrainingDiverged: loss is nan at epoch 3')
    """

    def __init__(self, cause: BaseException, epoch: int, last_state: bytes | None = None) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.cause = cause
        self.epoch = epoch
        self.last_state = last_state

    @property
    def kind(self) -> str | None:
        """`oom`, `nan` or `error`; None for a ConfigError (the same config fails again)."""
        if isinstance(self.cause, ConfigError):
            return None
        if isinstance(self.cause, torch.OutOfMemoryError | MemoryError):
            return "oom"
        if isinstance(self.cause, TrainingDiverged):
            return "nan"
        return "error"


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


def check_runtime(rt: RuntimeConfig, device: torch.device) -> None:
    """Refuse runtime settings the resolved device cannot honour (ConfigError)."""
    if rt.autocast == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(
            "runtime.autocast: 'bf16' is not supported by this GPU (needs compute capability "
            "8.0+); use 'none'"
        )
    if rt.compile and device.type == "cpu":
        compilers = [os.environ.get("CXX", ""), "g++", "c++", "clang++"]
        if not any(c and shutil.which(c) for c in compilers):
            raise ConfigError(
                "runtime.compile: true on the CPU needs a C++ compiler (g++ or clang++, or "
                "$CXX), none found; use false"
            )


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


class Run:
    """One training run, advanced an epoch at a time so it can be checkpointed and resumed.

    `train()` below is the plain loop over it; sweeps call `train_epoch()` themselves,
    report after each epoch and save `state_dict()` as the trial's checkpoint.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        suite: Suite | None = None,
        voting_modes: tuple[str, ...] | None = None,
    ) -> None:
        """`voting_modes`: the modes `finish` may be asked for (default: the config's), e.g.
        both for test-time variants; the training is the same whatever they are."""
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.generator = seed_everything(cfg.seed)
        check_runtime(cfg.runtime, self.device)
        self.suite = (suite or load_suite(cfg.data)).to(self.device)
        k = self.suite.num_classes
        layout = torch.channels_last if cfg.runtime.channels_last else torch.contiguous_format
        self.model = build_model(
            cfg.model.name,
            self.suite.input_shape,
            k + cfg.num_outputs_extra,
            cfg.model.width,
            cfg.model.depth,
        ).to(self.device, memory_format=layout)
        # The compiled forward shares the model's parameters; everything else uses the model.
        # Static shapes: one graph for full batches and one for the epoch's last, smaller one.
        self.forward = (
            torch.compile(self.model, dynamic=False) if cfg.runtime.compile else self.model
        )
        self.loader = DeviceLoader(
            self.suite.train.x,
            self.suite.train.y,
            cfg.batch_size,
            self.generator,
            augment=cfg.data.augment,
            memory_format=layout,
        )
        sp = cfg.sparsity
        self.masks = None
        if sp.method != DENSE:
            self.masks = SparseMasks(self.model, sp.density, sp.init, sp.method, self.generator)
        self.optimizer = torch.optim.SGD(
            self.model.parameters(),
            lr=cfg.optim.lr,
            momentum=cfg.optim.momentum,
            nesterov=cfg.optim.nesterov and cfg.optim.momentum > 0,
            weight_decay=cfg.optim.weight_decay,
            # One kernel for every parameter instead of a few per tensor: a step's fixed cost
            # is most of it on small models (bench/engine.py's unfused arm).
            fused=cfg.runtime.fused_optimizer and self.device.type in FUSED_SGD_DEVICES,
        )
        self.steps_per_epoch = len(self.loader)
        total_steps = cfg.epochs * self.steps_per_epoch
        voting = cfg.voting.mode != "off"
        self.avg_start_epoch = cfg.epochs - cfg.voting.epochs + 1 if voting else cfg.epochs + 1
        avg_start_step = (self.avg_start_epoch - 1) * self.steps_per_epoch
        # The mask freezes before averaging so the averaged weights keep exactly its zeros.
        self.mask_stop_step = min(int(sp.end_fraction * total_steps), avg_start_step)
        self.lr_at = LearningRate(cfg, avg_start_step if voting else total_steps)
        self.alphas = AlphaSchedule(cfg.moon, cfg.epochs) if cfg.moon.enabled else None
        self.voter = Voter(voting_modes or cfg.voting.mode) if voting else None
        self.snap_at = set(snapshot_steps(self.steps_per_epoch, cfg.voting.snapshots_per_epoch))
        self.epoch = 0  # epochs completed
        self.step = 0
        self.history: list[dict[str, float]] = []

    def autocast(self) -> contextlib.AbstractContextManager:
        """The context of the forward pass: bf16 autocast when asked for, else nothing."""
        if self.cfg.runtime.autocast == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @property
    def done(self) -> bool:
        return self.epoch >= self.cfg.epochs

    def train_epoch(self) -> dict[str, float]:
        """Run the next epoch; returns its logged figures (one host sync, here)."""
        cfg, sp, model, masks = self.cfg, self.cfg.sparsity, self.model, self.masks
        self.epoch += 1
        epoch = self.epoch
        started = time.perf_counter()
        alphas = self.alphas
        alpha = alphas.alpha(epoch) if alphas else None
        warming = alphas is not None and alphas.in_warmup(epoch) and cfg.moon.alpha_mode == "auto"
        n = len(self.suite.train.y)
        model.train()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        moved = 0
        for i, (xb, yb) in enumerate(self.loader.epoch()):
            lr = self.lr_at(self.step)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            with self.autocast():
                logits = self.forward(xb)
            # MOON's loss and the logged figures in float32 (a no-op without autocast).
            logits = logits.float()
            if alphas is not None:
                loss, warmup_stat = moon_loss(logits, yb, alpha, warmup_stat=warming)
                if warmup_stat is not None:
                    alphas.observe(warmup_stat)
            else:
                loss = F.cross_entropy(logits, yb)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.step += 1
            if masks is not None:
                if self.step % sp.update_interval == 0 and self.step < self.mask_stop_step:
                    fraction = drop_fraction_at(self.step, sp.drop_fraction, self.mask_stop_step)
                    moved += masks.update(fraction, self.optimizer)
                masks.mask_grads_()
            # Masked gradients keep SGD's momentum, weight decay and update at exactly zero
            # outside the mask, so the weights need no re-masking per step (tested).
            self.optimizer.step()
            loss_sum += loss.detach() * len(yb)
            correct += (logits.detach().argmax(1) == yb).sum()
            if self.voter is not None and epoch >= self.avg_start_epoch and i in self.snap_at:
                self.voter.add(model)

        train_loss = float(loss_sum) / n
        if not math.isfinite(train_loss):
            raise TrainingDiverged(f"loss is {train_loss} at epoch {epoch}")
        record = {
            "epoch": epoch,
            "loss": train_loss,
            "train_accuracy": float(correct) / n,
            "val_accuracy": _accuracy(model, self.suite.val.x, self.suite.val.y),
            "alpha": 0.0 if alpha is None else alpha,
            "lr": lr,
            "density": 1.0 if masks is None else masks.global_density(),
            "mask_moved": moved,
            "seconds": time.perf_counter() - started,
        }
        self.history.append(record)
        return record

    def final_models(self, voting_mode: str | None = None) -> list[Classifier]:
        """The models to evaluate: the votes folded in `voting_mode` (default: the
        config's), or the last weights without voting."""
        if self.voter is None:
            return [self.model.eval()]
        return self.voter.finalize(self.model, self.suite.train.x, self.cfg.batch_size, voting_mode)

    def finish(self) -> TrainResult:
        """Fold the votes and evaluate: the run's final models and metrics."""
        final = self.final_models()
        metrics = evaluate(final, self.suite, self.cfg, self.masks)
        return TrainResult(self.cfg, metrics, self.history, final, self.masks, self.suite)

    def evaluate(self) -> dict[str, float]:
        """The validation metrics of the current weights, mid-training (votes not folded).

        Same names as `finish()`'s `val/...` and `density` figures; the run goes on exactly
        as if it had not been evaluated (no RNG draw, no state change).

            >>> run = Run(cfg); run.train_epoch()  # doctest: +SKIP
            >>> run.evaluate()["val/auroc_near"]  # doctest: +SKIP
            0.71
        """
        devices = [self.device] if self.device.type == "cuda" else []
        # fork_rng: the global streams come back as they were, whatever evaluation draws.
        with torch.random.fork_rng(devices=devices):
            metrics = evaluate([self.model], self.suite, self.cfg, self.masks, parts=("val",))
        self.model.train()
        return metrics

    def state_dict(self) -> dict[str, Any]:
        """Everything to continue after the last completed epoch (weights_only-loadable)."""
        return {
            "epoch": self.epoch,
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "masks": None if self.masks is None else self.masks.state_dict(),
            "alphas": None if self.alphas is None else self.alphas.state_dict(),
            "voter": None if self.voter is None else self.voter.state_dict(),
            "generator": self.generator.get_state(),
            "history": self.history,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.masks is not None:
            self.masks.load_state_dict(state["masks"])
        if self.alphas is not None:
            self.alphas.load_state_dict(state["alphas"])
        if self.voter is not None:
            self.voter.load_state_dict(state["voter"], self.model)
        self.generator.set_state(state["generator"])
        self.history = list(state["history"])


def train(cfg: TrainConfig, on_epoch: EpochCallback | None = None) -> TrainResult:
    """Train and evaluate one configuration; `on_epoch` receives each epoch's figures."""
    run = Run(cfg)
    while not run.done:
        record = run.train_epoch()
        if on_epoch is not None:
            on_epoch(record)
    return run.finish()
