"""What a sweep holds: one row per trial (from MLflow, linked to Optuna and Ray), and the
leading trials (Optuna's Pareto front, feasible trials only)."""

from __future__ import annotations

from typing import Any

from sweep.orchestrator import SweepState
from sweep.tracking import PARENT_TAG

KEY_PARAMS = (
    "sparsity.method",
    "sparsity.density",
    "moon.enabled",
    "moon.alpha_mode",
    "moon.init_factor",
    "moon.alpha_final",
    "moon.alpha",
    "voting.mode",
)
KEY_METRICS = ("val/accuracy", "val/auroc_near", "val/auroc_far", "val/ece", "density")


def trial_rows(state: SweepState, all_metrics: bool = False) -> list[dict[str, Any]]:
    """One row per trial (MLflow child run); `all_metrics` adds every final metric, not
    only KEY_METRICS (as MLflow names them: `val/auroc_near`, `std/val/accuracy`, ...)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(state.tracking_uri)
    runs = client.search_runs(
        [state.experiment_id],
        filter_string=f"tags.`{PARENT_TAG}` = '{state.parent_run_id}'",
        max_results=5000,
    )
    rows = []
    for run in runs:
        tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
        state_name = {"FINISHED": "done", "KILLED": "stopped", "FAILED": "failed"}.get(
            run.info.status, run.info.status.lower()
        )
        rows.append(
            {
                "trial": tags.get("ray.trial_id", ""),
                "arm": tags.get("moonsweep.arm", ""),
                "state": state_name,
                "optuna": int(tags.get("optuna.trial_number", "-1")),
                **{k: params.get(k) for k in KEY_PARAMS},
                **{k: metrics.get(k) for k in KEY_METRICS},
                **(dict(metrics) if all_metrics else {}),
                "epochs": metrics.get("epoch"),
                "fail_reason": tags.get("moonsweep.fail_reason", ""),
                # Where it ran (last): the host, and Ray's node id (short in the table).
                "host": tags.get("moonsweep.hostname", ""),
                "node_ip": tags.get("moonsweep.node_ip", ""),
                "node_id": tags.get("moonsweep.node_id", ""),
                "node": tags.get("moonsweep.node_id", "")[:8],
                "mlflow_run_id": run.info.run_id,
            }
        )
    rows.sort(key=lambda r: (r["arm"] == "search", r["optuna"], r["arm"]))
    return rows


def leaders(state: SweepState) -> list[dict[str, Any]]:
    """Optuna's best trials (the Pareto front over the objectives, constraints respected)
    among the trials that ran to the end: early-stopped ones are COMPLETE for the sampler,
    but their figures are mid-training ones, so they neither lead nor hide a finished trial."""
    import optuna

    from sweep.search import make_storage, ran_to_end

    study = optuna.load_study(study_name=state.name, storage=make_storage(state.storage_url))
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


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(value)
    try:
        return f"{float(text):.4g}" if "." in text else text
    except ValueError:
        return text


def format_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    heads = [c.removeprefix("sparsity.").removeprefix("moon.") for c in columns]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(heads)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(heads, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)
