"""The chosen model in the MLflow Model Registry, and predictions from it.

`register` logs the chosen trial's model as an MLflow pyfunc model on that trial's run:
the engine's `Predictor` (weights, normalisation, OOD threshold at 95% TPR on validation ID
data), the run checkpoint it came from (masks, config, metrics) and `config.yaml`, with this
project's `engine` and `sweep` packages as code, so loading needs only the registry. The
version gets the alias `champion` and tags with its figures, density and sweep.

`load_predictor("name@champion")` (or any MLflow model URI: `models:/name/3`,
`runs:/<run id>/model`) gives the engine `Predictor` back.

Example:
    >>> from sweep.champion import load_predictor, register  # doctest: +SKIP
    >>> version = register(state, selection, "digits-moon")  # doctest: +SKIP
    >>> predictor = load_predictor("digits-moon@champion", state.tracking_uri)  # doctest: +SKIP
    >>> predictor.predict(images)[0].in_distribution  # doctest: +SKIP
    True
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
import numpy as np
import pandas as pd
import yaml
from mlflow.exceptions import MlflowException
from mlflow.models.signature import ModelSignature
from mlflow.types import ColSpec, Schema, TensorSpec

import engine
import sweep
from engine.checkpoint import load_checkpoint
from engine.config import ConfigError
from engine.predict import Predictor
from sweep.naming import FINAL_DIR
from sweep.selection import Selection
from sweep.state import SweepState
from sweep.stats import number
from sweep.stores import mlflow_client

CHAMPION = "champion"
MODEL_NAME = "model"  # the logged model's name within the trial's run
# What loading the model needs besides the bundled code (this environment's versions).
REQUIREMENTS = ("torch", "torchvision", "numpy", "pandas", "scikit-learn", "pydantic", "pyyaml")


class MoonPredictorModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper: raw [0, 1] images (N, C, H, W) in, one row per image out."""

    def load_context(self, context: Any) -> None:
        self.predictor = Predictor.load(context.artifacts["predictor"])

    def predict(self, context: Any, model_input: np.ndarray, params: Any = None) -> pd.DataFrame:
        rows = self.predictor.predict(np.asarray(model_input, dtype=np.float32))
        return pd.DataFrame([p.as_dict() for p in rows])


def model_uri(model: str) -> str:
    """`name@alias` or `name/version` -> `models:/...`; URIs (`runs:/`, `models:/`) as given."""
    if "://" in model or model.startswith(("runs:/", "models:/")):
        return model
    if "@" in model or "/" in model:
        return f"models:/{model}"
    return f"models:/{model}@{CHAMPION}"


def _best_seed(selection: Selection, seeds: list[int], per_seed: dict[int, dict]) -> int:
    """The recorded seed whose model ships: best on the preferred validation metric."""
    sign = 1.0 if selection.direction == "maximize" else -1.0

    def key(seed: int) -> float:
        value = number(per_seed[seed].get(selection.prefer))
        return -math.inf if value is None else sign * value

    return max(seeds, key=key)


def register(state: SweepState, selection: Selection, name: str, alias: str = CHAMPION) -> Any:
    """Log the chosen trial's model, register it as `name`, point `alias` at it.

    Returns the MLflow ModelVersion. The model is the chosen trial's seed with the best
    preferred metric on validation data (tag `moonsweep.seed`).
    """
    if not name or any(c in name for c in "/@:"):
        raise ConfigError(f"model name {name!r} must be non-empty, without '/', '@' or ':'")
    row = selection.chosen
    run_id = row["mlflow_run_id"]
    client = mlflow_client(state.tracking_uri)
    seeds = [int(s) for s in state.space.get("seeds", [0])]
    with tempfile.TemporaryDirectory() as tmp:
        try:
            folder = Path(client.download_artifacts(run_id, FINAL_DIR, tmp))
            per_seed = {
                s: json.loads((folder / f"metrics-seed{s}.json").read_text()) for s in seeds
            }
        except (MlflowException, OSError) as exc:
            raise ConfigError(
                f"trial {row['trial']} (run {run_id}) has no final models to register: {exc}"
            ) from None
        seed = _best_seed(selection, seeds, per_seed)
        checkpoint_path = folder / f"model-seed{seed}.pt"
        checkpoint = load_checkpoint(checkpoint_path)
        predictor = Predictor.from_checkpoint(checkpoint)
        predictor.save(Path(tmp) / "predictor.pt")
        (Path(tmp) / "config.yaml").write_text(
            yaml.safe_dump(checkpoint["config"], sort_keys=False)
        )
        mlflow.set_tracking_uri(state.tracking_uri)
        mlflow.set_registry_uri(state.tracking_uri)
        # MLflow warns that a Python object is pickled: ours is a small class of this package.
        logging.getLogger("mlflow.pyfunc").setLevel(logging.ERROR)
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(
                name=MODEL_NAME,
                python_model=MoonPredictorModel(),
                artifacts={
                    "predictor": str(Path(tmp) / "predictor.pt"),
                    "checkpoint": str(checkpoint_path),
                    "config": str(Path(tmp) / "config.yaml"),
                },
                code_paths=[str(Path(engine.__file__).parent), str(Path(sweep.__file__).parent)],
                pip_requirements=[f"{p}=={metadata.version(p)}" for p in REQUIREMENTS],
                registered_model_name=name,
                signature=_signature(predictor),
                input_example=np.full((1, *predictor.input_shape), 0.5, np.float32),
            )
    version = info.registered_model_version
    tags = _tags(state, selection, seed, per_seed[seed], predictor)
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, value)
    client.set_registered_model_alias(name, alias, str(version))
    return client.get_model_version(name, str(version))


def _signature(predictor: Predictor) -> ModelSignature:
    """Raw images (N, C, H, W) float32 in; per image the Prediction's fields out."""
    images = TensorSpec(np.dtype(np.float32), (-1, *predictor.input_shape))
    outputs = [
        ColSpec("string", "label"),
        ColSpec("long", "class_index"),
        ColSpec("double", "confidence"),
        ColSpec("double", "ood_score"),
        ColSpec("boolean", "in_distribution"),
    ]
    return ModelSignature(inputs=Schema([images]), outputs=Schema(outputs))


def _tags(
    state: SweepState, selection: Selection, seed: int, seed_metrics: dict, predictor: Predictor
) -> dict[str, str]:
    row = selection.chosen
    shown = [selection.prefer, *(m for m, _ in selection.objectives), "density"]
    shown += [m for m in ("val/auroc_far", "val/ece", "accuracy", "auroc_near", "auroc_far")]
    tags = {
        "moonsweep.sweep": state.name,
        "moonsweep.trial": str(row["trial"]),
        "moonsweep.optuna_trial": str(row["optuna"]),
        "moonsweep.run_id": row["mlflow_run_id"],
        "moonsweep.seed": str(seed),
        "moonsweep.prefer": f"{selection.prefer} ({selection.direction})",
        "moonsweep.constraints": ", ".join(map(str, selection.constraints)) or "none",
        "moonsweep.ood_score": predictor.score,
        "moonsweep.ood_threshold": f"{predictor.threshold:.6g}",
    }
    for metric in dict.fromkeys(shown):
        mean, own = number(row.get(metric)), number(seed_metrics.get(metric))
        if mean is not None:
            tags[f"mean/{metric}"] = f"{mean:.6g}"
        if own is not None:
            tags[metric] = f"{own:.6g}"
    return tags


def load_predictor(model: str, tracking_uri: str) -> Predictor:
    """The engine `Predictor` of a registered or logged model (see `model_uri`)."""
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    uri = model_uri(model)
    try:
        loaded = mlflow.pyfunc.load_model(uri)
    except MlflowException as exc:
        raise ConfigError(f"cannot load model {model!r} ({uri}): {exc.message}") from None
    return loaded.unwrap_python_model().predictor
