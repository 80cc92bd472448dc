"""`moonsweep report NAME`: one self-contained HTML page (plus its PNGs) about a sweep.

Written to `<sweep folder>/report/` (`report.html` with every figure embedded as a data URI,
the same figures as PNG files, and `report.json` with the tables' numbers) and logged to the
sweep's parent MLflow run under `report/`.

What it shows: the chosen model (`sweep.selection.select`, validation figures only) and the
Pareto front; AUROC, ECE and accuracy against density per sparse method; MOON's alpha per
epoch of the auto-tuned arm against the searched arms; the arms "auto-tuned MOON / best
searched / no MOON / dense" with mean and 95% t-interval over seeds and paired deltas (test
parts; validation beside); the chosen model's reliability diagram and ROC curves, re-evaluated
from its checkpoint; Optuna's parameter importances; the hypervolume after each trial.

Example:
    >>> from sweep.orchestrator import load_state  # doctest: +SKIP
    >>> state, folder = load_state("demo")  # doctest: +SKIP
    >>> report = build_report(state, folder)  # doctest: +SKIP
    >>> report.html  # doctest: +SKIP
    PosixPath('moonsweep-runs/demo/report/report.html')
"""

from __future__ import annotations

import base64
import html
import math
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.checkpoint import load_checkpoint, save_json
from engine.config import ConfigError
from sweep.orchestrator import SweepState
from sweep.stores import mask_url

# One progress bar per downloaded artifact would bury the report's own progress lines.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

Row = dict[str, Any]
REPORT_DIR = "report"
# The comparison table's figures, as the engine names them on the test parts.
TABLE_METRICS = ("accuracy", "auroc_near", "auroc_far", "ece", "fpr95_near")
# (key, label) of the compared arms: baselines by arm name, "chosen" the selected trial.
ARMS = (
    ("moon_auto", "auto-tuned MOON"),
    ("chosen", "best searched"),
    ("no_moon", "no MOON"),
    ("dense", "dense"),
)
# The 2-D front the Pareto plot draws (validation figures, as selection sees them).
PARETO_2D = [("val/accuracy", "maximize"), ("val/auroc_near", "maximize")]
CONFIDENCE = 0.95
Progress = Callable[[str], None]


@dataclass
class Interval:
    """Mean over seeds and its two-sided t-interval (NaN bounds with a single seed)."""

    mean: float
    low: float
    high: float
    n: int

    def as_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "low": self.low, "high": self.high, "n": self.n}


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """Student-t interval of the mean (scipy.stats.t.interval with the standard error)."""
    from scipy import stats

    data = np.asarray(values, dtype=float)
    mean = float(data.mean())
    if data.size < 2:
        return Interval(mean, math.nan, math.nan, int(data.size))
    sem = float(stats.sem(data))
    if sem == 0.0:
        return Interval(mean, mean, mean, int(data.size))
    low, high = stats.t.interval(confidence, data.size - 1, loc=mean, scale=sem)
    return Interval(mean, float(low), float(high), int(data.size))


@dataclass
class Report:
    folder: Path
    html: Path
    images: list[Path]
    summary: dict[str, Any]
    logged_to: str | None = None  # the MLflow run the report was logged to
    notes: list[str] = field(default_factory=list)


# -- gathering ------------------------------------------------------------------------------


def _select(state: SweepState) -> tuple[Any | None, list[str]]:
    """`sweep.selection.select` with the space's constraints; without them when no trial
    meets them (the reasons say so); None when nothing can be chosen."""
    from sweep.selection import select

    try:
        return select(state), []
    except ConfigError as exc:
        first = str(exc)
    try:
        selection = select(state, sweep_constraints_too=False)
    except ConfigError as exc:
        return None, [first, str(exc)]
    return selection, [f"{first}; chosen without the space's constraints instead"]


def arm_table(
    per_arm: dict[str, dict[int, dict[str, float]]], metrics: Sequence[str]
) -> tuple[dict[str, dict[str, Interval]], dict[str, dict[str, Interval]]]:
    """Mean and t-interval per arm and metric, and the paired (same seed) deltas of the
    chosen arm minus each other arm."""
    table = {
        arm: {m: t_interval([seeds[s][m] for s in sorted(seeds)]) for m in metrics}
        for arm, seeds in per_arm.items()
    }
    deltas: dict[str, dict[str, Interval]] = {}
    chosen = per_arm.get("chosen")
    for arm, seeds in per_arm.items():
        if chosen is None or arm == "chosen":
            continue
        shared = sorted(set(chosen) & set(seeds))
        if shared:
            deltas[arm] = {
                m: t_interval([chosen[s][m] - seeds[s][m] for s in shared]) for m in metrics
            }
    return table, deltas


def _alpha_histories(state: SweepState, rows: Sequence[Row]) -> dict[str, list[tuple[int, float]]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(state.tracking_uri)
    out = {}
    for row in rows:
        if str(row.get("moon.enabled")).lower() != "true":
            continue
        history = client.get_metric_history(row["mlflow_run_id"], "alpha")
        out[row_label(row)] = sorted((int(m.step), float(m.value)) for m in history)
    return out


def row_label(row: Row) -> str:
    if row["arm"] != "search":
        return row["arm"]
    return f"#{row['optuna']} {row['trial']}"


def _study(state: SweepState) -> Any | None:
    import optuna

    from sweep.search import make_storage, ran_to_end

    try:
        study = optuna.load_study(study_name=state.name, storage=make_storage(state.storage_url))
    except KeyError:  # the sweep never asked Optuna for a trial
        return None
    return ran_to_end(study)  # early-stopped trials hold mid-training figures: not here


def param_importances(study: Any, names: Sequence[str]) -> dict[str, dict[str, float]]:
    """Optuna's importances (its default evaluator, PED-ANOVA) per objective, keyed by the
    objectives' `names`; a maximised objective is negated (the evaluator takes lower as
    better)."""
    import optuna
    from optuna.study import StudyDirection

    out = {}
    for i, direction in enumerate(study.directions):
        sign = -1.0 if direction == StudyDirection.MAXIMIZE else 1.0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out[names[i]] = optuna.importance.get_param_importances(
                study, target=lambda t, i=i, sign=sign: sign * t.values[i]
            )
    return out


# -- the chosen model, re-evaluated ---------------------------------------------------------


@dataclass
class Predictions:
    """One part (val or test) of the chosen model's outputs on the suite."""

    confidence: np.ndarray  # max probability over all outputs, ID samples
    correct: np.ndarray  # argmax over all outputs equals the label
    ece: float
    roc: dict[str, tuple[np.ndarray, np.ndarray]]  # OOD set -> (labels, scores), ID = 1
    auroc: dict[str, float]


def predictions(payload: dict[str, Any]) -> dict[str, Predictions]:
    """Re-evaluate a saved model (a `final/model-seed<s>.pt` payload) on the validation and
    test parts, with the config's primary OOD score."""
    from sklearn.metrics import roc_auc_score

    from engine.config import validate_config
    from engine.data import load_suite
    from engine.evaluate import score_inputs
    from engine.metrics import classification_metrics
    from engine.predict import Predictor
    from engine.scores import compute_score, mean_probs

    suite = load_suite(validate_config(payload["config"]).data)
    predictor = Predictor.from_checkpoint(payload, suite)
    cfg, models, dice = predictor.config, predictor.models, predictor.dice
    k, unknown, score = suite.num_classes, cfg.moon.enabled, cfg.eval.primary
    out = {}
    for part in ("val", "test"):
        split = getattr(suite, part)
        id_inputs = score_inputs(models, split.x, k, unknown, dice)
        probs = mean_probs(id_inputs)
        cls = classification_metrics(probs, split.y, k, unknown, cfg.eval.ece_bins)
        id_scores = compute_score(score, id_inputs).numpy()
        roc, auroc = {}, {}
        for ood in suite.ood:
            ood_inputs = score_inputs(models, getattr(ood, part), k, unknown, dice)
            ood_scores = compute_score(score, ood_inputs)
            labels = np.r_[np.ones(len(id_scores)), np.zeros(len(ood_scores))]
            scores = np.r_[id_scores, ood_scores.numpy()]
            roc[ood.name] = (labels, scores)
            auroc[ood.name] = float(roc_auc_score(labels, scores))
        out[part] = Predictions(
            confidence=probs.max(dim=1).values.numpy(),
            correct=(probs.argmax(dim=1) == split.y).numpy(),
            ece=cls["ece"],
            roc=roc,
            auroc=auroc,
        )
    return out


def _chosen_payload(state: SweepState, row: Row) -> tuple[int, dict[str, Any]]:
    from mlflow.tracking import MlflowClient

    seed = int(state.space["seeds"][0])
    client = MlflowClient(state.tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        local = client.download_artifacts(row["mlflow_run_id"], f"final/model-seed{seed}.pt", tmp)
        return seed, load_checkpoint(local)


# -- HTML -------------------------------------------------------------------------------------


def _pct(value: float) -> str:
    return "-" if not math.isfinite(value) else f"{100 * value:.2f}"


def _cell(interval: Interval, signed: bool = False) -> str:
    mean = f"{100 * interval.mean:+.2f}" if signed else _pct(interval.mean)
    if not math.isfinite(interval.low):
        return mean
    fmt = "{:+.2f}" if signed else "{:.2f}"
    return f"{mean} [{fmt.format(100 * interval.low)}, {fmt.format(100 * interval.high)}]"


def _table(head: Sequence[str], body: Sequence[Sequence[str]], css: str = "") -> str:
    """An HTML table; no header row when `head` is empty."""
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    thead = f"<thead><tr>{cells}</tr></thead>" if head else ""
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in body
    )
    return f"<table class='{css}'>{thead}<tbody>{rows}</tbody></table>"


def comparison_markdown(summary: dict[str, Any], part: str = "test") -> str:
    """The comparison table and the paired deltas as markdown (README, terminal)."""
    metrics = summary["metrics"]
    table, deltas = summary["table"][part], summary["deltas"][part]
    labels = dict(ARMS)
    lines = [
        "| arm | " + " | ".join(metrics) + " |",
        "|---|" + "---:|" * len(metrics),
    ]
    for arm, figures in table.items():
        cells = [_cell(Interval(**figures[m])) for m in metrics]
        lines.append(f"| {labels.get(arm, arm)} | " + " | ".join(cells) + " |")
    if deltas:
        lines += ["", "| paired delta (points) | " + " | ".join(metrics) + " |"]
        lines.append("|---|" + "---|" * len(metrics))
        for arm, figures in deltas.items():
            cells = [_cell(Interval(**figures[m]), signed=True) for m in metrics]
            lines.append(f"| best searched - {labels.get(arm, arm)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _comparison_html(summary: dict[str, Any], part: str) -> str:
    metrics = summary["metrics"]
    labels = dict(ARMS)
    table, deltas = summary["table"][part], summary["deltas"][part]
    body = [
        [labels.get(arm, arm), *(_cell(Interval(**figures[m])) for m in metrics)]
        for arm, figures in table.items()
    ]
    out = _table(["arm", *metrics], body)
    if deltas:
        body = [
            [f"best searched - {labels.get(arm, arm)}"]
            + [_cell(Interval(**figures[m]), signed=True) for m in metrics]
            for arm, figures in deltas.items()
        ]
        out += _table(["paired delta (points)", *metrics], body)
    return out


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


def _figure(images: dict[str, bytes], name: str, caption: str) -> str:
    data = base64.b64encode(images[name]).decode()
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(name)}">'
        f"<figcaption class=note>{html.escape(caption)}</figcaption></figure>"
    )


def render_html(summary: dict[str, Any], images: dict[str, bytes], captions: dict[str, str]) -> str:
    esc = html.escape
    chosen = summary["chosen"]
    trials = summary["trials"]
    objectives = ", ".join(f"{m} ({d})" for m, d in summary["objectives"])
    header = _table(
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
            _table(
                ["trial", "arm", "Optuna #", "MLflow run", "method", "density", "alpha mode"],
                [
                    [
                        chosen["trial"],
                        chosen["arm"],
                        chosen["optuna"],
                        chosen["mlflow_run_id"],
                        chosen.get("sparsity.method"),
                        f"{chosen.get('density', float('nan')):.4g}",
                        chosen.get("moon.alpha_mode"),
                    ]
                ],
            )
        )
    parts.append("<ul>" + "".join(f"<li>{esc(r)}</li>" for r in summary["reasons"]) + "</ul>")
    parts.append(
        "<p class=note>Selection uses only the validation parts (ID and OOD); the test parts "
        "below are held out and reported separately.</p>"
    )
    parts.append("<h2>Auto-tuned MOON / best searched / no MOON / dense</h2>")
    parts.append(
        f"<p class=note>Percent; mean and {int(CONFIDENCE * 100)}% t-interval over the seeds "
        "(each arm trained on the same seeds and split); paired deltas are per seed.</p>"
    )
    parts.append("<h3>Test parts</h3>" + _comparison_html(summary, "test"))
    parts.append("<h3>Validation parts (what selection saw)</h3>")
    parts.append(_comparison_html(summary, "val"))
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
        parts.append(f"<h2>{esc(title)}</h2>" + _figure(images, name, captions.get(name, "")))
    parts.append("<h2>All trials</h2>")
    columns = ["trial", "arm", "state", "optuna", "sparsity.method", "density", "moon.alpha_mode"]
    columns += ["val/accuracy", "val/auroc_near", "val/ece", "accuracy", "auroc_near", "ece"]
    parts.append(_table(columns, [[_short(r.get(c)) for c in columns] for r in trials]))
    parts.append("</body></html>")
    return "\n".join(parts)


def _short(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


# -- building ---------------------------------------------------------------------------------


def _png(fig: Any) -> bytes:
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def build_report(
    state: SweepState,
    folder: Path,
    *,
    log_to_mlflow: bool = True,
    on_progress: Progress | None = None,
) -> Report:
    """Gather, plot, write `<folder>/report/` and log it to the parent MLflow run.

    Raises ConfigError when the sweep has no finished trial."""
    from sweep import plots
    from sweep.hypervolume import nadir, plot_history
    from sweep.selection import pareto_front
    from sweep.status import trial_rows

    def progress(message: str) -> None:
        if on_progress is not None:
            on_progress(message)

    all_rows = trial_rows(state, all_metrics=True)
    rows = [r for r in all_rows if r["state"] == "done"]
    if not rows:
        raise ConfigError(f"sweep {state.name} has no finished trial yet; nothing to report")
    progress(f"{len(rows)} finished trials of {len(all_rows)}; choosing a model")
    selection, notes = _select(state)
    chosen = selection.chosen if selection is not None else None
    reasons = (selection.reasons if selection is not None else []) + notes

    from sweep.replay import seed_metrics  # imports the engine's training: only when reporting

    progress("per-seed figures of the compared arms")
    by_arm = {r["arm"]: r for r in rows if r["arm"] != "search"}
    arm_rows = {key: by_arm.get(key) for key, _ in ARMS}
    arm_rows["chosen"] = chosen
    per_arm = {
        k: seed_metrics(state, r["mlflow_run_id"]) for k, r in arm_rows.items() if r is not None
    }
    table, deltas = {}, {}
    for part, prefix in (("test", ""), ("val", "val/")):
        names = [prefix + m for m in TABLE_METRICS]
        stats, paired = arm_table(per_arm, names)
        table[part] = _plain(stats, prefix)
        deltas[part] = _plain(paired, prefix)

    images: dict[str, bytes] = {}
    captions: dict[str, str] = {}
    objectives = [(o["metric"], o["direction"]) for o in state.space["objectives"]]
    searched = [r for r in rows if r["arm"] == "search"]
    front_2d = pareto_front(searched, PARETO_2D)
    images["pareto.png"] = _png(
        plots.pareto_front_figure(rows, front_2d, selection.pareto if selection else [], chosen)
    )
    captions["pareto.png"] = (
        f"{len(front_2d)} searched trials on the accuracy/auroc_near front (validation, dashed); "
        f"{len(selection.pareto) if selection else 0} on the front over all objectives "
        f"({', '.join(m for m, _ in objectives)}; black edge)."
    )
    images["density.png"] = _png(plots.metrics_vs_density(rows, chosen))
    captions["density.png"] = "Every finished trial; density is the achieved one (log axis)."

    progress("alpha schedules")
    histories = _alpha_histories(state, rows)
    modes = {row_label(r): str(r.get("moon.alpha_mode")) for r in rows}
    images["alpha.png"] = _png(
        plots.alpha_schedules(
            histories,
            modes,
            "moon_auto" if "moon_auto" in by_arm else None,
            row_label(chosen) if chosen else None,
        )
    )
    captions["alpha.png"] = "Alpha logged per epoch (the mean over the trial's seeds)."

    figures: dict[str, Any] = {}
    if chosen is not None:
        seed, payload = _chosen_payload(state, chosen)
        progress(f"re-evaluating the chosen model (seed {seed})")
        preds = predictions(payload)
        bins = int(payload["config"]["eval"]["ece_bins"])
        parts = {
            "validation ID": (preds["val"].confidence, preds["val"].correct, preds["val"].ece),
            "test ID": (preds["test"].confidence, preds["test"].correct, preds["test"].ece),
        }
        images["reliability.png"] = _png(plots.reliability(parts, bins))
        images["roc.png"] = _png(
            plots.roc_curves({"validation": preds["val"].roc, "test": preds["test"].roc})
        )
        caption = (
            f"Chosen trial {row_label(chosen)}, checkpoint of seed {seed}, re-evaluated; "
            f"score {payload['config']['eval']['primary']}."
        )
        captions["reliability.png"] = captions["roc.png"] = caption
        figures["chosen_reevaluated"] = {
            "seed": seed,
            "ece": {p: preds[p].ece for p in preds},
            "accuracy": {p: float(preds[p].correct.mean()) for p in preds},
            "auroc": {p: preds[p].auroc for p in preds},
        }
    else:
        images["reliability.png"] = _png(plots.message("no model chosen"))
        images["roc.png"] = _png(plots.message("no model chosen"))

    progress("Optuna: importances and hypervolume")
    study = _study(state)
    complete = [t for t in study.trials if t.state.name == "COMPLETE"] if study else []
    importances: dict[str, dict[str, float]] = {}
    why_not = "fewer than 2 complete Optuna trials"
    if len(complete) >= 2:
        try:
            importances = param_importances(study, [m for m, _ in objectives])
        except (ValueError, RuntimeError) as exc:  # e.g. no parameter varied
            why_not = f"no importances: {exc}"
    if importances:
        images["importances.png"] = _png(plots.importances(importances))
    else:
        images["importances.png"] = _png(plots.message(why_not))
    captions["importances.png"] = "optuna.importance.get_param_importances per objective."
    reference = None
    if complete:
        reference = nadir([study])
        ax = plot_history(study, reference)
        ax.set_title("Hypervolume after each trial (complete, feasible trials)")
        images["hypervolume.png"] = _png(ax.figure)
        point = ", ".join(f"{m} {v:.4g}" for (m, _), v in zip(objectives, reference, strict=True))
        captions["hypervolume.png"] = (
            "Reference point: per objective the worst value over the complete trials that "
            f"meet the constraints (nadir) = {point}."
        )
    else:
        images["hypervolume.png"] = _png(plots.message("no complete Optuna trial"))

    trial_states: dict[str, int] = {}
    for row in all_rows:
        trial_states[row["state"]] = trial_states.get(row["state"], 0) + 1
    keep = ("trial", "arm", "state", "optuna", "sparsity.method", "density", "moon.alpha_mode")
    keep += ("val/accuracy", "val/auroc_near", "val/ece", "accuracy", "auroc_near", "ece")
    keep += ("mlflow_run_id",)
    summary = {
        "name": state.name,
        "status": state.status,
        "space": state.space_source,
        "tracking_uri": mask_url(state.tracking_uri),  # reports get shared: no credentials
        "generated": time.strftime("%Y-%m-%d %H:%M:%S"),
        "objectives": objectives,
        "seeds": list(state.space["seeds"]),
        "trial_states": trial_states,
        "chosen": {k: chosen.get(k) for k in keep} if chosen else None,
        "arms": {k: r["mlflow_run_id"] for k, r in arm_rows.items() if r is not None},
        "reasons": reasons,
        "metrics": list(TABLE_METRICS),
        "table": table,
        "deltas": deltas,
        "importances": importances,
        "hypervolume_reference": reference,
        "trials": [{k: r.get(k) for k in keep} for r in all_rows],
        **figures,
    }
    progress("writing the report")
    out = _write(folder, summary, images, captions)
    report = Report(out, out / "report.html", sorted(out.glob("*.png")), summary, notes=notes)
    if log_to_mlflow:
        from mlflow.tracking import MlflowClient

        MlflowClient(state.tracking_uri).log_artifacts(
            state.parent_run_id, str(out), artifact_path=REPORT_DIR
        )
        report.logged_to = state.parent_run_id
    return report


def _plain(stats: dict[str, dict[str, Interval]], prefix: str) -> dict[str, dict[str, Any]]:
    return {
        arm: {m.removeprefix(prefix): v.as_dict() for m, v in figures.items()}
        for arm, figures in stats.items()
    }


def _write(
    folder: Path, summary: dict[str, Any], images: dict[str, bytes], captions: dict[str, str]
) -> Path:
    """Write into a fresh folder beside the old report, then swap: never half a report."""
    out = folder / REPORT_DIR
    tmp = Path(tempfile.mkdtemp(dir=folder, prefix=".report-"))
    try:
        for name, data in images.items():
            (tmp / name).write_bytes(data)
        save_json(tmp / "report.json", summary)
        (tmp / "report.html").write_text(render_html(summary, images, captions))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
