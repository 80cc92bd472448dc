"""A sweep's records as read back: what `sweep.json` says, one row per trial, the study.

Reading a sweep needs no Ray: this module opens the stores the sweep recorded (MLflow for
the trials' runs and artifacts, Optuna for the study) and nothing else.

A sweep lives in `<workdir>/<name>/` (`sweep.json`, `space.yaml`, Ray's `ray/`). Each
trial is an MLflow child run of the sweep's parent run, tagged with its Ray trial id and
arm; a finished trial holds `final/metrics.json` (means over seeds) and, per seed `s`,
`final/metrics-seed<s>.json` and `final/model-seed<s>.pt`.

Example:
    >>> from sweep.state import load_state, trial_rows  # doctest: +SKIP
    >>> state, folder = load_state("demo")  # doctest: +SKIP
    >>> [r["arm"] for r in trial_rows(state)][:3]  # doctest: +SKIP
    ['dense', 'moon_auto', 'sparse']
    >>> sweep_dir(Path("runs"), "demo")
    PosixPath('runs/demo')
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

import mlflow.entities
import optuna
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.tracking import MlflowClient
from pydantic import BaseModel, PrivateAttr

from engine.checkpoint import load_json, save_bytes
from engine.config import ConfigError
from engine.test_time import variant_figures
from sweep.driver_lock import driver_holds
from sweep.failures import COLLAPSED, CONFIG_FAULTS
from sweep.naming import (
    ARM_TAG,
    CONFIRM_DIR,
    CONFIRM_TAG,
    FAIL_REASON_TAG,
    FAILURE_TAG,
    FINAL_DIR,
    LEVEL_TAG,
    RACED_TAG,
    engine_metrics,
)
from sweep.spaces import KEY_METRICS, SEARCH_ARM
from sweep.stores import load_study, mlflow_client

PARENT_TAG = "mlflow.parentRunId"
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
ROWS_FILE = "trials.json"  # a finished sweep's trial rows (`keep_rows`)
RUNS_PER_PAGE = 1000  # MLflow's own default page size
RUN_STATES = {"FINISHED": "done", "KILLED": "stopped", "FAILED": "failed"}


class SweepState(BaseModel):
    """What `sweep.json` records: enough to resume and to find every result."""

    name: str
    space: dict[str, Any]
    space_source: str
    tracking_uri: str
    storage_url: str
    experiment_id: str
    parent_run_id: str
    address: str | None = None
    results: str | None = None  # Ray's storage for the trials (None: the sweep's folder)
    status: str = "running"
    command: str = ""
    created: str = ""
    # Settings the command line changed to fit (e.g. warm-up clipped to `--epochs`).
    adjusted: list[str] = []
    # `--set` items as given (already part of `space["set"]`, which resume uses).
    settings: list[str] = []
    _folder: Path | None = PrivateAttr(default=None)  # where load_state found it

    def current_status(self) -> str:
        """`status` as recorded, except that a `running` sweep no driver runs reads
        `interrupted`: a driver killed outright (SIGKILL, a lost machine) could not record
        that it stopped. `moonsweep resume` continues it either way."""
        if self.status == "running" and self._folder and driver_holds(self._folder) is False:
            return "interrupted"
        return self.status


# One trial as `trial_rows` gives it; with `all_metrics` every final metric is a key too.
TrialRow = TypedDict(
    "TrialRow",
    {
        "trial": str,  # Ray trial id
        "arm": str,  # SEARCH_ARM or a baseline's name
        "level": float | None,  # the density level it is compared at (None: no levels, dense)
        # done, stopped, raced, failed, running, or collapsed: finished at chance accuracy
        # (a searched trial; never a candidate, a leader or on a front).
        "state": str,
        "optuna": int,  # Optuna trial number (-1: a baseline)
        "sparsity.method": str | None,
        "sparsity.density": str | None,
        "moon.enabled": str | None,
        "moon.alpha_mode": str | None,
        "moon.init_factor": str | None,
        "moon.alpha_final": str | None,
        "moon.alpha": str | None,
        "voting.mode": str | None,
        "val/accuracy": float | None,
        "val/auroc_near": float | None,
        "val/auroc_far": float | None,
        "val/ece": float | None,
        "density": float | None,
        "epochs": float | None,
        "fail_reason": str,
        "failure": str,  # the kind (sweep.failures): nan, config, collapsed, oom, error, ray
        "host": str,
        "node_ip": str,
        "node_id": str,
        "node": str,  # Ray's node id, short
        "mlflow_run_id": str,
    },
)


def default_workdir() -> Path:
    """`$MOONSWEEP_WORKDIR`, else `./moonsweep-runs`."""
    return Path(os.environ.get("MOONSWEEP_WORKDIR", "moonsweep-runs"))


def sweep_dir(workdir: Path, name: str) -> Path:
    return workdir / name


def load_state(name: str, workdir: str | Path | None = None) -> tuple[SweepState, Path]:
    """The sweep `name` of `workdir` and its folder; ConfigError naming the sweeps there."""
    workdir = Path(workdir) if workdir else default_workdir()
    folder = sweep_dir(workdir, name)
    path = folder / "sweep.json"
    if not path.exists():
        known = sorted(p.parent.name for p in workdir.glob("*/sweep.json"))
        raise ConfigError(
            f"no sweep named {name!r} in {workdir}; sweeps there: {', '.join(known) or 'none'}"
        )
    state = SweepState.model_validate(load_json(path))
    state._folder = folder.resolve()
    return state, folder.resolve()


def child_runs(
    client: MlflowClient, state: SweepState, filter_string: str = ""
) -> list[mlflow.entities.Run]:
    """Every child run of the sweep's parent run (and `filter_string`, MLflow's syntax),
    page by page: one search returns at most 1,000 runs by default, 50,000 at all."""
    where = f"tags.`{PARENT_TAG}` = '{state.parent_run_id}'"
    where += f" and {filter_string}" if filter_string else ""
    runs: list[mlflow.entities.Run] = []
    token = None
    while True:
        page = client.search_runs(
            [state.experiment_id], filter_string=where, max_results=RUNS_PER_PAGE, page_token=token
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def trial_rows(state: SweepState, all_metrics: bool = False) -> list[TrialRow]:
    """One row per trial (MLflow child run), baselines first; `all_metrics` adds every final
    metric, not only KEY_METRICS (under the engine's names: `val/auroc_near`,
    `std/val/accuracy`, `val/auroc/<set>`; `sweep.naming` says how MLflow groups them).

    A finished sweep's rows come from ROWS_FILE beside its sweep.json (`keep_rows`, when it
    finished): MLflow's search loads every run's params, tags and metrics, about 12 s per
    thousand trials on 2 cores, and nothing changes them once the sweep has ended. A
    running or interrupted sweep is read from MLflow."""
    kept = _kept_rows(state)
    rows = kept if kept is not None else read_rows(state)
    if all_metrics:
        return rows
    return [{k: r[k] for k in TrialRow.__annotations__} for r in rows]  # type: ignore[misc]


def keep_rows(state: SweepState, folder: Path, rows: list[TrialRow]) -> None:
    """Keep a finished sweep's `read_rows` beside its sweep.json, for `trial_rows`."""
    save_bytes(folder / ROWS_FILE, json.dumps(rows, separators=(",", ":")).encode())
    state._folder = folder


def _kept_rows(state: SweepState) -> list[TrialRow] | None:
    folder = state._folder
    if state.status != "finished" or folder is None or not (folder / ROWS_FILE).is_file():
        return None
    return json.loads((folder / ROWS_FILE).read_text())


def read_rows(state: SweepState) -> list[TrialRow]:
    """`trial_rows(state, all_metrics=True)` read from MLflow, whatever the sweep's status."""
    rows: list[TrialRow] = []
    for run in child_runs(mlflow_client(state.tracking_uri), state):
        # Metrics under the engine's names (the detail ones are grouped in MLflow).
        tags, params, metrics = run.data.tags, run.data.params, engine_metrics(run.data.metrics)
        row: dict[str, Any] = {
            "trial": tags.get("ray.trial_id", ""),
            "arm": tags.get(ARM_TAG, ""),
            "level": float(tags[LEVEL_TAG]) if LEVEL_TAG in tags else None,
            "state": (
                COLLAPSED
                if tags.get(FAILURE_TAG) == COLLAPSED
                else "raced"
                if RACED_TAG in tags
                else RUN_STATES.get(run.info.status, run.info.status.lower())
            ),
            "optuna": int(tags.get("optuna.trial_number", "-1")),
            **{k: params.get(k) for k in KEY_PARAMS},
            **{k: metrics.get(k) for k in KEY_METRICS},
            **dict(metrics),
            "epochs": metrics.get("epoch"),
            "fail_reason": tags.get(FAIL_REASON_TAG, ""),
            "failure": tags.get(FAILURE_TAG, ""),
            # Where it ran (last): the host, and Ray's node id (short in the table).
            "host": tags.get("moonsweep.hostname", ""),
            "node_ip": tags.get("moonsweep.node_ip", ""),
            "node_id": tags.get("moonsweep.node_id", ""),
            "node": tags.get("moonsweep.node_id", "")[:8],
            "mlflow_run_id": run.info.run_id,
        }
        rows.append(row)  # type: ignore[arg-type]  (the metric keys of all_metrics)
    rows.sort(key=lambda r: (r["arm"] == SEARCH_ARM, r["optuna"], r["level"] or 0, r["arm"]))
    return rows


def ran_to_end(study: optuna.Study) -> optuna.Study:
    """An in-memory copy of `study` in which only the trials that ran to the end are COMPLETE.

    Early-stopped trials are COMPLETE for the sampler, with mid-training figures, and so are
    diverged, refused and collapsed ones, with stand-in figures and the `trains` constraint
    violated; here they (and any trial not finished) are FAIL, so Optuna's Pareto front,
    hypervolume and importances describe finished, trained models. Trial numbers stay the
    same.

        >>> best = ran_to_end(study).best_trials  # doctest: +SKIP
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "new study created" line
    copy = optuna.create_study(directions=study.directions)
    for trial in study.get_trials(deepcopy=False):
        ended = trial.state == optuna.trial.TrialState.COMPLETE
        attrs = trial.user_attrs
        failed = attrs.get("failure") in CONFIG_FAULTS
        if ended and not (attrs.get("early_stopped") or attrs.get("raced_out") or failed):
            copy.add_trial(trial)
            continue
        copy.add_trial(
            optuna.trial.create_trial(
                state=optuna.trial.TrialState.FAIL,
                params=trial.params,
                distributions=trial.distributions,
                user_attrs=trial.user_attrs,
                system_attrs=trial.system_attrs,
            )
        )
    return copy


def finished_study(state: SweepState) -> optuna.Study | None:
    """The sweep's study with only the trials that ran to the end COMPLETE (`ran_to_end`);
    None when the sweep never asked Optuna for a trial."""
    try:
        study = load_study(state.name, state.storage_url)
    except KeyError:
        return None
    return ran_to_end(study)


def load_run_json(client: MlflowClient, run_id: str, path: str) -> dict[str, Any]:
    """A JSON artifact of an MLflow run, e.g. `trial.json` or `final/metrics-seed0.json`."""
    with tempfile.TemporaryDirectory() as tmp:
        local = client.download_artifacts(run_id, path, tmp)
        with open(local) as handle:
            return json.load(handle)


@dataclass
class SeedRecords:
    """What a trial logged per seed: its final figures (at the test-time variant it kept)
    and, where it evaluated a test-time grid, every variant's figures.

    `variants[seed][name]` holds `engine.test_time.variant_figures` of each variant;
    `picked` names the kept one, `published` the one its config names (for an arm, the
    setting as published). A trial recorded without them has its kept figures as its one
    variant, named `picked` ("as recorded" when nothing names it).
    """

    metrics: dict[int, dict[str, float]]
    picked: str
    published: str
    variants: dict[int, dict[str, dict[str, float]]]


RECORDED = "as recorded"  # the variant name of a trial that logged no test-time grid


def seed_records(
    state: SweepState,
    run_id: str,
    folder: str = FINAL_DIR,
    seeds: Sequence[int] | None = None,
) -> SeedRecords:
    """The per-seed files a trial logged under `folder` (`final/metrics-seed<s>.json` and,
    with a test-time grid, `final/variants-seed<s>.json`), for `seeds` (default: the seeds
    the space trains); a seed without its metrics file is left out (raced out before it, or
    not confirmed yet). `folder` CONFIRM_DIR reads `moonsweep confirm`'s, which are in the
    same format (`confirmed_records`)."""
    # One lookup of the run and one listing for all its files (the client's download looks
    # the run up twice per file: most of the time at the end of a sweep).
    uri = mlflow_client(state.tracking_uri).get_run(run_id).info.artifact_uri
    repository = get_artifact_repository(uri)
    present = {Path(f.path).name for f in repository.list_artifacts(folder)}
    metrics: dict[int, dict[str, float]] = {}
    variants: dict[int, dict[str, dict[str, float]]] = {}
    picked = published = ""
    with tempfile.TemporaryDirectory() as tmp:

        def read(name: str) -> Any:
            with open(repository.download_artifacts(f"{folder}/{name}", tmp)) as handle:
                return json.load(handle)

        for seed in (int(s) for s in (state.space["seeds"] if seeds is None else seeds)):
            if f"metrics-seed{seed}.json" not in present:
                continue  # raced out before this seed
            metrics[seed] = read(f"metrics-seed{seed}.json")
            if f"variants-seed{seed}.json" in present:
                record = read(f"variants-seed{seed}.json")
                picked, published = record["picked"], record["published"]
                variants[seed] = record["variants"]
    if not variants:
        picked = published = RECORDED
        variants = {s: {RECORDED: variant_figures(m)} for s, m in metrics.items()}
    return SeedRecords(metrics, picked, published, variants)


def seed_metrics(state: SweepState, run_id: str) -> dict[int, dict[str, float]]:
    """The per-seed final metrics a trial logged (`final/metrics-seed<s>.json`), by seed."""
    return seed_records(state, run_id).metrics


def confirm_seeds(state: SweepState) -> list[int]:
    """The fresh seeds `moonsweep confirm` trains the sweep's levels on (the parent run's
    CONFIRM_TAG), [] when it has not been run."""
    tag = mlflow_client(state.tracking_uri).get_run(state.parent_run_id).data.tags.get(CONFIRM_TAG)
    return [int(s) for s in tag.split(",")] if tag else []


def confirmed_records(
    state: SweepState, run_id: str, seeds: Sequence[int] | None = None
) -> SeedRecords | None:
    """A trial's figures on the confirmation seeds (`moonsweep confirm`: `confirm/` on its
    run, in `seed_records`' format), or None unless every confirmation seed is there.
    `seeds`: `confirm_seeds(state)` read once by a caller that reads many trials (default:
    read here, one lookup of the parent run)."""
    seeds = confirm_seeds(state) if seeds is None else list(seeds)
    if not seeds:
        return None
    records = seed_records(state, run_id, CONFIRM_DIR, seeds)
    return records if set(records.metrics) == set(seeds) else None
