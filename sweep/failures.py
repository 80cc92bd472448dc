"""Trials that fail or collapse: what kind of failure, and what the sampler is told of it.

A trial that does not give a usable model has a **failure kind**:

- `nan` (the loss diverged: `TrainingDiverged`), `config` (a `ConfigError`: the settings
  themselves are refused) and `collapsed` (it trained to the end, but its validation
  accuracy is near chance, `collapse`) are the config's fault: the same settings would fail
  again. The searcher tells Optuna such a trial as COMPLETE with the constraint `trains`
  violated (1.0; 0.0 on every other searched trial), so the sampler learns to stay away
  from its region (`sweep.search`);
- `oom`, `error` (any other exception) and `ray` (a lost worker, an error inside Ray) are
  the machine's or the code's fault, not the region's: they stay FAIL, which every Optuna
  sampler ignores.

A diverged or refused trial has no figures of its own: it is told with chance-level
stand-ins (`stand_in`) that rank it among the worst trials without being extreme outliers:
accuracy at chance, AUROC 0.5, FPR at 95% TPR 0.95, ECE and Brier score `1 - chance`, NLL
`ln K`, and its configured density. A collapsed trial keeps its own measured figures.

Example:
    >>> from sweep.failures import chance_accuracy, collapse, collapse_threshold, stand_in
    >>> chance = chance_accuracy(6)  # the digits suite's six known classes
    >>> round(chance, 4), round(collapse_threshold(chance), 4)
    (0.1667, 0.25)
    >>> collapse({"val/accuracy": 0.2, "chance_accuracy": chance})["failure"]
    'collapsed'
    >>> collapse({"val/accuracy": 0.9, "chance_accuracy": chance})
    {}
    >>> stand_in("val/auroc_near", chance), round(stand_in("val/ece", chance), 4)
    (0.5, 0.8333)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from engine.train import TrainingFailed
from sweep.stats import number

DIVERGED = "nan"  # TrainingFailed.kind of a TrainingDiverged (and the retry policy's name)
CONFIG = "config"
COLLAPSED = "collapsed"
RAY = "ray"
# Failures that say something about the searched settings: the sampler is told of them.
CONFIG_FAULTS = (DIVERGED, CONFIG, COLLAPSED)
# The constraint that carries them: violated (1.0) by a diverged, refused or collapsed trial.
TRAINS = "trains"
# Collapsed: validation accuracy at most chance plus this share of the way from chance to 1.
COLLAPSE_MARGIN = 0.1
ACCURACY = "val/accuracy"


def failure_kind(exc: BaseException) -> str:
    """`nan`, `oom`, `error` (as `TrainingFailed.kind` names them) or `config`.

    >>> from engine.config import ConfigError
    >>> failure_kind(ConfigError("data.root: no such folder")), failure_kind(KeyError("x"))
    ('config', 'error')
    """
    failed = exc if isinstance(exc, TrainingFailed) else TrainingFailed(exc, 0)
    return failed.kind or CONFIG  # TrainingFailed.kind is None for a ConfigError


def chance_accuracy(num_classes: int) -> float:
    """The accuracy of guessing among the known classes."""
    return 1.0 / num_classes


def collapse_threshold(chance: float) -> float:
    """The validation accuracy at or below which a finished trial has collapsed."""
    return chance + COLLAPSE_MARGIN * (1.0 - chance)


def collapse(final: Mapping[str, Any]) -> dict[str, str]:
    """`{"failure": "collapsed", "collapse_reason": ...}` for a finished trial's figures
    (its `val/accuracy`, `chance_accuracy`) at chance; `{}` otherwise or when either is
    missing. A NaN accuracy counts as collapsed: nothing measurable was learned."""
    chance = number(final.get("chance_accuracy"))
    if chance is None or ACCURACY not in final:
        return {}
    accuracy = number(final[ACCURACY])
    threshold = collapse_threshold(chance)
    if accuracy is not None and accuracy > threshold:
        return {}
    shown = "nan" if accuracy is None else f"{accuracy:.4g}"
    return {
        "failure": COLLAPSED,
        "collapse_reason": (
            f"collapsed: {ACCURACY} {shown} <= {threshold:.4g} (chance {chance:.4g} plus "
            f"{COLLAPSE_MARGIN:g} of the way to 1)"
        ),
    }


def failure_of(result: Mapping[str, Any] | None) -> str:
    """The failure kind a trial's last result carries ('' for a trial that trained)."""
    return str((result or {}).get("failure", ""))


def reason_of(result: Mapping[str, Any]) -> str:
    """Why a trial failed or collapsed, from its last result ('' if it did neither)."""
    return str(result.get("fail_reason") or result.get("collapse_reason") or "")


def stand_in(metric: str, chance: float) -> float | None:
    """The chance-level value of an objective for a trial without figures of its own (None
    for a metric without one: `density`, spreads over seeds, AUPR, ...). The name's last
    part decides: `val/energy/fpr95_far` is an `fpr95` figure."""
    if metric.startswith("std/"):
        return None
    base = metric.rsplit("/", 1)[-1]
    if base.startswith("auroc"):
        return 0.5
    if base.startswith("fpr95"):
        return 0.95  # a score that ranks at random passes 95% of OOD inputs at 95% TPR
    values = {
        "accuracy": chance,
        "known_accuracy": chance,
        "ece": 1.0 - chance,  # fully confident, right at chance
        "brier": 1.0 - chance,  # uniform prediction
        "nll": -math.log(chance),  # uniform prediction
    }
    return values.get(base)
