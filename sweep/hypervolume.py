"""Hypervolume of a multi-objective Optuna study after each trial, from Optuna's own plot.

The hypervolume is the volume of objective space that the feasible trials dominate, bounded
by a reference point. Optuna computes it for `plot_hypervolume_history` (complete, feasible
trials only, in trial-number order); this module reads those values back from the plot.

The reference point here is the **nadir of the feasible values**: per objective, the worst
value over the complete trials that meet their constraints, in the studies compared (the
minimum of a maximised objective, the maximum of a minimised one; over all complete trials
when none is feasible). Only feasible trials add volume, so an infeasible trial (a diverged
or collapsed one) must not stretch the box: it would shrink every real difference to a
sliver. It is deterministic given the trials, every feasible trial lies on or inside it,
and a trial on it adds no volume. Studies compared with each other must share one
reference point (`nadir([study_a, study_b])`); `moonsweep compare` moves it out by a
margin (`nadir(studies, margin=0.1)`), so that no trial of a compared sweep counts zero.

Example:
    >>> import optuna  # doctest: +SKIP
    >>> ref = nadir([study])  # doctest: +SKIP
    >>> numbers, volumes = hypervolume_history(study, ref)  # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import optuna  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from optuna.study import StudyDirection  # noqa: E402
from optuna.trial import TrialState  # noqa: E402


def feasible(trial: optuna.trial.FrozenTrial) -> bool:
    """Optuna's convention: every constraint value <= 0 (a trial without any is feasible)."""
    return all(v <= 0 for v in trial.constraints.values())


def nadir(studies: Sequence[optuna.Study], margin: float = 0.0) -> list[float]:
    """Per objective, the worst value over the complete feasible trials of `studies` (over
    all complete trials if none is feasible); one shared direction per objective. Raises
    ValueError when no study holds a complete trial.

    `margin` moves the point that fraction of each objective's range (of its value, or 1,
    where every trial has the same value) further out, so that a trial on the nadir adds
    volume too: comparing sweeps, a sweep whose trials all sit at the worst density must not
    score 0."""
    directions = studies[0].directions
    complete = [
        t
        for study in studies
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    ]
    if not complete:
        raise ValueError("no complete trial to set a hypervolume reference point from")
    table = np.asarray([t.values for t in complete if feasible(t)] or [t.values for t in complete])
    out = []
    for i, direction in enumerate(directions):
        low, high = float(table[:, i].min()), float(table[:, i].max())
        maximize = direction == StudyDirection.MAXIMIZE
        worst = low if maximize else high
        spread = (high - low) or abs(worst) or 1.0
        out.append(worst - margin * spread if maximize else worst + margin * spread)
    return out


def plot_history(study: optuna.Study, reference: Sequence[float]) -> Axes:
    """Optuna's hypervolume-history plot (matplotlib); the global style is left untouched."""
    with warnings.catch_warnings(), plt.rc_context():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.visualization.matplotlib.plot_hypervolume_history(study, list(reference))


def hypervolume_history(
    study: optuna.Study, reference: Sequence[float]
) -> tuple[list[int], list[float]]:
    """(trial numbers, hypervolume after each) over the complete trials, as Optuna plots it.

    A failed, stopped or infeasible trial adds nothing; callers that count every trial
    carry the last value forward (see `volume_after`)."""
    ax = plot_history(study, reference)
    numbers: list[int] = []
    volumes: list[float] = []
    if ax.lines:
        numbers = [int(x) for x in ax.lines[0].get_xdata()]
        volumes = [float(y) for y in ax.lines[0].get_ydata()]
    plt.close(ax.figure)
    return numbers, volumes


def volume_after(numbers: Sequence[int], volumes: Sequence[float], trial: int) -> float:
    """The hypervolume once trials 0..`trial` have ended (0 before any complete trial)."""
    done = [v for n, v in zip(numbers, volumes, strict=True) if n <= trial]
    return done[-1] if done else 0.0
