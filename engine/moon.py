"""MOON's unknown-aware loss and its alpha schedule (MOON.md sections 1 and 2).

Example:
    >>> import torch
    >>> from engine.moon import moon_loss
    >>> logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0]])  # K=2 known + unknown
    >>> loss, _ = moon_loss(logits, torch.tensor([0, 0]), alpha=1.0)
    >>> round(loss.item(), 4)  # the misclassified second sample is up-weighted
    2.2515
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.config import MoonConfig

P_UNKNOWN_MAX = 1.0 - 1e-7


def moon_loss(
    logits: torch.Tensor, targets: torch.Tensor, alpha: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unknown-aware loss over K+1 outputs; the last output is "unknown".

    h = -log p_y, p_u = min(p_K, 1 - 1e-7), c = [argmax == y],
    w = c + (1 - c) * (1 + alpha / (1 + alpha * p_u)), loss = mean(h * w).
    `alpha=None` (warm-up) gives mean(h), plain cross-entropy over K+1 outputs. Gradients
    flow through p_u inside w, as in the reference.

    Returns the loss and the per-batch warm-up statistic mean((1 - p_u) * h), detached.
    """
    log_p = F.log_softmax(logits, dim=1)
    h = -log_p.gather(1, targets[:, None]).squeeze(1)
    p_u = log_p[:, -1].exp().clamp(max=P_UNKNOWN_MAX)
    warmup_stat = ((1.0 - p_u) * h).mean().detach()
    if alpha is None:
        return h.mean(), warmup_stat
    wrong = (logits.argmax(dim=1) != targets).to(h.dtype)
    weight = 1.0 + wrong * alpha / (1.0 + alpha * p_u)
    return (h * weight).mean(), warmup_stat


class AlphaSchedule:
    """Alpha per epoch: None during warm-up, then auto-tuned (EWMA / init_factor, ramped
    linearly to alpha_final at the last epoch) or fixed.

    Epochs are numbered 1..T. In auto mode `observe()` is called after every warm-up batch;
    the running mean stays on the device, so warm-up adds no host sync per step.
    """

    def __init__(self, cfg: MoonConfig, epochs: int) -> None:
        self.cfg = cfg
        self.epochs = epochs
        self.ema: torch.Tensor | None = None
        self.alpha0: float | None = None

    def in_warmup(self, epoch: int) -> bool:
        return epoch <= self.cfg.warmup_epochs

    def observe(self, warmup_stat: torch.Tensor) -> None:
        mu = self.cfg.ema_momentum
        self.ema = (
            warmup_stat.clone() if self.ema is None else mu * warmup_stat + (1 - mu) * self.ema
        )

    def alpha(self, epoch: int) -> float | None:
        cfg = self.cfg
        if self.in_warmup(epoch):
            return None
        if cfg.alpha_mode == "fixed":
            return cfg.alpha
        first = cfg.warmup_epochs + 1
        if self.alpha0 is None:
            if self.ema is None:
                raise RuntimeError("auto alpha needs at least one warm-up batch")
            self.alpha0 = float(self.ema) / cfg.init_factor
        if self.epochs == first:
            return self.alpha0
        progress = (epoch - first) / (self.epochs - first)
        return self.alpha0 + (cfg.alpha_final - self.alpha0) * progress

    def state_dict(self) -> dict[str, float | None]:
        return {"ema": None if self.ema is None else float(self.ema), "alpha0": self.alpha0}

    def load_state_dict(self, state: dict[str, float | None]) -> None:
        self.ema = None if state["ema"] is None else torch.tensor(state["ema"])
        self.alpha0 = state["alpha0"]
