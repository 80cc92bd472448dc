"""Constraints on a trial's figures: `metric op value`, met only by a finite value.

One comparison table (`OPS`) serves both kinds: the constraints given to `moonsweep select`
(`accuracy>=0.95`, parsed by `sweep.selection.parse_constraint`) and a search space's own
(`sweep.spaces.SpaceConstraint`, possibly relative to a baseline's figure), which become a
`Constraint` once that baseline's figure is known.

Example:
    >>> from sweep.constraints import Constraint
    >>> c = Constraint("val/accuracy", ">=", 0.95)
    >>> str(c), c.holds({"val/accuracy": 0.97}), c.holds({"val/accuracy": float("nan")})
    ('val/accuracy>=0.95', True, False)
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sweep.stats import number

OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
    "==": operator.eq,
}


@dataclass(frozen=True)
class Constraint:
    """`metric op value`; a row without a finite value for the metric does not meet it."""

    metric: str
    op: str
    value: float

    def holds(self, row: Mapping[str, Any]) -> bool:
        value = number(row.get(self.metric))
        return value is not None and OPS[self.op](value, self.value)

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.value:g}"
