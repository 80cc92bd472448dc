"""Sparse topologies: ERK/uniform layer densities, and masks updated by a registered method.

The methods (static, SET, RigL: how connections are dropped and regrown) are registered in
`engine.sparse_methods`; this module holds the masks and the drop-and-grow mechanics.

Written here rather than taken from a library: `torch.ao.pruning` prunes (masks only
shrink, through parametrizations that cost every forward) and has no ERK densities nor
gradient- or random-based regrowth; no maintained package offers RigL/SET for plain
PyTorch modules. The mask covers the weight of every Linear and Conv2d layer; biases and
normalisation parameters stay dense.

Example:
    >>> import torch
    >>> from engine.models import build_model
    >>> from engine.sparsity import SparseMasks
    >>> net = build_model("mlp", (1, 8, 8), 7, width=32, depth=2)
    >>> masks = SparseMasks(net, density=0.1, init="erk", method="rigl")
    >>> round(masks.global_density(), 2)
    0.1
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from engine.sparse_methods import sparse_methods

SPARSE_LAYERS = (nn.Linear, nn.Conv2d)


def maskable_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """The weights a mask covers, by parameter name (Linear and Conv2d weights)."""
    return {
        f"{name}.weight": module.weight
        for name, module in model.named_modules()
        if isinstance(module, SPARSE_LAYERS)
    }


def uniform_densities(shapes: dict[str, tuple[int, ...]], density: float) -> dict[str, float]:
    return {name: density for name in shapes}


def erk_densities(shapes: dict[str, tuple[int, ...]], density: float) -> dict[str, float]:
    """Erdos-Renyi-Kernel densities (Evci et al., RigL, 2020).

    Layer l gets density eps * (sum of its dims) / (product of its dims), with eps chosen so
    the total non-zero count equals `density` times the total weight count. Layers whose
    density would exceed 1 are made dense and eps is solved again for the rest.
    """
    sizes = {name: math.prod(shape) for name, shape in shapes.items()}
    raw = {name: sum(shape) / sizes[name] for name, shape in shapes.items()}
    budget = density * sum(sizes.values())
    dense: set[str] = set()
    while True:
        sparse = [n for n in shapes if n not in dense]
        remaining = budget - sum(sizes[n] for n in dense)
        if not sparse:
            return dict.fromkeys(shapes, 1.0)
        eps = remaining / sum(raw[n] * sizes[n] for n in sparse)
        too_dense = [n for n in sparse if eps * raw[n] > 1.0]
        if not too_dense:
            return {n: 1.0 if n in dense else eps * raw[n] for n in shapes}
        dense.update(too_dense)


def drop_fraction_at(step: int, initial: float, stop_step: int) -> float:
    """Cosine decay of the drop fraction from `initial` at step 0 to 0 at `stop_step`."""
    if step >= stop_step:
        return 0.0
    return initial * 0.5 * (1.0 + math.cos(math.pi * step / stop_step))


class SparseMasks:
    """Binary masks over a model's Linear/Conv2d weights with a fixed non-zero budget."""

    def __init__(
        self,
        model: nn.Module,
        density: float,
        init: str = "erk",
        method: str = "rigl",
        generator: torch.Generator | None = None,
    ) -> None:
        if method not in sparse_methods:
            allowed = ", ".join(sparse_methods.names())
            raise ValueError(f"sparse method must be one of {allowed}, not {method!r}")
        self.method = method
        self.scores = sparse_methods.get(method)
        self.params = maskable_weights(model)
        shapes = {name: tuple(p.shape) for name, p in self.params.items()}
        plan = erk_densities if init == "erk" else uniform_densities
        self.target_densities = plan(shapes, density)
        self.generator = generator
        self.masks: dict[str, torch.Tensor] = {}
        for name, p in self.params.items():
            n = p.numel()
            keep = min(n, max(1, round(self.target_densities[name] * n)))
            order = torch.randperm(n, generator=generator)[:keep]
            mask = torch.zeros(n, dtype=p.dtype)
            mask[order] = 1.0
            self.masks[name] = mask.view_as(p).to(p.device)
        self.counts = {name: int(m.sum().item()) for name, m in self.masks.items()}
        self._mask_list = [self.masks[n] for n in self.params]
        self._param_list = list(self.params.values())
        self.apply_()

    # -- the per-step hot path: one fused call each, no host syncs --------------------------
    @torch.no_grad()
    def apply_(self) -> None:
        """Zero the weights outside the mask."""
        torch._foreach_mul_(self._param_list, self._mask_list)

    @torch.no_grad()
    def mask_grads_(self) -> None:
        """Zero the gradients outside the mask, so momentum and weight decay stay inside it."""
        grads = [p.grad for p in self._param_list]
        if all(g is not None for g in grads):  # the usual case: one fused call
            torch._foreach_mul_(grads, self._mask_list)
            return
        # A layer without a gradient (unused in this forward pass) must not unmask the rest.
        pairs = [(g, m) for g, m in zip(grads, self._mask_list, strict=True) if g is not None]
        if pairs:
            torch._foreach_mul_([g for g, _ in pairs], [m for _, m in pairs])

    # -- topology updates ---------------------------------------------------------------------
    @torch.no_grad()
    def update(self, drop_fraction: float, optimizer: torch.optim.Optimizer | None = None) -> int:
        """Drop `drop_fraction` of each layer's active weights and regrow as many elsewhere.

        Which ones is the method's rule (`engine.sparse_methods`): the active weights with
        the lowest drop score go, the inactive ones with the highest grow score come (from
        zero). Returns the number of connections that moved.
        """
        if drop_fraction <= 0:
            return 0
        moved = 0
        for name, p in self.params.items():
            mask = self.masks[name]
            n_active = self.counts[name]
            k = round(drop_fraction * n_active)
            if k == 0 or n_active == p.numel():
                continue
            flat_mask = mask.view(-1)
            active = flat_mask.bool()
            scores = self.scores(p, active, self.generator)
            if scores is None:  # this method keeps the mask
                continue
            drop_score, grow_score = scores
            dropped = torch.topk(torch.where(active, drop_score, torch.inf), k, largest=False)
            kept = active.clone()
            kept[dropped.indices] = False
            grown = torch.topk(grow_score.masked_fill(kept, -torch.inf), k).indices
            new_mask = kept.clone()
            new_mask[grown] = True
            new_weight = new_mask & ~active  # regrown connections start from zero
            # Through the logical shape, not a flat view: channels_last weights are NHWC.
            p.masked_fill_(new_weight.view(p.shape), 0.0)
            if p.grad is not None:
                # ...and stay zero through this step's optimizer update: the gradient that
                # chose them would otherwise move them at once (by about -lr * 1.9 * grad).
                p.grad.masked_fill_(new_weight.view(p.shape), 0.0)
            moved += int(k)
            flat_mask.copy_(new_mask.to(mask.dtype))
        if moved:  # nothing moved: weights and optimizer state are already inside the mask
            self.apply_()
            if optimizer is not None:
                self.mask_optimizer_state_(optimizer)
        return moved

    @torch.no_grad()
    def mask_optimizer_state_(self, optimizer: torch.optim.Optimizer) -> None:
        """Zero every per-weight optimizer buffer (momentum, Adam moments) outside the mask."""
        for name, p in self.params.items():
            for value in optimizer.state.get(p, {}).values():
                if torch.is_tensor(value) and value.shape == p.shape:
                    value.mul_(self.masks[name])

    # -- reporting ------------------------------------------------------------------------------
    def layer_densities(self) -> dict[str, float]:
        return {name: self.counts[name] / p.numel() for name, p in self.params.items()}

    def global_density(self) -> float:
        total = sum(p.numel() for p in self.params.values())
        return sum(self.counts.values()) / total

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: m.bool().cpu() for name, m in self.masks.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for name, m in state.items():
            self.masks[name].copy_(m.to(self.masks[name]))
            self.counts[name] = int(m.sum().item())
        self.apply_()


def density_report(model: nn.Module, masks: SparseMasks | None) -> dict[str, float]:
    """`density` (global, over mask-covered weights) and `density/<layer>` for each layer."""
    params = maskable_weights(model)
    if masks is None:
        per_layer = dict.fromkeys(params, 1.0)
        glob = 1.0
    else:
        per_layer = masks.layer_densities()
        glob = masks.global_density()
    report = {"density": glob}
    report.update({f"density/{name}": d for name, d in per_layer.items()})
    return report


def nonzero_within_mask(params: Iterable[tuple[str, torch.Tensor]], masks: SparseMasks) -> bool:
    """True when every non-zero weight lies inside the mask (used to check averaged models)."""
    return all(
        bool(((w != 0) & ~masks.masks[name].bool()).sum() == 0)
        for name, w in params
        if name in masks.masks
    )
