"""Sparse training methods, registered by name: how a mask's topology changes.

A method is one function over one masked layer. Given the layer's weight (with its
gradient, when backward has run) and its current mask, it returns two flat scores:
the active connections with the lowest *drop* score are removed, and as many inactive
ones with the highest *grow* score are added (regrown weights start at zero). Returning
None keeps the layer's mask. How many connections move, and when, is the caller's
schedule (`engine.sparsity.SparseMasks.update`, `drop_fraction_at`).

- ``static``: the initial random mask never changes.
- ``set``: SET (Mocanu et al., 2018): drop the smallest magnitudes, grow at random.
- ``rigl``: RigL (Evci et al., 2020): drop the smallest magnitudes, grow where the dense
  gradient is largest.

``dense`` (no mask at all) is not a method here: it is the absence of `SparseMasks`.

Example:
    >>> import torch
    >>> from engine.sparse_methods import sparse_methods
    >>> weight = torch.nn.Parameter(torch.tensor([[0.5, -2.0], [0.1, 0.0]]))
    >>> weight.grad = torch.tensor([[0.0, 0.0], [0.0, 3.0]])
    >>> drop, grow = sparse_methods.get("rigl")(weight, torch.tensor([True, True, True, False]))
    >>> drop.tolist(), grow.tolist()
    ([0.5, 2.0, 0.10000000149011612, 0.0], [0.0, 0.0, 0.0, 3.0])
    >>> sparse_methods.names()
    ['rigl', 'set', 'static']
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from engine.registry import Registry

__all__ = ["DENSE", "TopologyScores", "magnitude", "sparse_methods"]

DENSE = "dense"  # sparsity.method for a model without a mask

# (weight, active mask as flat bool, generator) -> flat (drop score, grow score), or None.
TopologyScores = Callable[
    [torch.Tensor, torch.Tensor, torch.Generator | None],
    tuple[torch.Tensor, torch.Tensor] | None,
]

sparse_methods: Registry[tuple[torch.Tensor, torch.Tensor] | None] = Registry("sparse method")


def magnitude(weight: torch.Tensor) -> torch.Tensor:
    """|w| as a flat tensor: the usual drop score (the smallest magnitudes go first)."""
    return weight.detach().abs().reshape(-1)


@sparse_methods.register("static")
def static(
    weight: torch.Tensor, active: torch.Tensor, generator: torch.Generator | None = None
) -> None:
    """A fixed mask: the topology never changes."""
    return None


@sparse_methods.register("set")
def set_method(
    weight: torch.Tensor, active: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """SET: drop by magnitude, grow uniformly at random (drawn on the run's generator)."""
    return magnitude(weight), torch.rand(weight.numel(), generator=generator).to(weight.device)


@sparse_methods.register("rigl")
def rigl(
    weight: torch.Tensor, active: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """RigL: drop by magnitude, grow where |dense gradient| is largest."""
    if weight.grad is None:
        raise RuntimeError("RigL needs gradients: call update() after backward()")
    return magnitude(weight), weight.grad.detach().abs().reshape(-1)
