"""`moonsweep report NAME`: one self-contained HTML page (plus its PNGs) about a sweep.

Written to `<sweep folder>/report/` (`report.html` with every figure embedded as a data URI,
the same figures as PNG files, and `report.json` with the tables' numbers) and logged to the
sweep's parent MLflow run under `report/`.

What it shows: the chosen model (`sweep.selection.select`, validation figures only) with
every setting it was trained and evaluated with (`sweep.records.run_settings`: the settings
that apply, its test-time pick included) and the Pareto front; AUROC, ECE and accuracy
against density per sparse method; MOON's alpha per epoch of the auto-tuned arm against the
searched arms; the chosen model beside the arms (moon_auto, sparse, sparse+voting, dense;
those of its density level) with mean and 95% t-interval over seeds and paired deltas (test
parts; validation beside); at equal density, per level of the space, the best searched trial
against the arms trained there (tables and a trade-off plot against density); the chosen
model's reliability diagram and ROC curves, re-evaluated from its checkpoint; Optuna's
parameter importances; the hypervolume after each trial. Figures are in points (x100), a
bounded figure's interval shown clipped to [0, 100].

The numbers are gathered by `sweep.gather`, drawn and written out by `sweep.render`; this
module puts the two together, writes the folder and logs it to MLflow.

Example:
    >>> from sweep.state import load_state  # doctest: +SKIP
    >>> state, folder = load_state("demo")  # doctest: +SKIP
    >>> report = build_report(state, folder)  # doctest: +SKIP
    >>> report.html  # doctest: +SKIP
    PosixPath('moonsweep-runs/demo/report/report.html')
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.checkpoint import save_json
from sweep.gather import TABLE_METRICS, Gathered, gather
from sweep.records import RecordedSettings, run_settings
from sweep.render import figures, render_html
from sweep.state import SweepState
from sweep.stores import mask_url, mlflow_client

REPORT_DIR = "report"
Progress = Callable[[str], None]
# The columns of the summary's trial rows (and of the chosen model's).
SUMMARY_COLUMNS = (
    "trial",
    "arm",
    "level",  # the density level it is compared at (None: no levels, or dense)
    "state",
    "optuna",
    "sparsity.method",
    "density",
    "moon.alpha_mode",
    "val/accuracy",
    "val/auroc_near",
    "val/ece",
    "accuracy",
    "auroc_near",
    "ece",
    "mlflow_run_id",
)


@dataclass
class Report:
    folder: Path
    html: Path
    images: list[Path]
    summary: dict[str, Any]
    logged_to: str | None = None  # the MLflow run the report was logged to
    notes: list[str] = field(default_factory=list)


def build_report(
    state: SweepState,
    folder: Path,
    *,
    log_to_mlflow: bool = True,
    on_progress: Progress | None = None,
) -> Report:
    """Gather, plot, write `<folder>/report/` and log it to the parent MLflow run.

    Raises ConfigError when the sweep has no finished trial."""
    progress = on_progress or (lambda _: None)
    gathered = gather(state, progress)
    images, captions, reference = figures(gathered)
    chosen = gathered.chosen
    settings = run_settings(state, chosen["mlflow_run_id"]) if chosen is not None else None
    summary = summarize(gathered, reference, settings)
    progress("writing the report")
    out = _write(folder, summary, images, captions)
    report = Report(out, out / "report.html", sorted(out.glob("*.png")), summary)
    report.notes = gathered.notes
    if log_to_mlflow:
        client = mlflow_client(state.tracking_uri)
        client.log_artifacts(state.parent_run_id, str(out), artifact_path=REPORT_DIR)
        report.logged_to = state.parent_run_id
    return report


def summarize(
    g: Gathered, reference: list[float] | None, settings: RecordedSettings | None = None
) -> dict[str, Any]:
    """The report's numbers as `report.json` holds them; `settings` the chosen trial's."""
    state, chosen = g.state, g.chosen
    trial_states: dict[str, int] = {}
    for row in g.all_rows:
        trial_states[row["state"]] = trial_states.get(row["state"], 0) + 1
    return {
        "name": state.name,
        "status": state.current_status(),
        "space": state.space_source,
        "tracking_uri": mask_url(state.tracking_uri),  # reports get shared: no credentials
        "generated": time.strftime("%Y-%m-%d %H:%M:%S"),
        "objectives": g.objectives,
        "seeds": list(state.space["seeds"]),
        "trial_states": trial_states,
        "chosen": {k: chosen.get(k) for k in SUMMARY_COLUMNS} if chosen else None,
        # Every setting the chosen trial was trained and evaluated with; which of them its
        # test-time grid picked on validation, and the variant and rule.
        "chosen_settings": settings.settings if settings else None,
        "chosen_picked": settings.picked if settings else [],
        "chosen_test_time": (
            {"pick": settings.pick, "rule": settings.rule} if settings and settings.pick else None
        ),
        "arms": {k: r["mlflow_run_id"] for k, r in g.arm_rows.items() if r is not None},
        "reasons": g.reasons,
        "metrics": list(TABLE_METRICS),
        "table": g.table,
        "deltas": g.deltas,
        "delta_settings": g.delta_settings,  # arm -> the shared test-time setting of its delta
        "levels": [lv.as_dict() for lv in g.levels],
        "importances": g.importances,
        "hypervolume_reference": reference,
        "trials": [{k: r.get(k) for k in SUMMARY_COLUMNS} for r in g.all_rows],
        # Ray trial ids of the front over every objective (what a long table keeps).
        "front": [r["trial"] for r in g.selection.pareto] if g.selection else [],
        **({"chosen_reevaluated": g.reevaluated.figures()} if g.reevaluated else {}),
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
