"""Where a sweep's records live: the MLflow tracking store and the Optuna storage.

Every MLflow client and Optuna storage of the sweep is opened here (`mlflow_client`,
`make_storage`), probed here (`unreachable`, `check_stores`) and named with its password
hidden (`mask_url`). The environment the driver runs in (`environment_defaults`) and the
few private attributes of Ray's and Optuna's objects this project needs are here too, so
that a library upgrade that moves them breaks one module.

Example:
    >>> from sweep.stores import mask_url, unreachable
    >>> mask_url("postgresql://me:secret@db:5432/optuna")
    'postgresql://me:***@db:5432/optuna'
    >>> unreachable("sqlite:///x.db") is None  # only http(s) servers are asked
    True
"""

from __future__ import annotations

import base64
import logging
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from importlib import metadata
from typing import Any

import optuna
from mlflow.tracking import MlflowClient

from engine.config import ConfigError

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
ENVIRONMENT_DEFAULTS = {
    # Quiet Ray: the live view is the progress; no per-trial CSV/JSON/TensorBoard files.
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    "RAY_AIR_NEW_OUTPUT": "0",
    "RAY_DEDUP_LOGS": "1",
    # With a tracking server MLflow prints a "View run" URL per run: the summary names it.
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    # A tracking server that went away: our writer retries (and spools); MLflow's own
    # retries (7 by default, minutes of backoff) would only hold the writer up.
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
    # One progress bar per downloaded artifact would bury the commands' own progress lines.
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


def environment_defaults() -> None:
    """Set ENVIRONMENT_DEFAULTS where the environment does not say otherwise.

    Call it before Ray is imported (Ray reads `RAY_DEDUP_LOGS` on import): the command line
    does so before every command, `init_ray` again for drivers started from Python.
    """
    for key, value in ENVIRONMENT_DEFAULTS.items():
        os.environ.setdefault(key, value)


def quiet_libraries() -> None:
    """Keep the terminal for the command's own output: library INFO logs off."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def mask_url(url: str) -> str:
    """Hide the password in `scheme://user:password@host/...` (output, tags and reports)."""
    return re.sub(r"(://[^:/@\s]*):[^@/\s]*@", r"\1:***@", url)


def is_server(tracking_uri: str) -> bool:
    """An MLflow tracking server (http/https), as opposed to a database or a folder."""
    return tracking_uri.startswith(("http://", "https://"))


def library_versions() -> dict[str, str]:
    """Python's and the main libraries' versions (`absent` for one not installed)."""
    versions = {"python": sys.version.split()[0]}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


# -- MLflow ------------------------------------------------------------------------------------


def mlflow_client(tracking_uri: str) -> MlflowClient:
    """The MLflow client of a tracking store (every MLflow call of the sweep goes through one)."""
    return MlflowClient(tracking_uri)


def unreachable(tracking_uri: str, timeout: float = 5.0) -> str | None:
    """Why an http(s) tracking server does not answer (None if it does, or is a database).

    Asks the REST API for one experiment: any answer but a refusal or an error status
    means the server is there.
    """
    if not is_server(tracking_uri):
        return None
    parts = urllib.parse.urlsplit(tracking_uri.rstrip("/"))
    # urllib does not take credentials from the URL: send them as MLflow's client would.
    netloc = parts.netloc.rsplit("@", 1)[-1]
    url = parts._replace(netloc=netloc).geturl() + "/api/2.0/mlflow/experiments/search"
    request = urllib.request.Request(url + "?max_results=1")
    if parts.username is not None:
        user, password = parts.username, parts.password or ""
        token = f"{urllib.parse.unquote(user)}:{urllib.parse.unquote(password)}"
        request.add_header("Authorization", "Basic " + base64.b64encode(token.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return None
    except urllib.error.HTTPError as exc:
        return f"it answered HTTP {exc.code} {exc.reason}"
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return mask_url(str(reason))


def ensure_experiment(
    client: MlflowClient,
    name: str,
    artifact_root: str | None,
    tags: Mapping[str, str] | None = None,
) -> str:
    """The id of the experiment `name`, created (with `artifact_root`) if it is new, with
    `tags` set (on an existing one too, where they differ)."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return client.create_experiment(name, artifact_location=artifact_root, tags=tags)
    for key, value in (tags or {}).items():
        if experiment.tags.get(key) != value:
            client.set_experiment_tag(experiment.experiment_id, key, value)
    return experiment.experiment_id


# -- Optuna ------------------------------------------------------------------------------------


def make_storage(url: str) -> optuna.storages.RDBStorage:
    """The Optuna storage at `url` (SQLite waits up to a minute for a busy database)."""
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)


def load_study(name: str, storage_url: str) -> optuna.Study:
    """The sweep's study; KeyError when the sweep never asked Optuna for a trial."""
    return optuna.load_study(study_name=name, storage=make_storage(storage_url))


# -- probing both --------------------------------------------------------------------------------


def _open_tracking(uri: str) -> None:
    mlflow_client(uri).search_experiments(max_results=1)


def check_stores(tracking_uri: str, storage_url: str) -> None:
    """Fail before any trial starts if the tracking store or the Optuna storage is unusable.

    Servers are asked first, local SQLite files (created on first use) last, so a bad URL
    leaves no file behind.
    """
    down = unreachable(tracking_uri)
    if down is not None:
        raise ConfigError(
            f"MLflow tracking server {mask_url(tracking_uri)} is unreachable ({down}); "
            "start it, or pass another --tracking-uri"
        )
    checks = [(tracking_uri, _open_tracking), (storage_url, make_storage)]
    for url, check in sorted(checks, key=lambda c: c[0].startswith("sqlite")):
        try:
            check(url)
        except Exception as exc:  # bad schemes, hosts and paths raise many types
            what = "MLflow tracking URI" if check is _open_tracking else "Optuna storage"
            first = (mask_url(str(exc)).strip().splitlines() or [type(exc).__name__])[0]
            raise ConfigError(f"{what} {mask_url(url)} cannot be used: {first[:300]}") from None


# -- private attributes of Ray's and Optuna's objects ------------------------------------------
# Ray's OptunaSearch keeps its study and its live Optuna trials (per Ray trial id) in private
# attributes, and Optuna's storage API addresses a trial by its private storage id; neither
# library offers a public way to reach them. Every such access is here, nowhere else.


def searcher_study(search: Any) -> optuna.Study:
    """The Optuna study inside Ray's `OptunaSearch`."""
    return search._ot_study


def searcher_trial(search: Any, ray_trial_id: str) -> optuna.Trial:
    """The live Optuna trial that Ray's `OptunaSearch` asked for a Ray trial."""
    return search._ot_trials[ray_trial_id]


def adopt_searcher_trial(search: Any, ray_trial_id: str, trial: optuna.Trial) -> None:
    """Make `trial` the one Ray's `OptunaSearch` asked for a Ray trial (`searcher_trial`)."""
    search._ot_trials[ray_trial_id] = trial


def storage_trial_id(trial: optuna.Trial | optuna.trial.FrozenTrial) -> int:
    """A trial's id in its Optuna storage (what the storage's methods take)."""
    return trial._trial_id
