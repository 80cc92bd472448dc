"""Sparse topology: ERK by its definition, exact budgets, RigL/SET updates, masks that hold."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from engine.data import load_suite
from engine.models import build_model
from engine.sparsity import (
    SparseMasks,
    drop_fraction_at,
    erk_densities,
    maskable_weights,
    uniform_densities,
)


def test_erk_hand_computed() -> None:
    shapes = {"a": (10, 10), "b": (100, 100)}
    # raw a = 20/100, raw b = 200/10000; budget 0.1 * 10100 = 1010; eps = 1010 / 220.
    dens = erk_densities(shapes, 0.1)
    assert dens["a"] == pytest.approx(0.2 * 1010 / 220)
    assert dens["b"] == pytest.approx(0.02 * 1010 / 220)
    # At 0.3 layer a would pass 1: it becomes dense and b takes the rest of the budget.
    dens = erk_densities(shapes, 0.3)
    assert dens["a"] == 1.0
    assert dens["b"] == pytest.approx((0.3 * 10100 - 100) / 10000)


def test_erk_definition_on_a_cnn() -> None:
    net = build_model("cnn", (1, 8, 8), 7, width=16, depth=3)
    shapes = {n: tuple(p.shape) for n, p in maskable_weights(net).items()}
    dens = erk_densities(shapes, 0.1)
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    # Total budget is kept ...
    assert sum(dens[n] * sizes[n] for n in shapes) == pytest.approx(0.1 * sum(sizes.values()))
    # ... and every layer below 1 has density proportional to (sum of dims) / (prod of dims).
    ratios = [dens[n] / (sum(s) / sizes[n]) for n, s in shapes.items() if dens[n] < 1]
    assert len(ratios) >= 2
    assert max(ratios) == pytest.approx(min(ratios))
    # Dense layers are exactly those that the common ratio would push past 1.
    for n, s in shapes.items():
        if dens[n] == 1.0:
            assert ratios[0] * sum(s) / sizes[n] > 1


def test_uniform_and_exact_counts() -> None:
    net = build_model("mlp", (1, 8, 8), 7, width=64, depth=2)
    masks = SparseMasks(net, 0.2, init="uniform", method="static")
    for name, p in maskable_weights(net).items():
        assert masks.counts[name] == round(0.2 * p.numel())
        assert int((p != 0).sum()) <= masks.counts[name]
    assert uniform_densities({"a": (2, 2)}, 0.5) == {"a": 0.5}
    assert masks.global_density() == pytest.approx(0.2, abs=1e-3)


def test_drop_fraction_cosine() -> None:
    assert drop_fraction_at(0, 0.3, 100) == pytest.approx(0.3)
    assert drop_fraction_at(50, 0.3, 100) == pytest.approx(0.15)
    assert drop_fraction_at(25, 0.3, 100) == pytest.approx(0.15 * (1 + math.cos(math.pi / 4)))
    assert drop_fraction_at(100, 0.3, 100) == 0.0
    assert drop_fraction_at(150, 0.3, 100) == 0.0


def test_rigl_grows_where_gradient_is_largest() -> None:
    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 3, bias=False)
    masks = SparseMasks(torch.nn.Sequential(layer), 0.5, init="uniform", method="rigl")
    mask = masks.masks["0.weight"].bool()
    with torch.no_grad():
        layer.weight.copy_(torch.arange(1.0, 13.0).view(3, 4) * mask)
    grad = torch.arange(12.0).view(3, 4) * 0.1
    layer.weight.grad = grad.clone()
    active_before = mask.clone()
    masks.update(drop_fraction=2 / 6)  # 6 active: drop 2, grow 2
    after = masks.masks["0.weight"].bool()
    assert int(after.sum()) == 6
    # Dropped: the two smallest magnitudes among the active weights.
    active_values = (torch.arange(1.0, 13.0).view(3, 4))[active_before]
    smallest = set(torch.sort(active_values).values[:2].tolist())
    kept_after_drop = active_before & ~torch.isin(
        torch.arange(1.0, 13.0).view(3, 4), torch.tensor(list(smallest))
    )
    # Grown: largest gradient outside the kept set; new weights start at zero.
    candidates = torch.where(kept_after_drop, -torch.inf, grad).view(-1)
    grown = set(torch.topk(candidates, 2).indices.tolist())
    assert set(torch.nonzero(after.view(-1) & ~kept_after_drop.view(-1)).view(-1).tolist()) == grown
    for g in grown:
        if not active_before.view(-1)[g]:
            assert layer.weight.view(-1)[g] == 0


def _manual_sparse_training(method: str, steps: int = 60, interval: int = 5, stop: int = 40):
    """The engine's step order (update, mask grads, step) on real digits data."""
    from engine.config import DataConfig

    suite = load_suite(DataConfig())
    torch.manual_seed(0)
    net = build_model("mlp", suite.input_shape, suite.num_classes + 1, width=64, depth=2)
    masks = SparseMasks(net, 0.1, "erk", method, torch.Generator().manual_seed(0))
    counts0 = dict(masks.counts)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    changes = []
    x, y = suite.train.x, suite.train.y
    for step in range(1, steps + 1):
        idx = torch.randint(len(y), (64,))
        loss = F.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        before = {n: m.clone() for n, m in masks.masks.items()}
        if step % interval == 0 and step < stop:
            masks.update(drop_fraction_at(step, 0.3, stop), opt)
        masks.mask_grads_()
        opt.step()
        changed = any(not torch.equal(before[n], masks.masks[n]) for n in before)
        changes.append((step, changed))
        for name, p in masks.params.items():
            m = masks.masks[name]
            assert int(m.sum()) == counts0[name], f"{name} lost its budget at step {step}"
            assert int((p.detach() * (1 - m)).abs().sum()) == 0, "weight outside the mask"
            buf = opt.state[p]["momentum_buffer"]
            assert int((buf * (1 - m)).abs().sum()) == 0, "momentum outside the mask"
    return changes


@pytest.mark.parametrize("method", ["rigl", "set"])
def test_budget_and_masks_hold_every_step(method: str) -> None:
    changes = _manual_sparse_training(method)
    before_stop = [changed for step, changed in changes if step < 40]
    after_stop = [changed for step, changed in changes if step >= 40]
    assert any(before_stop), "topology never changed before the end fraction"
    assert not any(after_stop), "topology changed after the end fraction"


def test_static_never_moves() -> None:
    changes = _manual_sparse_training("static")
    assert not any(changed for _, changed in changes)


def test_engine_run_moves_masks_only_before_end_fraction(small) -> None:
    from engine.train import train

    cfg = small("sparsity.end_fraction=0.5", "voting.mode=off")
    result = train(cfg)
    moved = [h["mask_moved"] for h in result.history]
    half = cfg.epochs // 2
    assert sum(moved[: half - 1]) > 0
    assert sum(moved[half:]) == 0
    model = result.models[0]
    for name, w in maskable_weights(model).items():
        assert int((w != 0).sum()) <= result.masks.counts[name]
    assert result.metrics["density"] == pytest.approx(0.1, abs=2e-3)
    for name in maskable_weights(model):
        assert f"density/{name}" in result.metrics


@pytest.mark.parametrize("method", ["rigl", "set"])
def test_grown_weight_is_zero_after_its_first_step(small, method: str) -> None:
    """Through the engine's own loop: a connection grown at a step is still 0 after that
    step's optimizer update (SGD with Nesterov momentum and weight decay)."""
    from engine.train import Run

    cfg = small(f"sparsity.method={method}", "sparsity.update_interval=3", "voting.mode=off")
    run = Run(cfg)
    update, step = run.masks.update, run.optimizer.step
    grown: dict[str, torch.Tensor] = {}
    checked = []

    def recording_update(fraction: float, optimizer=None) -> int:
        before = {n: m.clone().bool() for n, m in run.masks.masks.items()}
        moved = update(fraction, optimizer)
        grown.update({n: run.masks.masks[n].bool() & ~before[n] for n in before})
        return moved

    def checking_step(*args, **kwargs):
        out = step(*args, **kwargs)
        for name, new in grown.items():
            if new.any():
                assert torch.all(run.masks.params[name].detach()[new] == 0), name
                checked.append(int(new.sum()))
        grown.clear()
        return out

    run.masks.update = recording_update
    run.optimizer.step = checking_step
    run.train_epoch()
    assert sum(checked) > 0, "no connection was grown: the test checked nothing"


def test_mask_grads_with_an_unused_layer_keeps_the_used_layer_masked() -> None:
    torch.manual_seed(0)
    used, unused = torch.nn.Linear(6, 4), torch.nn.Linear(6, 4)
    masks = SparseMasks(torch.nn.ModuleList([used, unused]), 0.25, init="uniform", method="set")
    opt = torch.optim.SGD([used.weight, unused.weight], lr=0.5, momentum=0.9, weight_decay=1e-3)
    x = torch.randn(16, 6)
    for _ in range(3):
        opt.zero_grad(set_to_none=True)
        used(x).pow(2).sum().backward()  # `unused` gets no gradient at all
        assert unused.weight.grad is None
        masks.mask_grads_()
        opt.step()
        outside = used.weight.detach() * (1 - masks.masks["0.weight"])
        assert torch.count_nonzero(outside) == 0
    assert torch.count_nonzero(used.weight.detach()) > 0
