"""MOON's voting scheme (MOON.md section 3): average over the last epochs.

`weights` folds weight snapshots into an equal-weight running mean (torch's
`AveragedModel`) and recomputes batch-norm statistics on the training data;
`predictions` keeps the snapshots and averages their softmax outputs at test time.

Example:
    >>> import torch
    >>> from engine.voting import snapshot_steps
    >>> snapshot_steps(steps_per_epoch=10, per_epoch=3)
    [2, 5, 9]
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, update_bn


def snapshot_steps(steps_per_epoch: int, per_epoch: int) -> list[int]:
    """0-based step indices within an epoch after which a snapshot is taken, evenly spread.

    (The reference meant a few per epoch but took one on every step of the first tenth.)
    """
    per_epoch = min(per_epoch, steps_per_epoch)
    return sorted({(k + 1) * steps_per_epoch // per_epoch - 1 for k in range(per_epoch)})


class Voter:
    """Collects snapshots during the averaging epochs; `finalize` gives the models to evaluate."""

    def __init__(self, mode: str) -> None:
        if mode not in ("weights", "predictions"):
            raise ValueError(f"voting mode must be weights or predictions, not {mode!r}")
        self.mode = mode
        self.averaged: AveragedModel | None = None
        self.snapshots: list[dict[str, torch.Tensor]] = []

    @property
    def count(self) -> int:
        if self.mode == "weights":
            return 0 if self.averaged is None else int(self.averaged.n_averaged)
        return len(self.snapshots)

    @torch.no_grad()
    def add(self, model: nn.Module) -> None:
        if self.mode == "weights":
            if self.averaged is None:
                self.averaged = AveragedModel(model)
            self.averaged.update_parameters(model)
        else:
            self.snapshots.append({k: v.detach().clone() for k, v in model.state_dict().items()})

    @torch.no_grad()
    def finalize(self, model: nn.Module, train_x: torch.Tensor, batch_size: int) -> list[nn.Module]:
        """The averaged model (batch-norm recomputed) or one model per kept snapshot."""
        if self.count == 0:
            return [model]
        if self.mode == "weights":
            averaged = self.averaged.module
            batches = list(train_x.split(batch_size))
            update_bn(batches, averaged)
            return [averaged.eval()]
        members = []
        for state in self.snapshots:
            member = copy.deepcopy(model)
            member.load_state_dict(state)
            members.append(member.eval())
        return members

    def state_dict(self) -> dict:
        if self.mode == "weights":
            return {} if self.averaged is None else {"averaged": self.averaged.state_dict()}
        return {"snapshots": self.snapshots}

    def load_state_dict(self, state: dict, model: nn.Module) -> None:
        if self.mode == "weights" and "averaged" in state:
            self.averaged = AveragedModel(model)
            self.averaged.load_state_dict(state["averaged"])
        elif self.mode == "predictions":
            self.snapshots = list(state.get("snapshots", []))
