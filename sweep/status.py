"""What a sweep holds, for the terminal: the leading trials (Optuna's Pareto front, feasible
trials only) and plain-text tables of trial rows (`sweep.state.trial_rows`).

Example:
    >>> rows = [{"arm": "dense", "accuracy": 0.91234}]
    >>> format_table(rows, ["arm", "accuracy"]).splitlines()
    ['arm    accuracy', 'dense  0.9123  ']
    >>> format_value(None), format_value("0.123456"), format_value("rigl")
    ('-', '0.1235', 'rigl')
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from sweep.spaces import SEARCH_ARM
from sweep.state import SweepState, TrialRow, ran_to_end
from sweep.stores import load_study


def leaders(state: SweepState) -> list[dict[str, Any]]:
    """Optuna's best trials (the Pareto front over the objectives, constraints respected)
    among the trials that ran to the end: early-stopped ones are COMPLETE for the sampler,
    but their figures are mid-training ones, so they neither lead nor hide a finished trial."""
    study = load_study(state.name, state.storage_url)
    objectives = [o["metric"] for o in state.space["objectives"]]
    try:
        best = ran_to_end(study).best_trials
    except ValueError:
        return []
    return [
        {
            "optuna": t.number,
            "trial": t.user_attrs.get("ray_trial_id", ""),
            **dict(zip(objectives, t.values, strict=True)),
            **t.params,
        }
        for t in sorted(best, key=lambda t: -t.values[0])
    ]


def format_value(value: Any) -> str:
    """A figure or parameter for a table: 4 significant digits, `-` when missing.

    Parameters come back from MLflow as strings: a decimal one is shortened like a float.
    """
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(value)
    try:
        return f"{float(text):.4g}" if "." in text else text
    except ValueError:
        return text


def format_table(rows: Sequence[Mapping[str, Any]], columns: list[str]) -> str:
    """Left-aligned columns (`sparsity.` and `moon.` dropped from the headers)."""
    cells = [[format_value(r.get(c)) for c in columns] for r in rows]
    heads = [c.removeprefix("sparsity.").removeprefix("moon.") for c in columns]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(heads)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(heads, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


# Up to this many trials a table shows every one; past it, the ones worth a look.
ALL_ROWS = 60


def rows_to_show(
    rows: Sequence[TrialRow], leading: set[str], every: bool = False
) -> tuple[list[TrialRow], dict[str, int]]:
    """The rows a table shows, and how many of the others are in each state ({} when all
    are shown).

    A sweep of up to ALL_ROWS trials (or `every`) shows all of them; a larger one its
    baselines, the `leading` trials (Ray trial ids: the Pareto front, the chosen one) and
    the trials still running.

        >>> rows = [{"trial": str(i), "arm": "search", "state": "done"} for i in range(99)]
        >>> shown, rest = rows_to_show(rows, {"3"})
        >>> [r["trial"] for r in shown], rest, hidden_note(rest)
        (['3'], {'done': 98}, '98 more (98 done)')
    """
    if every or len(rows) <= ALL_ROWS:
        return list(rows), {}
    keep = [
        r
        for r in rows
        if r["arm"] != SEARCH_ARM or r["trial"] in leading or r["state"] == "running"
    ]
    kept = {id(r) for r in keep}
    rest = Counter(r["state"] for r in rows if id(r) not in kept)
    return keep, dict(rest.most_common())


def hidden_note(rest: Mapping[str, int]) -> str:
    """`rows_to_show`'s hidden rows in words: "98 more (90 done, 8 collapsed)"."""
    counts = ", ".join(f"{n} {state}" for state, n in rest.items())
    return f"{sum(rest.values())} more ({counts})"
