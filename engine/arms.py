"""The comparison arms: what "MOON", "plain sparse training" and "dense" mean as settings.

An arm is a set of overrides on a base training config. Every sparse arm is trained at a
given density level with the base config's sparse method, so that arms compared at one
level differ only in what their names say:

- ``moon_auto``: MOON as published: the unknown output and MOON's loss, alpha auto-tuned,
  voting over the last epochs (the base config's voting mode and length).
- ``sparse``: the same sparse training without any of MOON's pieces: K outputs,
  cross-entropy, no voting, so the learning rate follows its cosine to the end.
- ``sparse+voting``: ``sparse`` plus MOON's voting (and its constant learning-rate tail):
  voting alone, to see which of MOON's pieces does the work.
- ``dense``: no mask, cross-entropy, no voting; one per sweep, not per level.

``no_moon`` is an alias kept for sweeps recorded before the arms were renamed: it always
kept voting, so it means ``sparse+voting``.

Example:
    >>> from engine.arms import arm_overrides, canonical_arm
    >>> arm_overrides("sparse")
    {'moon.enabled': False, 'voting.mode': 'off'}
    >>> canonical_arm("no_moon")
    'sparse+voting'
    >>> arm_overrides("moon_auto", density=0.05)["sparsity.density"]
    0.05
"""

from __future__ import annotations

from typing import Any

from engine.sparse_methods import DENSE

ARMS: dict[str, dict[str, Any]] = {
    "moon_auto": {"moon.enabled": True, "moon.alpha_mode": "auto"},
    "sparse": {"moon.enabled": False, "voting.mode": "off"},
    "sparse+voting": {"moon.enabled": False},
    "dense": {"sparsity.method": DENSE, "moon.enabled": False, "voting.mode": "off"},
}
ALIASES: dict[str, str] = {"no_moon": "sparse+voting"}
# Arms trained once per sweep rather than at every density level.
UNLEVELLED = frozenset({"dense"})
# What each arm is, in one line, for tables, MLflow tags and the report.
DESCRIPTIONS: dict[str, str] = {
    "moon_auto": "MOON as published: unknown output, auto-tuned alpha, voting",
    "sparse": "plain sparse training: no unknown output, no MOON loss, no voting",
    "sparse+voting": "plain sparse training plus MOON's voting (voting alone)",
    "dense": "dense network, cross-entropy, no voting",
}


def canonical_arm(name: str) -> str:
    """The arm a name means (an alias resolved); KeyError names the arms if unknown."""
    name = ALIASES.get(name, name)
    if name not in ARMS:
        known = ", ".join([*ARMS, *(f"{a} (= {b})" for a, b in ALIASES.items())])
        raise KeyError(f"unknown arm {name!r}; arms: {known}")
    return name


def arm_overrides(name: str, density: float | None = None) -> dict[str, Any]:
    """The settings of arm `name`, at `density` for a sparse arm (None: the base's)."""
    arm = canonical_arm(name)
    overrides = dict(ARMS[arm])
    if density is not None and arm not in UNLEVELLED:
        overrides["sparsity.density"] = density
    return overrides
