"""MOON's loss against hand computation, and the alpha schedule against its definition."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from engine.config import MoonConfig
from engine.moon import AlphaSchedule, moon_loss


def _hand_loss(rows: list[list[float]], labels: list[int], alpha: float) -> float:
    total = 0.0
    for z, y in zip(rows, labels, strict=True):
        exps = [math.exp(v) for v in z]
        p = [e / sum(exps) for e in exps]
        h = -math.log(p[y])
        p_u = min(p[-1], 1 - 1e-7)
        c = 1.0 if max(range(len(z)), key=lambda i: z[i]) == y else 0.0
        w = c + (1 - c) * (1 + alpha / (1 + alpha * p_u))
        total += h * w
    return total / len(rows)


def test_loss_matches_hand_computation() -> None:
    rows = [[2.0, 0.5, -1.0, 0.0], [0.1, 1.5, 0.2, 0.3], [0.0, 0.0, 0.5, 3.0]]
    labels = [0, 2, 1]  # correct, wrong (class 1 wins), wrong (unknown wins)
    for alpha in (0.0, 0.5, 3.0):
        loss, _ = moon_loss(torch.tensor(rows), torch.tensor(labels), alpha)
        assert loss.item() == pytest.approx(_hand_loss(rows, labels, alpha), rel=1e-6)
    # Up-weighting is smaller where more mass sits on unknown: the third row has p_u ~ 0.85.
    loss_third, _ = moon_loss(torch.tensor(rows[2:]), torch.tensor(labels[2:]), 3.0)
    loss_second, _ = moon_loss(torch.tensor(rows[1:2]), torch.tensor(labels[1:2]), 3.0)
    h2 = F.cross_entropy(torch.tensor(rows[1:2]), torch.tensor(labels[1:2])).item()
    h3 = F.cross_entropy(torch.tensor(rows[2:]), torch.tensor(labels[2:])).item()
    assert loss_second.item() / h2 > loss_third.item() / h3 > 1.0


def test_warmup_is_plain_cross_entropy_and_statistic() -> None:
    torch.manual_seed(0)
    logits, labels = torch.randn(16, 5), torch.randint(0, 4, (16,))
    loss, stat = moon_loss(logits, labels, None, warmup_stat=True)
    assert loss.item() == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-6)
    p = logits.softmax(1)
    h = -p[torch.arange(16), labels].log()
    assert stat.item() == pytest.approx(((1 - p[:, -1]) * h).mean().item(), rel=1e-5)


def _reference_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float) -> torch.Tensor:
    """The formula of MOON.md section 1 written directly, differentiated by autograd."""
    log_p = F.log_softmax(logits, 1)
    h = -log_p.gather(1, targets[:, None]).squeeze(1)
    p_u = log_p[:, -1].exp().clamp(max=1 - 1e-7)
    c = (logits.argmax(1) == targets).float()
    w = c + (1 - c) * (1 + alpha / (1 + alpha * p_u))
    return (h * w).mean()


@pytest.mark.parametrize("alpha", [0.0, 0.3, 5.0])
def test_closed_form_gradient_matches_autograd(alpha: float) -> None:
    torch.manual_seed(1)
    logits = torch.randn(32, 5, dtype=torch.float64) * 3
    logits[:4, -1] = 40.0  # p_u clamped: no gradient through w there
    targets = torch.randint(0, 4, (32,))
    ours = logits.clone().requires_grad_()
    ref = logits.clone().requires_grad_()
    loss, _ = moon_loss(ours, targets, alpha)
    expected = _reference_loss(ref, targets, alpha)
    (3.0 * loss).backward()
    (3.0 * expected).backward()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)
    torch.testing.assert_close(ours.grad, ref.grad, rtol=1e-10, atol=1e-12)


def test_all_correct_batch_takes_the_cross_entropy_path_exactly() -> None:
    torch.manual_seed(2)
    targets = torch.randint(0, 4, (16,))
    logits = torch.randn(16, 5, dtype=torch.float64)
    logits[torch.arange(16), targets] += 10.0  # every sample right
    ours = logits.clone().requires_grad_()
    ref = logits.clone().requires_grad_()
    loss, _ = moon_loss(ours, targets, 2.5)
    expected = _reference_loss(ref, targets, 2.5)
    loss.backward()
    expected.backward()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)
    torch.testing.assert_close(ours.grad, ref.grad, rtol=1e-10, atol=1e-14)


def test_gradient_flows_through_p_unknown() -> None:
    logits = torch.tensor([[0.1, 1.5, 0.2, 0.3]], requires_grad=True)
    loss, _ = moon_loss(logits, torch.tensor([2]), 2.0)
    (grad,) = torch.autograd.grad(loss, logits)
    # The same loss with w detached has a different gradient on the unknown logit.
    log_p = F.log_softmax(logits, 1)
    p_u = log_p[0, -1].exp().detach()
    w = 1 + 2.0 / (1 + 2.0 * p_u)
    (grad_detached,) = torch.autograd.grad(-log_p[0, 2] * w, logits)
    assert not torch.allclose(grad[0, -1], grad_detached[0, -1])


def test_auto_alpha_schedule() -> None:
    cfg = MoonConfig(warmup_epochs=2, init_factor=4.0, alpha_final=1.0, ema_momentum=0.05)
    sched = AlphaSchedule(cfg, epochs=7)
    stats = [2.0, 1.0, 4.0]
    for epoch in (1, 2):
        assert sched.alpha(epoch) is None
    for s in stats:
        sched.observe(torch.tensor(s))
    m = 2.0
    for s in stats[1:]:
        m = 0.05 * s + 0.95 * m
    alphas = [sched.alpha(e) for e in range(3, 8)]
    alpha0 = m / 4.0
    assert alphas[0] == pytest.approx(alpha0)
    assert alphas[-1] == pytest.approx(1.0)
    steps = [b - a for a, b in zip(alphas, alphas[1:], strict=False)]
    assert steps == pytest.approx([(1.0 - alpha0) / 4] * 4)


def test_fixed_alpha_and_state_round_trip() -> None:
    sched = AlphaSchedule(MoonConfig(alpha_mode="fixed", alpha=0.7, warmup_epochs=1), epochs=4)
    assert [sched.alpha(e) for e in (1, 2, 4)] == [None, 0.7, 0.7]
    auto = AlphaSchedule(MoonConfig(warmup_epochs=1), epochs=4)
    auto.observe(torch.tensor(3.0))
    restored = AlphaSchedule(MoonConfig(warmup_epochs=1), epochs=4)
    restored.load_state_dict(auto.state_dict())
    assert restored.alpha(2) == pytest.approx(auto.alpha(2)) == pytest.approx(3.0 / 64)


def test_training_logs_alpha_each_epoch(small) -> None:
    from engine.train import train

    result = train(small())
    alphas = [h["alpha"] for h in result.history]
    assert alphas[:3] == [0.0, 0.0, 0.0]  # warm-up: plain cross-entropy
    assert 0 < alphas[3] < alphas[4] < alphas[-1]
    assert alphas[-1] == pytest.approx(1.0)
    assert result.models[0].head.out_features == result.suite.num_classes + 1
