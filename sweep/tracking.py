"""MLflow tracking from the driver: a parent run per sweep, a child run per trial.

Everything is written by the driver process (one writer, so SQLite stays safe): trials
report through Ray, and this callback turns each report into one batched MLflow call.
A child run is found again by its `ray.trial_id` tag, so a resumed sweep continues the
same runs instead of duplicating them.
"""

from __future__ import annotations

import re
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from ray import tune

from sweep.spaces import SearchSpace
from sweep.trial import FINAL_DIR, trial_configs

PARENT_TAG = "mlflow.parentRunId"
LIBRARIES = (
    "moonsweep",
    "torch",
    "torchvision",
    "ray",
    "optuna",
    "mlflow",
    "scikit-learn",
    "numpy",
)


def mask_url(url: str) -> str:
    """Hide the password in `scheme://user:password@host/...`."""
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", url)


def library_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0]}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def numeric_metrics(result: dict[str, Any], step: int, ts: int) -> list[Metric]:
    return [
        Metric(key, float(value), ts, step)
        for key, value in result.items()
        if isinstance(value, int | float) and not isinstance(value, bool) and _loggable(key)
    ]


_RAY_KEYS = {
    "timestamp",
    "time_this_iter_s",
    "time_total_s",
    "pid",
    "training_iteration",
    "time_since_restore",
    "iterations_since_restore",
    "done",
    "final",
}


def _loggable(key: str) -> bool:
    return key not in _RAY_KEYS and not key.startswith("config/")


def ensure_experiment(client: MlflowClient, name: str, artifact_root: str | None) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(name, artifact_location=artifact_root)


class MlflowTracking(tune.Callback):
    """Ray Tune callback that mirrors every trial into an MLflow child run."""

    def __init__(
        self, tracking_uri: str, experiment_id: str, parent_run_id: str, space: SearchSpace
    ) -> None:
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.space = space
        self.runs: dict[str, str] = {}
        self.last_step: dict[str, int] = {}
        self._client: MlflowClient | None = None

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.tracking_uri)
        return self._client

    def __getstate__(self) -> dict[str, Any]:
        # Ray pickles callbacks with the experiment; a live client (DB engine) does not pickle.
        return {**self.__dict__, "_client": None, "runs": {}, "last_step": {}}

    def run_id(self, trial: Any) -> str:
        """The trial's child run: found by tag (after a resume) or created once."""
        if trial.trial_id in self.runs:
            return self.runs[trial.trial_id]
        found = self.client.search_runs(
            [self.experiment_id],
            filter_string=(
                f"tags.`ray.trial_id` = '{trial.trial_id}' "
                f"and tags.`{PARENT_TAG}` = '{self.parent_run_id}'"
            ),
        )
        if found:
            run_id = found[0].info.run_id
            # A resumed trial repeats the epochs after its last checkpoint: log them once.
            self.last_step[run_id] = int(found[0].data.metrics.get("epoch", 0))
            self.client.update_run(run_id, status="RUNNING")
        else:
            run_id = self._create(trial)
        self.runs[trial.trial_id] = run_id
        return run_id

    def _create(self, trial: Any) -> str:
        config = trial.config
        arm = config.get("arm", "search")
        tags = {
            PARENT_TAG: self.parent_run_id,
            "ray.trial_id": trial.trial_id,
            "optuna.trial_number": str(config.get("optuna_trial", -1)),
            "moonsweep.arm": arm,
            "moonsweep.seeds": ",".join(str(s) for s in self.space.seeds),
        }
        run = self.client.create_run(
            self.experiment_id, run_name=f"{arm}-{trial.trial_id}", tags=tags
        )
        run_id = run.info.run_id
        configs = trial_configs(self.space, config)
        params = flatten(configs[0].model_dump(mode="json"))
        params["seed"] = ",".join(str(c.seed) for c in configs)
        params.update({f"searched.{k}": v for k, v in config.get("params", {}).items()})
        self.client.log_batch(
            run_id, params=[Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
        )
        self.client.log_dict(
            run_id,
            {
                "arm": arm,
                "params": config.get("params", {}),
                "configs": [c.model_dump(mode="json") for c in configs],
                "versions": library_versions(),
            },
            "trial.json",
        )
        return run_id

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.run_id(trial)

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        if result.get("final") == 1 or "fail_reason" in result:
            return  # logged once at completion
        run_id = self.run_id(trial)
        step = int(result.get("epoch", 0))
        if step <= self.last_step.get(run_id, 0):
            return
        self.last_step[run_id] = step
        ts = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=numeric_metrics(result, step, ts))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        run_id = self.run_id(trial)
        result = trial.last_result or {}
        if "fail_reason" in result:
            self.client.set_tag(run_id, "moonsweep.fail_reason", str(result["fail_reason"]))
            self.client.set_terminated(run_id, "FAILED")
        elif result.get("final") == 1:
            ts = int(time.time() * 1000)
            metrics = numeric_metrics(result, int(result.get("epoch", 0)), ts)
            for start in range(0, len(metrics), 900):  # log_batch takes at most 1000 metrics
                self.client.log_batch(run_id, metrics=metrics[start : start + 900])
            if trial.checkpoint is not None:
                with trial.checkpoint.as_directory() as directory:
                    final = Path(directory) / FINAL_DIR
                    if final.is_dir():
                        self.client.log_artifacts(run_id, str(final), artifact_path="final")
            self.client.set_terminated(run_id, "FINISHED")
        else:
            self.client.set_tag(run_id, "moonsweep.stopped_early", "true")
            self.client.set_terminated(run_id, "KILLED")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        run_id = self.run_id(trial)
        reason = "ray error"
        if trial.error_file and Path(trial.error_file).exists():
            lines = Path(trial.error_file).read_text().strip().splitlines()
            reason = lines[-1] if lines else reason
        self.client.set_tag(run_id, "moonsweep.fail_reason", reason[:500])
        self.client.set_terminated(run_id, "FAILED")
