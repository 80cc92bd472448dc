"""A sweep's report rendered: the figures (PNG bytes), the comparison as markdown, the HTML.

Everything here works on what `sweep.gather.gather` returned, or on the JSON summary that
`sweep.report` writes beside the page; nothing reads a store.

Example:
    >>> summary = {"metrics": ["accuracy"], "deltas": {"test": {}},
    ...     "table": {"test": {"dense": {"accuracy": {"mean": 0.9, "low": 0.8, "high": 1.0,
    ...     "n": 2}}}}}
    >>> print(comparison_markdown(summary))
    | arm | accuracy |
    |---|---:|
    | dense | 90.00 [80.00, 100.00] |
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from engine.arms import DESCRIPTIONS
from engine.config import format_value as setting_text
from sweep import plots
from sweep.gather import ARMS, Gathered, row_label
from sweep.hypervolume import nadir, plot_history
from sweep.levels import HOLM, SEARCHED
from sweep.plots import POINTS, bounded
from sweep.selection import pareto_front
from sweep.spaces import SEARCH_ARM
from sweep.state import TrialRow
from sweep.stats import CONFIDENCE, Interval
from sweep.status import format_value, hidden_note, rows_to_show

# The 2-D front the Pareto plot draws (validation figures, as selection sees them).
PARETO_2D = [("val/accuracy", "maximize"), ("val/auroc_near", "maximize")]


# -- figures ----------------------------------------------------------------------------------


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def figures(g: Gathered) -> tuple[dict[str, bytes], dict[str, str], list[float] | None]:
    """The report's PNGs by file name, their captions, and the hypervolume's reference
    point (None without a complete Optuna trial)."""
    images: dict[str, bytes] = {}
    captions: dict[str, str] = {}
    chosen, selection, objectives = g.chosen, g.selection, g.objectives
    front_all = selection.pareto if selection is not None else []
    front_2d = pareto_front(g.searched, PARETO_2D)
    images["pareto.png"] = _png(plots.pareto_front_figure(g.rows, front_2d, front_all, chosen))
    captions["pareto.png"] = (
        "In points (x100). "
        f"{len(front_2d)} searched trials on the accuracy/auroc_near front (validation, dashed); "
        f"{len(front_all)} on the front over all objectives "
        f"({', '.join(m for m, _ in objectives)}; black edge)."
    )
    images["density.png"] = _png(plots.metrics_vs_density(g.rows, chosen))
    captions["density.png"] = (
        "Every finished trial, figures in points (x100); density is the achieved one (a "
        "fraction, log axis)."
    )

    if g.levels:
        levels = [lv.as_dict() for lv in g.levels]
        images["levels.png"] = _png(plots.levels_tradeoff(levels, chosen, scale=POINTS))
        at = "" if chosen is None or chosen.get("level") is None else f" at {chosen['level']:g}"
        captions["levels.png"] = (
            "Test parts, in points (x100); per level the mean over the seeds and its 95% "
            "t-interval (band; clipped to [0, 100], where these figures live: a t-interval of "
            "a few seeds can pass them) of "
            "the level's best searched trial and of each arm trained there (same density, "
            "sparse method, seeds and split); dense (dashed) is trained once; red star: the "
            f"chosen trial{at}."
        )

    modes = {row_label(r): str(r.get("moon.alpha_mode")) for r in g.rows}
    auto = "moon_auto" if g.arm_rows.get("moon_auto") is not None else None
    images["alpha.png"] = _png(
        plots.alpha_schedules(g.alpha, modes, auto, row_label(chosen) if chosen else None)
    )
    captions["alpha.png"] = alpha_caption(g.rows, g.alpha)

    again = g.reevaluated
    if chosen is not None and again is not None:
        val, test = again.parts["val"], again.parts["test"]
        parts = {
            "validation ID": (val.confidence, val.correct, val.ece),
            "test ID": (test.confidence, test.correct, test.ece),
        }
        images["reliability.png"] = _png(plots.reliability(parts, again.config.eval.ece_bins))
        images["roc.png"] = _png(plots.roc_curves({"validation": val.roc, "test": test.roc}))
        caption = (
            f"Chosen trial {row_label(chosen)}, checkpoint of seed {again.seed}, re-evaluated; "
            f"score {again.config.eval.primary}; ECE and AUROC in points (x100)."
        )
        captions["reliability.png"] = captions["roc.png"] = caption
    else:
        images["reliability.png"] = _png(plots.message("no model chosen"))
        images["roc.png"] = _png(plots.message("no model chosen"))

    trials = len(g.complete)
    if g.importances:
        having = {
            p: sum(p in t.params for t in g.complete) for v in g.importances.values() for p in v
        }
        images["importances.png"] = _png(plots.importances(g.importances, trials, having))
    else:
        images["importances.png"] = _png(plots.message(g.no_importances))
    captions["importances.png"] = (
        f"optuna.importance.get_param_importances per objective, on the {trials} complete "
        "trials (searched trials that ran to the end); a conditional parameter rests on those "
        "that drew it (the count beside its name)."
    )
    reference = None
    if g.complete:
        reference = nadir([g.study])
        ax = plot_history(g.study, reference)
        ax.set_title("Hypervolume after each trial (complete, feasible trials)")
        images["hypervolume.png"] = _png(ax.figure)
        point = ", ".join(f"{m} {v:.4g}" for (m, _), v in zip(objectives, reference, strict=True))
        captions["hypervolume.png"] = (
            "Reference point: per objective the worst value over the complete trials that "
            f"meet the constraints (nadir) = {point} (the objectives as Optuna holds them: "
            "fractions, not points; the volume is in the same units)."
        )
    else:
        images["hypervolume.png"] = _png(plots.message("no complete Optuna trial"))
    return images, captions, reference


def alpha_caption(rows: Sequence[TrialRow], alpha: dict[str, Any]) -> str:
    """The alpha plot's caption: how many of the searched trials with MOON on it draws,
    when not all (`alpha`: the schedules read, by `row_label`).

    >>> rows = [{"arm": "search", "optuna": i, "trial": f"t{i}", "moon.enabled": "True"}
    ...         for i in range(3)]
    >>> "2 of the 3 searched trials with MOON on are drawn" in alpha_caption(rows, {"#0 t0": [],
    ...                                                                          "#2 t2": []})
    True
    >>> alpha_caption(rows, {f"#{i} t{i}": [] for i in range(3)})
    "Alpha logged per epoch (the mean over the trial's seeds)."
    """
    caption = "Alpha logged per epoch (the mean over the trial's seeds)."
    moon_searched = [
        r for r in rows if r["arm"] == SEARCH_ARM and str(r.get("moon.enabled")).lower() == "true"
    ]
    drawn = sum(1 for r in moon_searched if row_label(r) in alpha)
    if drawn < len(moon_searched):
        caption += (
            f" {drawn} of the {len(moon_searched)} searched trials with MOON on are drawn: the "
            "chosen one, the front, then others spread over the sweep."
        )
    return caption


# -- text and HTML ---------------------------------------------------------------------------

# How the tables print a bounded figure's interval: clipped to where the figure lives.
CLIPPED = (
    "intervals of figures bounded to [0, 100] points (accuracy, ECE, AUROC, FPR95) are shown "
    "clipped to [0, 100], paired deltas to [-100, +100]; report.json keeps them unclipped"
)


def _pct(value: float) -> str:
    return "-" if not math.isfinite(value) else f"{100 * value:.2f}"


def _cell(interval: Interval, signed: bool = False, bound: bool = False) -> str:
    """A figure in points, `mean [low, high]`; `bound`: a bounded figure's interval clipped
    to [0, 100] (a paired delta's to [-100, 100]).

    >>> _cell(Interval(0.99, 0.97, 1.01, 2), bound=True), _cell(Interval(0.99, 0.97, 1.01, 2))
    ('99.00 [97.00, 100.00]', '99.00 [97.00, 101.00]')
    """
    mean = f"{100 * interval.mean:+.2f}" if signed else _pct(interval.mean)
    if not math.isfinite(interval.low):
        return mean
    low, high = POINTS * interval.low, POINTS * interval.high
    if bound:
        floor = -POINTS if signed else 0.0
        low, high = min(max(low, floor), POINTS), min(max(high, floor), POINTS)
    fmt = "{:+.2f}" if signed else "{:.2f}"
    return f"{mean} [{fmt.format(low)}, {fmt.format(high)}]"


def _interval(figures: dict[str, Any]) -> Interval:
    """The interval of a stored figure (a paired one also holds its p-values)."""
    return Interval(figures["mean"], figures["low"], figures["high"], figures["n"])


def _delta_label(summary: dict[str, Any], arm: str, labels: dict[str, str]) -> str:
    """`best searched - <arm>`, with the shared test-time setting where one was recorded."""
    setting = summary.get("delta_settings", {}).get(arm)
    return f"best searched - {labels.get(arm, arm)}" + (f" ({setting})" if setting else "")


def _delta_cell(figures: dict[str, Any], bound: bool) -> str:
    """A paired difference's cell: a * where Holm's correction over its table shows it."""
    return _cell(_interval(figures), True, bound) + (" *" if figures.get("shown") else "")


def _clips(interval: Interval, signed: bool = False) -> bool:
    """Whether a bounded figure's interval passes its bounds (and `_cell` clips it)."""
    floor = -1.0 if signed else 0.0
    return math.isfinite(interval.low) and (interval.low < floor or interval.high > 1.0)


def html_table(head: Sequence[str], body: Sequence[Sequence[str]], css: str = "") -> str:
    """An HTML table; no header row when `head` is empty."""
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    thead = f"<thead><tr>{cells}</tr></thead>" if head else ""
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in body
    )
    return f"<table class='{css}'>{thead}<tbody>{rows}</tbody></table>"


def comparison_markdown(summary: dict[str, Any], part: str = "test") -> str:
    """The comparison table and the paired deltas as markdown (README, terminal); a line
    under them says so when a bounded figure's interval is shown clipped (`CLIPPED`)."""
    metrics = summary["metrics"]
    table, deltas = summary["table"][part], summary["deltas"][part]
    labels = dict(ARMS)
    lines = [
        "| arm | " + " | ".join(metrics) + " |",
        "|---|" + "---:|" * len(metrics),
    ]
    clipped = False
    for arm, figures in table.items():
        cells = [_cell(_interval(figures[m]), bound=bounded(m)) for m in metrics]
        clipped |= any(bounded(m) and _clips(_interval(figures[m])) for m in metrics)
        lines.append(f"| {labels.get(arm, arm)} | " + " | ".join(cells) + " |")
    if deltas:
        lines += ["", "| paired delta (points) | " + " | ".join(metrics) + " |"]
        lines.append("|---|" + "---|" * len(metrics))
        for arm, figures in deltas.items():
            cells = [_delta_cell(figures[m], bounded(m)) for m in metrics]
            clipped |= any(bounded(m) and _clips(_interval(figures[m]), True) for m in metrics)
            lines.append(f"| {_delta_label(summary, arm, labels)} | " + " | ".join(cells) + " |")
    if clipped:
        lines += ["", f"({CLIPPED})"]
    return "\n".join(lines)


def _comparison_html(summary: dict[str, Any], part: str) -> str:
    metrics = summary["metrics"]
    labels = dict(ARMS)
    table, deltas = summary["table"][part], summary["deltas"][part]
    body = [
        [labels.get(arm, arm), *(_cell(_interval(figures[m]), bound=bounded(m)) for m in metrics)]
        for arm, figures in table.items()
    ]
    out = html_table(["arm", *metrics], body)
    if deltas:
        body = [
            [_delta_label(summary, arm, labels)]
            + [_delta_cell(figures[m], bounded(m)) for m in metrics]
            for arm, figures in deltas.items()
        ]
        out += html_table(["paired delta (points)", *metrics], body)
    return out


def _level_cell(figures: dict[str, Any] | None, signed: bool = False, bound: bool = False) -> str:
    """A per-level cell in points (a bounded figure's interval clipped, as `_cell`); a paired
    difference that Holm's correction over its table shows (`shown`) gets a *."""
    if figures is None:
        return "-"
    interval = Interval(figures["mean"], figures["low"], figures["high"], figures["n"])
    cell = _cell(interval, signed, bound)
    if signed and figures.get("shown"):
        cell += " *"
    return cell


LEVEL_ARMS_TEXT = {SEARCHED: "the best searched trial at this density", **DESCRIPTIONS}


def levels_html(levels: Sequence[dict[str, Any]], part: str = "test") -> str:
    """One table per density level (`sweep.levels.Level.as_dict()` dicts): the level's best
    searched trial and each arm trained there, then the paired per-seed deltas."""
    out = []
    val = part == "val"
    for lv in levels:
        metrics: list[str] = []
        for arm in lv["arms"].values():
            shown = [m for m in arm["figures"] if m.startswith("val/") == val]
            metrics += [m for m in shown if m not in metrics]
        seeds = max((len(a["seeds"]) for a in lv["arms"].values()), default=0)
        body = []
        for name, arm in lv["arms"].items():
            trial = f"optuna #{arm['optuna']}" if arm["optuna"] >= 0 else arm["trial"]
            cells = [_level_cell(arm["figures"].get(m), bound=bounded(m)) for m in metrics]
            body.append([name, trial, arm.get("variant", ""), *cells])
        settings = {k: c["setting"] for k, c in lv.get("contrasts", {}).items()}
        for pair, figures in lv["deltas"].items():
            cells = [_level_cell(figures.get(m), True, bounded(m)) for m in metrics]
            body.append([pair, "paired", settings.get(pair, ""), *cells])
        note = html.escape(lv["note"]) + "." if lv["note"] else "every arm present."
        searched = lv.get("searched_trials", 0)
        where = html.escape(lv.get("seeds_text", ""))
        ran = (
            f" {searched} searched trial{'s' if searched != 1 else ''} ran here;"
            if searched
            else ""
        )
        verdicts = "".join(f"<li>{html.escape(v)}</li>" for v in lv.get("verdicts", []))
        out.append(
            f"<h3>density {lv['density']:g}</h3><p class=note>{seeds} paired seeds ({where});"
            f"{ran} {note}</p>"
            + html_table(["arm", "trial", "test-time", *metrics], body, css="level")
            + (f"<ul class=verdicts>{verdicts}</ul>" if verdicts and not val else "")
        )
    return "".join(out)


CSS = """
body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:0.8em 0;font-size:0.9em}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right;white-space:nowrap}
table.kv td{text-align:left;white-space:normal}
td:first-child,th:first-child{text-align:left}
figure{margin:1em 0}img{max-width:100%;border:1px solid #eee}
.note{color:#555;font-size:0.9em}code{background:#f4f4f4;padding:0 3px}
"""


def html_figure(images: dict[str, bytes], name: str, caption: str) -> str:
    """A PNG of `images` embedded as a data URI, with its caption."""
    data = base64.b64encode(images[name]).decode()
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(name)}">'
        f"<figcaption class=note>{html.escape(caption)}</figcaption></figure>"
    )


def settings_html(summary: dict[str, Any]) -> str:
    """The chosen trial's settings (`summary["chosen_settings"]`, `sweep.records.run_settings`)
    as a table in the `--set` syntax of `moonsweep train`, the test-time picks marked."""
    settings = summary.get("chosen_settings")
    if not settings:
        return ""
    picked = set(summary.get("chosen_picked") or [])
    test_time = summary.get("chosen_test_time") or {}
    how = f"picked on validation ({test_time['rule']})" if test_time.get("rule") else "picked"
    body = [[k, setting_text(v), how if k in picked else ""] for k, v in settings.items()]
    kept = ""
    if test_time.get("pick"):
        kept = (
            f" Its test-time variant {html.escape(test_time['pick'])} was picked on the "
            "validation parts after training, among the space's grid."
        )
    return (
        "<p class=note>Every setting its runs were trained and evaluated with: those that "
        "apply (engine.config.effective_settings; no MOON alpha without MOON, no DICE "
        "percentile for another score, ...), as <code>--set</code> values; "
        f"<code>seed</code> lists the seeds trained.{kept}</p>"
        + html_table(["setting", "value", ""], body, css="kv settings")
    )


def _row_cell(row: Mapping[str, Any], column: str) -> str:
    """A trial table's cell: a bounded figure in points, others as `format_value`."""
    value = row.get(column)
    if bounded(column) and isinstance(value, int | float) and not isinstance(value, bool):
        return _pct(float(value))
    return format_value(value)


def render_html(summary: dict[str, Any], images: dict[str, bytes], captions: dict[str, str]) -> str:
    esc = html.escape
    chosen = summary["chosen"]
    trials = summary["trials"]
    objectives = ", ".join(f"{m} ({d})" for m, d in summary["objectives"])
    header = html_table(
        [],
        [
            ["sweep", summary["name"]],
            ["status", summary["status"]],
            ["space", summary["space"]],
            ["objectives", objectives],
            ["seeds", ", ".join(map(str, summary["seeds"]))],
            ["trials", ", ".join(f"{n} {s}" for s, n in summary["trial_states"].items())],
            ["MLflow", f"{summary['tracking_uri']} (experiment moonsweep-{summary['name']})"],
            ["generated", summary["generated"]],
        ],
        css="kv",
    )
    parts = [
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        f"<title>moonsweep report: {esc(summary['name'])}</title><style>{CSS}</style></head><body>",
        f"<h1>moonsweep report: {esc(summary['name'])}</h1>",
        header,
        "<h2>The chosen model</h2>",
    ]
    if chosen:
        parts.append(
            html_table(
                ["trial", "arm", "level", "Optuna #", "MLflow run", "achieved density"],
                [
                    [
                        chosen["trial"],
                        chosen["arm"],
                        format_value(chosen.get("level")),
                        chosen["optuna"],
                        chosen["mlflow_run_id"],
                        f"{chosen.get('density', float('nan')):.4g}",
                    ]
                ],
            )
        )
        parts.append(settings_html(summary))
    parts.append("<ul>" + "".join(f"<li>{esc(r)}</li>" for r in summary["reasons"]) + "</ul>")
    parts.append(
        "<p class=note>Selection uses only the validation parts (ID and OOD); the test parts "
        "below are held out and reported separately.</p>"
    )
    level = (chosen or {}).get("level")
    at = "" if level is None else f", at its density level {level:g}"
    parts.append(f"<h2>The chosen model against the arms{at}</h2>")
    parts.append(
        f"<p class=note>Points (x100); mean and {int(CONFIDENCE * 100)}% t-interval over the "
        "seeds (each arm trained on the same seeds and split, at the test-time variant it "
        "picked on validation); paired deltas are per seed, both sides at one shared "
        f"test-time setting (in the row's label); * : shown after {HOLM} over the table; "
        f"{CLIPPED}.</p>"
    )
    parts.append("<h3>Test parts</h3>" + _comparison_html(summary, "test"))
    parts.append("<h3>Validation parts (what selection saw)</h3>")
    parts.append(_comparison_html(summary, "val"))
    parts.append("<h2>At equal density</h2>")
    if summary.get("levels"):
        family = max(
            (
                f.get("holm_family", 0)
                for lv in summary["levels"]
                for d in lv["deltas"].values()
                for m, f in d.items()
                if not m.startswith("val/")
            ),
            default=0,
        )
        parts.append(
            "<p class=note>Per density level of the space, the best searched trial there "
            "(meeting the space's constraints, best first objective on validation) beside the "
            "arms trained at exactly that density with the same sparse method, seeds and split. "
            f"Points (x100); mean and {int(CONFIDENCE * 100)}% t-interval over the seeds; "
            "each row at the test-time variant (voting mode / OOD score) its rule picked on "
            "validation, and MOON as published (msp) as its own row. Each paired contrast takes "
            "both trainings at one shared test-time setting, picked on validation (its column "
            "says which, or that it is not shared); picked - msp is the score choice on the "
            f"same trained models. * : shown after {HOLM} over the {family} paired comparisons "
            f"of the test table (the validation table is its own family); {CLIPPED}.</p>"
        )
        parts.append(html_figure(images, "levels.png", captions.get("levels.png", "")))
        parts.append(html_table([], [[k, v] for k, v in LEVEL_ARMS_TEXT.items()], css="kv"))
        parts.append("<h3>Test parts</h3>" + levels_html(summary["levels"], "test"))
        parts.append(
            "<details><summary>Validation parts (what chose the best searched trial)</summary>"
            + levels_html(summary["levels"], "val")
            + "</details>"
        )
    else:
        parts.append(
            "<p class=note>The sweep's space declares no density levels, so there is no "
            "comparison at equal density (add <code>levels: [...]</code> to the space).</p>"
        )
    sections = [
        ("Pareto front", "pareto.png"),
        ("Metrics against density, per sparse method", "density.png"),
        ("MOON's alpha: auto-tuned against searched", "alpha.png"),
        ("The chosen model: reliability", "reliability.png"),
        ("The chosen model: ROC curves", "roc.png"),
        ("Optuna parameter importances", "importances.png"),
        ("Hypervolume against trial count", "hypervolume.png"),
    ]
    for title, name in sections:
        parts.append(f"<h2>{esc(title)}</h2>" + html_figure(images, name, captions.get(name, "")))
    columns = ["trial", "arm", "level", "state", "optuna", "sparsity.method", "density"]
    columns += ["moon.alpha_mode"]
    columns += ["val/accuracy", "val/auroc_near", "val/ece", "accuracy", "auroc_near", "ece"]
    chosen_trial = (summary.get("chosen") or {}).get("trial")
    leading = set(summary.get("front", [])) | ({chosen_trial} if chosen_trial else set())
    shown, rest = rows_to_show(trials, leading)
    parts.append("<h2>Trials</h2>" if rest else "<h2>All trials</h2>")
    shown_note = "Figures in points (x100), density a fraction"
    if rest:
        shown_note += (
            f"; the baselines, the chosen trial and the front; {esc(hidden_note(rest))} are in "
            "report.json (as fractions)"
        )
    parts.append(f"<p class=note>{shown_note}.</p>")
    parts.append(html_table(columns, [[_row_cell(r, c) for c in columns] for r in shown]))
    parts.append("</body></html>")
    return "\n".join(parts)
