"""The report's figures (matplotlib, Agg), each built from plain rows and arrays.

Rows are `sweep.status.trial_rows(state, all_metrics=True)` rows: `arm`, `trial`,
`sparsity.method`, `moon.enabled`, `moon.alpha_mode`, the achieved `density` and the MLflow
metrics (`val/accuracy`, `accuracy`, ...). Every function returns a `Figure`; the caller
saves and closes it.

The report's figures are drawn in points (x100, `POINTS`), as its tables print them: the
bounded figures (`bounded`: accuracy, ECE, AUROC, FPR95, AUPR, all in [0, 100] points) with
their intervals cut at 0 and 100; density stays a fraction. `levels_tradeoff` and
`sweeps_tradeoff` take the scale (`scale`, fractions by default).

Example:
    >>> fig = metrics_vs_density([{"arm": "dense", "sparsity.method": "dense",
    ...     "moon.enabled": "False", "density": 1.0, "accuracy": 0.9, "val/accuracy": 0.9,
    ...     "auroc_near": 0.8, "val/auroc_near": 0.8, "ece": 0.1, "val/ece": 0.1}])
    >>> len(fig.axes)
    6
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from sklearn.calibration import CalibrationDisplay  # noqa: E402
from sklearn.metrics import RocCurveDisplay  # noqa: E402

from sweep.levels import SEARCHED  # noqa: E402
from sweep.spaces import SEARCH_ARM  # noqa: E402

Row = dict[str, Any]
METHOD_COLOURS = {"rigl": "tab:blue", "set": "tab:orange", "static": "tab:green", "dense": "k"}
BASELINE_MARKERS = {
    "moon_auto": "D",
    "sparse": "s",
    "sparse+voting": "v",
    "no_moon": "v",  # the old name of sparse+voting, in sweeps recorded before
    "dense": "^",
}
# The arms of the per-level trade-off plot (sweep.levels' names), each its own colour.
LEVEL_ARMS = {
    SEARCHED: "tab:purple",  # red is the chosen trial's star
    "moon_auto": "tab:blue",
    "sparse": "tab:green",
    "sparse+voting": "tab:orange",
}
TRADEOFF_METRICS = ("auroc_near", "accuracy", "ece")
# Past this many searched trials a scatter of every one is a wall of markers: the trials off
# the front are drawn as a density, and markers shrink.
MANY_TRIALS = 300
POINTS = 100.0  # a fraction in points
# The figures that live in [0, 1] (engine/metrics.py), by the first part of a name's part.
BOUNDED = ("accuracy", "known_accuracy", "ece", "auroc", "fpr95", "aupr_in", "aupr_out")


def bounded(metric: str) -> bool:
    """Whether a figure lives in [0, 1] (in points [0, 100]): accuracy, ECE and the OOD
    figures, of any part, score or OOD set; not NLL, Brier (up to 2) nor density.

    >>> [bounded(m) for m in ("val/accuracy", "energy/auroc_near", "auroc/photos", "nll")]
    [True, True, True, False]
    """
    return any(
        part == name or part.startswith(f"{name}_")
        for part in metric.split("/")
        for name in BOUNDED
    )


def _value(row: Row, key: str) -> float:
    value = row.get(key)
    try:
        return float(value) if value is not None else np.nan
    except (TypeError, ValueError):
        return np.nan


def _points(row: Row, key: str) -> float:
    """A row's figure in points when it is bounded (`bounded`), else as it is."""
    return _value(row, key) * (POINTS if bounded(key) else 1.0)


def _label(key: str) -> str:
    return f"{key} (points)" if bounded(key) else key


def _moon_on(row: Row) -> bool:
    return str(row.get("moon.enabled")).lower() == "true"


def pareto_front_figure(
    rows: Sequence[Row],
    front_2d: Sequence[Row],
    front_all: Sequence[Row],
    chosen: Row | None,
) -> Figure:
    """Accuracy vs near-OOD AUROC (points) of every finished trial, colour = achieved density.

    Left: validation figures (what selection sees), right: the same trials on the test parts.
    The dashed line joins the accuracy/auroc_near Pareto front (validation); a black edge
    marks trials on the front over all the sweep's objectives; baselines have their own
    markers and the chosen trial is a red star."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), constrained_layout=True)
    densities = [_value(r, "density") for r in rows]
    finite = [d for d in densities if np.isfinite(d) and d > 0]
    norm = LogNorm(min(finite, default=0.01), max(finite, default=1.0) * 1.0001)
    front_ids = {r["mlflow_run_id"] for r in front_all}
    searched = [r for r in rows if r["arm"] == SEARCH_ARM]
    # Past MANY_TRIALS the trials off the front are a shaded density, not a wall of markers.
    many = len(searched) > MANY_TRIALS
    drawn = [r for r in searched if r["mlflow_run_id"] in front_ids] if many else searched
    off = [r for r in searched if r["mlflow_run_id"] not in front_ids] if many else []
    scatter = None
    for ax, prefix, title in ((axes[0], "val/", "validation"), (axes[1], "", "test")):
        hidden = _zoom(ax, rows, f"{prefix}accuracy", f"{prefix}auroc_near")
        if off:
            xs = np.array([_points(r, f"{prefix}accuracy") for r in off])
            ys = np.array([_points(r, f"{prefix}auroc_near") for r in off])
            ok = np.isfinite(xs) & np.isfinite(ys)
            ax.hexbin(
                xs[ok],
                ys[ok],
                gridsize=40,
                extent=(*ax.get_xlim(), *ax.get_ylim()),
                cmap="Greys",
                bins="log",
                mincnt=1,
                zorder=1,
            )
        if drawn:
            scatter = ax.scatter(
                [_points(r, f"{prefix}accuracy") for r in drawn],
                [_points(r, f"{prefix}auroc_near") for r in drawn],
                c=[_value(r, "density") for r in drawn],
                cmap="viridis",
                norm=norm,
                s=30 if many else 55,
                edgecolors=["k" if r["mlflow_run_id"] in front_ids else "none" for r in drawn],
                linewidths=1.2,
                zorder=3,
            )
        line = sorted(front_2d, key=lambda r: _value(r, "val/accuracy"))
        ax.plot(
            [_points(r, f"{prefix}accuracy") for r in line],
            [_points(r, f"{prefix}auroc_near") for r in line],
            "--",
            color="0.4",
            lw=1,
            zorder=2,
            label="Pareto front (val accuracy / auroc_near)",
        )
        labelled: set[str] = set()
        for row in rows:
            if row["arm"] == SEARCH_ARM:
                continue
            ax.scatter(
                _points(row, f"{prefix}accuracy"),
                _points(row, f"{prefix}auroc_near"),
                c=[_value(row, "density")],
                cmap="viridis",
                norm=norm,
                marker=BASELINE_MARKERS.get(row["arm"], "P"),
                s=90,
                edgecolors="r",
                linewidths=1.5,
                zorder=4,
                # One legend entry per arm, not per level it was trained at.
                label=None if row["arm"] in labelled else f"baseline {row['arm']}",
            )
            labelled.add(row["arm"])
        if chosen is not None:
            ax.scatter(
                _points(chosen, f"{prefix}accuracy"),
                _points(chosen, f"{prefix}auroc_near"),
                marker="*",
                s=320,
                c="red",
                edgecolors="k",
                zorder=5,
                label="chosen",
            )
        ax.set_xlabel(_label(f"{prefix}accuracy"))
        ax.set_ylabel(_label(f"{prefix}auroc_near"))
        notes = [f"{len(off)} off the front shaded by count"] if off else []
        notes += [f"{hidden} weaker trials outside"] if hidden else []
        ax.set_title(f"{title} parts" + (f"\n({'; '.join(notes)})" if notes else ""), fontsize=10)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize=8)
    if scatter is not None:
        fig.colorbar(scatter, ax=axes, label="achieved density", shrink=0.9)
    return fig


def _zoom(ax: Any, rows: Sequence[Row], x_key: str, y_key: str) -> int:
    """Limit the view to the better half of the trials and every baseline, so a few very weak
    trials do not squeeze the front into a corner; returns how many points fall outside."""
    xs = np.array([_points(r, x_key) for r in rows])
    ys = np.array([_points(r, y_key) for r in rows])
    ok = np.isfinite(xs) & np.isfinite(ys)
    if ok.sum() < 4:
        return 0
    base = np.array([r["arm"] != SEARCH_ARM for r in rows]) & ok
    limits = []
    for values in (xs, ys):
        low = float(np.median(values[ok]))
        if base.any():
            low = min(low, float(values[base].min()))
        high = float(values[ok].max())
        margin = 0.08 * max(high - low, 1e-3)
        limits.append((low - margin, high + margin))
    ax.set_xlim(*limits[0])
    ax.set_ylim(*limits[1])
    inside = (xs >= limits[0][0]) & (ys >= limits[1][0])
    return int((ok & ~inside).sum())


def metrics_vs_density(rows: Sequence[Row], chosen: Row | None = None) -> Figure:
    """Near-OOD AUROC, ECE and accuracy (points) against achieved density, one colour per sparse
    method (filled: MOON on, hollow: off), the chosen trial ringed in red; top row
    validation, bottom row test."""
    metrics = ("auroc_near", "ece", "accuracy")
    fig, axes = plt.subplots(2, 3, figsize=(14, 7.5), constrained_layout=True, squeeze=False)
    methods = sorted({str(r.get("sparsity.method")) for r in rows})
    many = len(rows) > MANY_TRIALS  # small, faint markers: where they pile up shows
    for i, prefix in enumerate(("val/", "")):
        for j, metric in enumerate(metrics):
            ax = axes[i][j]
            for method in methods:
                colour = METHOD_COLOURS.get(method, "tab:purple")
                for moon in (True, False):
                    group = [
                        r
                        for r in rows
                        if str(r.get("sparsity.method")) == method and _moon_on(r) == moon
                    ]
                    if not group:
                        continue
                    ax.scatter(
                        [_value(r, "density") for r in group],
                        [_points(r, f"{prefix}{metric}") for r in group],
                        s=8 if many else 40,
                        alpha=0.35 if many else 1.0,
                        facecolors=colour if moon else "none",
                        edgecolors=colour,
                        label=f"{method}, MOON {'on' if moon else 'off'}",
                    )
            if chosen is not None:
                ax.scatter(
                    _value(chosen, "density"),
                    _points(chosen, f"{prefix}{metric}"),
                    s=160,
                    facecolors="none",
                    edgecolors="r",
                    linewidths=1.5,
                    label="chosen",
                )
            for row in rows:
                if row["arm"] != SEARCH_ARM:
                    ax.annotate(
                        row["arm"],
                        (_value(row, "density"), _points(row, f"{prefix}{metric}")),
                        fontsize=7,
                        xytext=(4, 4),
                        textcoords="offset points",
                    )
            ax.set_xscale("log")
            ax.set_xlabel("achieved density")
            ax.set_ylabel(_label(f"{prefix}{metric}"))
            ax.set_title(f"{metric} ({'validation' if prefix else 'test'})")
            ax.grid(alpha=0.3, which="both")
    axes[0][0].legend(fontsize=8)
    return fig


def arm_curve(
    ordered: list[dict[str, Any]], arm: str, key: str, scale: float = 1.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """An arm's (densities, means, lows, highs) of `key` over levels sorted by density, or
    None where it has no figure, times `scale` (POINTS: in points). One seed has no interval
    (NaN bounds: no band there); a bounded figure's t-interval of a few seeds is clipped to
    [0, scale], where the figure lives."""
    points = [
        (float(lv["density"]), lv["arms"][arm]["figures"][key])
        for lv in ordered
        if key in lv["arms"].get(arm, {}).get("figures", {})
    ]
    if not points:
        return None
    xs = np.array([x for x, _ in points])
    mean = scale * np.array([float(f["mean"]) for _, f in points])
    low = scale * np.array([float(f["low"]) for _, f in points])
    high = scale * np.array([float(f["high"]) for _, f in points])
    if bounded(key):
        low, high = np.clip(low, 0.0, scale), np.clip(high, 0.0, scale)
    return xs, mean, low, high


def levels_tradeoff(
    levels: Sequence[Mapping[str, Any]],
    chosen: Row | None = None,
    part: str = "test",
    metrics: Sequence[str] = TRADEOFF_METRICS,
    scale: float = 1.0,
) -> Figure:
    """Near-OOD AUROC, accuracy and ECE against density at the sweep's levels: one line per
    arm (the level's best searched trial, moon_auto, sparse, sparse+voting) with its 95%
    interval over the seeds as a band (clipped to [0, scale], where the figures live), dense
    as a horizontal line with its band, the chosen trial a red star at its level.

    `levels` are `sweep.levels.Level.as_dict()` dicts (as `report.json` holds them); `part`
    "test" or "val" picks the figures (`auroc_near` or `val/auroc_near`); `scale` POINTS
    draws them in points (the report), 1 as the fractions they are."""
    prefix = "val/" if part == "val" else ""
    unit = "" if scale == 1.0 else " (points)"
    fig, axes = plt.subplots(
        1, len(metrics), figsize=(5 * len(metrics), 4.4), constrained_layout=True, squeeze=False
    )
    ordered = sorted(levels, key=lambda lv: float(lv["density"]))
    for ax, metric in zip(axes[0], metrics, strict=True):
        key = prefix + metric
        for arm, colour in LEVEL_ARMS.items():
            curve = arm_curve(ordered, arm, key, scale)
            if curve is None:
                continue
            xs, mean, low, high = curve
            ax.plot(xs, mean, "-o", color=colour, ms=5, lw=1.6, label=arm, zorder=3)
            ax.fill_between(xs, low, high, color=colour, alpha=0.15, lw=0)
        dense = next(
            (
                lv["arms"]["dense"]["figures"][key]
                for lv in ordered
                if key in lv["arms"].get("dense", {}).get("figures", {})
            ),
            None,
        )
        if dense is not None:
            ax.axhline(scale * float(dense["mean"]), color="k", ls="--", lw=1.2, label="dense")
            if np.isfinite(float(dense["low"])):
                low, high = scale * float(dense["low"]), scale * float(dense["high"])
                if bounded(key):
                    low, high = np.clip([low, high], 0.0, scale)
                ax.axhspan(low, high, color="k", alpha=0.08)
        if chosen is not None:
            x = chosen.get("level")
            x = _value(chosen, "density") if x is None else float(x)
            ax.scatter(
                x,
                scale * _value(chosen, key),
                marker="*",
                s=260,
                facecolors="none",  # hollow: the level's searched point stays visible inside
                edgecolors="red",
                linewidths=1.6,
                zorder=5,
                label="chosen",
            )
        ax.set_xscale("log")
        ax.set_xticks([float(lv["density"]) for lv in ordered])
        ax.set_xticklabels([f"{float(lv['density']):g}" for lv in ordered])
        ax.minorticks_off()
        ax.set_xlabel("density (level)")
        ax.set_ylabel(key + unit)
        cut = f"; band cut at 0 and {scale:g}" if bounded(key) else ""
        where = "validation" if prefix else "test"
        ax.set_title(f"{metric} ({where}), mean and 95% interval{cut}", fontsize=10)
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize=8)
    return fig


# Per arm of the cross-sweep trade-off plot: (line style, marker); the colour is the sweep's.
SWEEP_ARM_STYLES = {
    SEARCHED: ("-", "o"),
    "moon_auto": ("--", "D"),
    "sparse": (":", "s"),
    "sparse+voting": ("-.", "v"),
}
SWEEP_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")


def sweeps_tradeoff(
    per_sweep: Mapping[str, Sequence[Mapping[str, Any]]],
    part: str = "test",
    metrics: Sequence[str] = TRADEOFF_METRICS,
    scale: float = 1.0,
) -> Figure:
    """The trade-off curves of several sweeps on one plot: per metric an axis against
    density, per sweep a colour, per arm a line style (the level's best searched trial solid,
    moon_auto dashed, sparse dotted, sparse+voting dash-dot), the 95% interval of each
    sweep's searched line as a band (clipped to [0, 1]), and each sweep's dense as a thin
    horizontal line in its colour.

    `per_sweep` maps a sweep's name to its levels (`sweep.levels.Level.as_dict()` dicts);
    `scale` POINTS draws the figures in points, 1 as the fractions they are."""
    prefix = "val/" if part == "val" else ""
    unit = "" if scale == 1.0 else " (points)"
    fig, axes = plt.subplots(
        1, len(metrics), figsize=(5.5 * len(metrics), 4.6), constrained_layout=True, squeeze=False
    )
    densities = sorted({float(lv["density"]) for levels in per_sweep.values() for lv in levels})
    for ax, metric in zip(axes[0], metrics, strict=True):
        key = prefix + metric
        for (name, levels), colour in zip(per_sweep.items(), SWEEP_COLOURS * 4, strict=False):
            ordered = sorted(levels, key=lambda lv: float(lv["density"]))
            for arm, (style, marker) in SWEEP_ARM_STYLES.items():
                curve = arm_curve(ordered, arm, key, scale)
                if curve is None:
                    continue
                xs, mean, low, high = curve
                ax.plot(
                    xs,
                    mean,
                    ls=style,
                    marker=marker,
                    color=colour,
                    ms=5,
                    lw=1.5,
                    label=f"{name}: {arm}",
                    zorder=3,
                )
                if arm == SEARCHED:  # one band per sweep: eight would hide the lines
                    ax.fill_between(xs, low, high, color=colour, alpha=0.12, lw=0)
            dense = next(
                (
                    lv["arms"]["dense"]["figures"][key]
                    for lv in ordered
                    if key in lv["arms"].get("dense", {}).get("figures", {})
                ),
                None,
            )
            if dense is not None:
                ax.axhline(
                    scale * float(dense["mean"]),
                    color=colour,
                    ls=(0, (1, 3)),
                    lw=1.2,
                    label=f"{name}: dense",
                )
        ax.set_xscale("log")
        if densities:
            ax.set_xticks(densities)
            ax.set_xticklabels([f"{d:g}" for d in densities])
        ax.minorticks_off()
        ax.set_xlabel("density (level)")
        ax.set_ylabel(key + unit)
        ax.set_title(f"{metric} ({'validation' if prefix else 'test'}), mean and 95% interval")
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        columns = min(len(labels), len(SWEEP_ARM_STYLES) + 1)
        fig.legend(handles, labels, loc="outside lower center", ncol=columns, fontsize=8)
    return fig


def alpha_schedules(
    histories: Mapping[str, Sequence[tuple[int, float]]],
    modes: Mapping[str, str],
    auto_label: str | None,
    chosen_label: str | None,
) -> Figure:
    """MOON's loss weight alpha per epoch: the auto-tuned baseline (black), the searched
    trials (auto-tuned with searched init_factor/alpha_final in blue, fixed alpha in
    orange) and the chosen trial (red). Warm-up epochs (alpha 0) are not drawn (log axis)."""
    fig, ax = plt.subplots(figsize=(8, 4.8), constrained_layout=True)
    styles = {
        "auto": ("tab:blue", "searched, auto-tuned"),
        "fixed": ("tab:orange", "searched, fixed"),
    }
    labelled: set[str] = set()
    # The two highlighted schedules last, so the searched ones do not hide them.
    order = sorted(histories, key=lambda label: label in (auto_label, chosen_label))
    for label in order:
        points = histories[label]
        epochs = [e for e, a in points if a > 0]
        alphas = [a for _, a in points if a > 0]
        if not alphas:
            continue
        if label == auto_label:
            ax.plot(epochs, alphas, "k-", lw=2.5, label=f"auto-tuned baseline ({label})")
        elif label == chosen_label:
            ax.plot(epochs, alphas, "r-", lw=2.5, marker="o", ms=3, label=f"chosen ({label})")
        else:
            colour, name = styles.get(modes.get(label, ""), ("0.5", "searched"))
            ax.plot(
                epochs,
                alphas,
                color=colour,
                lw=1,
                alpha=0.6,
                label=None if name in labelled else name,
            )
            labelled.add(name)
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("alpha")
    ax.set_title("MOON alpha per epoch (mean over seeds)")
    ax.grid(alpha=0.3, which="both")
    if ax.lines:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no trial with MOON on", ha="center", transform=ax.transAxes)
    return fig


def reliability(parts: Mapping[str, tuple[np.ndarray, np.ndarray, float]], bins: int) -> Figure:
    """Reliability diagrams: per part, (confidence, correct, ece) of the ID samples; bars
    below count the samples per confidence bin."""
    fig, axes = plt.subplots(
        2,
        len(parts),
        figsize=(5.5 * len(parts), 6.5),
        gridspec_kw={"height_ratios": [3, 1]},
        constrained_layout=True,
        squeeze=False,
    )
    edges = np.linspace(0.0, 1.0, bins + 1)
    for j, (name, (confidence, correct, ece)) in enumerate(parts.items()):
        ax = axes[0][j]
        CalibrationDisplay.from_predictions(
            correct.astype(int), confidence, n_bins=bins, strategy="uniform", ax=ax, name=name
        )
        ax.set_title(f"{name}: ECE {POINTS * ece:.2f} points ({bins} bins)")
        ax.set_xlabel("confidence (max probability)")
        ax.set_ylabel("accuracy in bin")
        axes[1][j].hist(confidence, bins=edges, color="tab:blue")
        axes[1][j].set_xlabel("confidence")
        axes[1][j].set_ylabel("samples")
        axes[1][j].set_yscale("log")
    return fig


def roc_curves(parts: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]]) -> Figure:
    """ROC curves ID (positive) vs each OOD set, each with its AUROC in points; per part
    {set: (labels, scores)}."""
    fig, axes = plt.subplots(
        1, len(parts), figsize=(5.5 * len(parts), 5), constrained_layout=True, squeeze=False
    )
    for ax, (part, sets) in zip(axes[0], parts.items(), strict=True):
        for name, (labels, scores) in sets.items():
            shown = RocCurveDisplay.from_predictions(labels, scores, ax=ax, name=name)
            shown.line_.set_label(f"{name} (AUROC {POINTS * shown.roc_auc:.2f})")
        ax.plot([0, 1], [0, 1], ":", color="0.5")
        ax.set_title(f"{part} OOD parts")
        ax.set_xlabel("false positive rate (OOD accepted)")
        ax.set_ylabel("true positive rate (ID accepted)")
        ax.legend(fontsize=8, loc="lower right")
    return fig


def importances(
    per_objective: Mapping[str, Mapping[str, float]],
    trials: int | None = None,
    having: Mapping[str, int] | None = None,
) -> Figure:
    """Optuna's parameter importances, one group of bars per objective; `trials` the
    complete trials they rest on (in the title), `having` per parameter how many of those
    drew it (a conditional one, e.g. `moon.alpha` of the fixed-alpha trials: `(7 of 20)`)."""
    params = sorted({p for values in per_objective.values() for p in values})
    bars = max(len(params), 1) * max(len(per_objective), 1)
    fig, ax = plt.subplots(figsize=(8, 1.0 + 0.3 * bars))
    height = 0.8 / max(len(per_objective), 1)
    y = np.arange(len(params))
    for i, (objective, values) in enumerate(per_objective.items()):
        ax.barh(
            y + i * height,
            [values.get(p, 0.0) for p in params],
            height=height,
            label=objective,
        )
    names = [
        f"{p} ({having[p]} of {trials})"
        if having is not None and trials is not None and having.get(p, trials) != trials
        else p
        for p in params
    ]
    ax.set_yticks(y + height * (len(per_objective) - 1) / 2, names)
    ax.invert_yaxis()
    ax.set_xlabel("importance (normalised per objective)")
    on = "" if trials is None else f", {trials} complete trials"
    ax.set_title(f"Optuna parameter importances (PED-ANOVA{on})")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return fig


def message(text: str) -> Figure:
    """A small figure that says why a plot is missing (too few trials, no study)."""
    fig, ax = plt.subplots(figsize=(6, 1.2))
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True)
    return fig
