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

from typing import Any

import torch
import torch.nn.functional as F

from engine.config import MoonConfig

P_UNKNOWN_MAX = 1.0 - 1e-7


class _UnknownAwareLoss(torch.autograd.Function):
    """mean(h * w) with its gradient in closed form.

    Same values and gradients as autograd through the formula (tested), in about half the
    kernel launches: on small models those launches, not the arithmetic, are the cost.
    dL/dz = [w (p - e_y) + h (dw/dp_u) p_u (e_K - p)] / n, dw/dp_u = -c' alpha^2 / (1 + alpha p_u)^2
    with c' = 1 - c, and 0 where the clamp on p_u is active.
    """

    @staticmethod
    def forward(
        ctx: Any, logits: torch.Tensor, targets: torch.Tensor, alpha: float
    ) -> torch.Tensor:
        log_p = F.log_softmax(logits, dim=1)
        p = log_p.exp()
        h = -log_p.gather(1, targets[:, None]).squeeze(1)
        p_u = p[:, -1]
        wrong = (logits.argmax(dim=1) != targets).to(p.dtype)
        denom = 1.0 + alpha * p_u.clamp(max=P_UNKNOWN_MAX)
        weight = 1.0 + wrong * (alpha / denom)
        ctx.save_for_backward(p, targets, h, weight, wrong, denom)
        ctx.alpha = alpha
        return (h * weight).mean()

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        p, targets, h, weight, wrong, denom = ctx.saved_tensors
        p_u = p[:, -1]
        unclamped = (p_u < P_UNKNOWN_MAX).to(p.dtype)
        coef = -(ctx.alpha**2) * h * wrong * p_u * unclamped / denom.square()
        grad = p * (weight - coef)[:, None]
        grad.scatter_add_(1, targets[:, None], -weight[:, None])
        grad[:, -1] += coef
        return grad * (grad_out / p.shape[0]), None, None


def moon_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    alpha: float | None,
    warmup_stat: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Unknown-aware loss over K+1 outputs; the last output is "unknown".

    h = -log p_y, p_u = min(p_K, 1 - 1e-7), c = [argmax == y],
    w = c + (1 - c) * (1 + alpha / (1 + alpha * p_u)), loss = mean(h * w).
    `alpha=None` (warm-up) gives mean(h), plain cross-entropy over K+1 outputs. Gradients
    flow through p_u inside w, as in the reference.

    With `warmup_stat`, also returns the warm-up statistic mean((1 - p_u) * h), detached;
    otherwise None.

    Always computed in float32 (or wider): logits from a bf16 autocast forward are upcast
    here, since bf16's 8-bit mantissa would round p_u and h far beyond the loss's own size.
    """
    if logits.dtype in (torch.bfloat16, torch.float16):
        logits = logits.float()
    if alpha is not None:
        # With every sample right, w = 1 everywhere and its gradient is 0: the loss is exactly
        # cross-entropy, whose fused kernel is far cheaper. Checking needs a host read, which
        # is free on the CPU but would sync an accelerator every step, so only there.
        if logits.device.type == "cpu" and not bool((logits.argmax(dim=1) != targets).any()):
            return F.cross_entropy(logits, targets), None
        return _UnknownAwareLoss.apply(logits, targets, float(alpha)), None
    log_p = F.log_softmax(logits, dim=1)
    h = -log_p.gather(1, targets[:, None]).squeeze(1)
    stat = None
    if warmup_stat:
        p_u = log_p[:, -1].detach().exp().clamp(max=P_UNKNOWN_MAX)
        stat = ((1.0 - p_u) * h.detach()).mean()
    return h.mean(), stat


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
