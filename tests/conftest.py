"""Shared fixtures: small real configs and one cached real training run per arm."""

from __future__ import annotations

import os

import pytest
import torch

from engine.config import TrainConfig, load_config

# Two cores here: one thread per test process keeps timings and results steady.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")


def small_config(*overrides: str) -> TrainConfig:
    """The default preset cut to a few seconds: 12 epochs, 3 averaged, narrow MLP."""
    base = [
        "epochs=12",
        "voting.epochs=3",
        "moon.warmup_epochs=3",
        "model.width=64",
        "sparsity.update_interval=5",
        "device=cpu",
    ]
    return load_config("default", base + list(overrides))


@pytest.fixture
def small() -> type:
    return small_config  # type: ignore[return-value]
