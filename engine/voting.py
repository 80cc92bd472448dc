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

VOTING_MODES = ("weights", "predictions")


def snapshot_steps(steps_per_epoch: int, per_epoch: int) -> list[int]:
    """0-based step indices within an epoch after which a snapshot is taken, evenly spread.

    (The reference meant a few per epoch but took one on every step of the first tenth.)
    """
    per_epoch = min(per_epoch, steps_per_epoch)
    return sorted({(k + 1) * steps_per_epoch // per_epoch - 1 for k in range(per_epoch)})


class Voter:
    """Collects snapshots during the averaging epochs; `finalize` gives the models to evaluate.

    `modes` are the voting modes it can finalize: both (`("weights", "predictions")`) keep
    the running mean and the snapshots side by side, so one training gives either; the
    training itself does not depend on the mode.
    """

    def __init__(self, modes: str | tuple[str, ...]) -> None:
        self.modes = (modes,) if isinstance(modes, str) else tuple(modes)
        for mode in self.modes:
            if mode not in VOTING_MODES:
                raise ValueError(f"voting mode must be weights or predictions, not {mode!r}")
        self.mode = self.modes[0]
        self.averaged: AveragedModel | None = None
        self.snapshots: list[dict[str, torch.Tensor]] = []
        self.added = 0

    @property
    def count(self) -> int:
        return self.added

    @torch.no_grad()
    def add(self, model: nn.Module) -> None:
        if "weights" in self.modes:
            if self.averaged is None:
                self.averaged = AveragedModel(model)
            self.averaged.update_parameters(model)
        if "predictions" in self.modes:
            self.snapshots.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        self.added += 1

    @torch.no_grad()
    def finalize(
        self, model: nn.Module, train_x: torch.Tensor, batch_size: int, mode: str | None = None
    ) -> list[nn.Module]:
        """The averaged model (batch-norm recomputed) or one model per kept snapshot, for
        `mode` (default: the first of `modes`)."""
        mode = mode or self.mode
        if mode not in self.modes:
            raise ValueError(f"voting mode {mode!r} was not collected; collected: {self.modes}")
        if self.count == 0:
            return [model]
        if mode == "weights":
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
        state: dict = {"added": self.added}
        if self.averaged is not None:
            state["averaged"] = self.averaged.state_dict()
        if "predictions" in self.modes:
            state["snapshots"] = self.snapshots
        return state

    def load_state_dict(self, state: dict, model: nn.Module) -> None:
        if "weights" in self.modes and "averaged" in state:
            self.averaged = AveragedModel(model)
            self.averaged.load_state_dict(state["averaged"])
        if "predictions" in self.modes:
            self.snapshots = list(state.get("snapshots", []))
        # Checkpoints written before `added` was kept: what the single mode held.
        default = len(self.snapshots) if self.mode == "predictions" else 0
        if self.averaged is not None and self.mode == "weights":
            default = int(self.averaged.n_averaged)
        self.added = int(state.get("added", default))
