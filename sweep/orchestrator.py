"""Start, resume and inspect sweeps: Ray Tune runs the trials, Optuna searches, MLflow tracks.

A sweep lives in `<workdir>/<name>/`: `sweep.json` (what was asked, where the stores are),
`space.yaml`, and Ray's experiment folder `ray/`. The default stores are SQLite files in the
work directory (`mlflow.db`, `optuna.db`) with MLflow artifacts in `mlartifacts/`.

Example:
    >>> from sweep.orchestrator import SweepOptions, start_sweep  # doctest: +SKIP
    >>> summary = start_sweep(SweepOptions(name="demo", trials=4))  # doctest: +SKIP
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
import ray
import yaml
from pydantic import BaseModel, ValidationError
from ray import tune

from engine import faults
from engine.checkpoint import remove_partial_writes, save_json
from engine.config import ConfigError, config_error
from engine.data import load_suite
from sweep.adoption import adopt_unrecorded
from sweep.cluster import (
    check_results_storage,
    experiment_path,
    is_uri,
    ray_experiment,
    results_location,
    unreachable_address,
)
from sweep.driver_lock import driver_lock
from sweep.levels import compare_levels, log_levels
from sweep.marks import mark_experiment, mark_findings
from sweep.naming import ADOPTED_FILE, EXPERIMENT_TAGS, read_adopted
from sweep.progress import LiveView
from sweep.search import SweepSearcher, make_scheduler
from sweep.spaces import SearchSpace, load_space, with_epochs, with_settings
from sweep.spool import Spool
from sweep.state import (
    SweepState,
    child_runs,
    default_workdir,
    keep_rows,
    load_state,
    read_rows,
    sweep_dir,
)
from sweep.stores import (
    check_stores,
    ensure_experiment,
    environment_defaults,
    library_versions,
    make_storage,
    mask_url,
    mlflow_client,
    quiet_libraries,
    storage_trial_id,
)
from sweep.tracking import MlflowTracking
from sweep.trial import restore_missing_checkpoints, run_trial

SPOOL_DIR = "spool"


class SweepOptions(BaseModel):
    space: str = "default"
    name: str | None = None
    workdir: str | None = None
    trials: int | None = None
    epochs: int | None = None
    # `--set KEY=VALUE`: fixed settings for every trial and baseline, on top of the space's.
    settings: list[str] = []
    max_concurrent: int | None = None
    address: str | None = None
    tracking_uri: str | None = None
    storage: str | None = None
    results: str | None = None
    cpus_per_trial: float | None = None
    gpus_per_trial: float | None = None


def _check_workdir(workdir: Path) -> None:
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        probe = workdir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"--workdir {workdir}: cannot write there ({exc.strerror})") from None


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).parent,
        )
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def _resolve_space(opts: SweepOptions) -> tuple[SearchSpace, list[str]]:
    """The space with the command line's overrides, validated again as a whole, and one line
    per setting that `--epochs` clipped to fit."""
    space = load_space(opts.space)
    notes: list[str] = []
    if opts.settings:  # first: `--epochs` then fits the lengths these settings give
        space = with_settings(space, opts.settings)
    if opts.epochs is not None:
        space, notes = with_epochs(space, opts.epochs)
    data = space.model_dump()
    if space.source_dir and (Path(space.source_dir) / space.base).is_file():
        # Trials and `resume` read the stored space beside sweep.json, not beside the space
        # file: a `base` file next to it is stored by its absolute path.
        data["base"] = str((Path(space.source_dir) / space.base).resolve())
    overrides = {
        ("budget", "trials"): opts.trials,
        ("budget", "max_concurrent"): opts.max_concurrent,
        ("resources", "cpu"): opts.cpus_per_trial,
        ("resources", "gpu"): opts.gpus_per_trial,
    }
    for (section, key), value in overrides.items():
        if value is not None:
            data[section][key] = value
    try:
        space = SearchSpace.model_validate({**data, "source_dir": space.source_dir})
        space.check()
    except ValidationError as exc:
        raise config_error(exc, "", "check the spelling") from None
    except ConfigError as exc:
        raise ConfigError(f"with the command line's settings: {exc}") from None
    return space, notes


def _check_data(space: SearchSpace) -> None:
    """Load the space's data once: a missing data root or too few images is one error before
    anything is written, not a ConfigError in every trial of a sweep that then "finishes"."""
    try:
        load_suite(space.trial_config({}, space.seeds[0]).data)
    except ConfigError as exc:
        raise ConfigError(f"the space's data: {exc}") from None


def start_sweep(opts: SweepOptions) -> dict[str, Any]:
    """Validate everything, create the stores and the parent run, then run the sweep."""
    environment_defaults()
    quiet_libraries()
    space, adjusted = _resolve_space(opts)
    address = opts.address or os.environ.get("RAY_ADDRESS") or None
    if address is None:  # on a cluster the data is on the nodes, not necessarily here
        _check_data(space)
    # Absolute from here on: Ray's storage path and the SQLite URLs need it.
    workdir = (Path(opts.workdir) if opts.workdir else default_workdir()).resolve()
    name = opts.name or time.strftime("sweep-%Y%m%d-%H%M%S")
    # ASCII only: the name becomes a folder, a study, an experiment and Ray's storage path
    # (an S3 key on a cluster); str.isalnum() would also pass 'é' or '٣'.
    if not re.fullmatch(r"[A-Za-z0-9_-]*[A-Za-z0-9][A-Za-z0-9_-]*", name):
        raise ConfigError(f"--name {name!r}: use ASCII letters, digits, '-' and '_' only")
    folder = sweep_dir(workdir, name)
    if (folder / "sweep.json").exists():
        raise ConfigError(
            f"--name {name}: a sweep of that name exists in {workdir}; "
            f"`moonsweep resume {name}` continues it, or choose another name"
        )
    _check_workdir(workdir)
    tracking_uri = (
        opts.tracking_uri
        or os.environ.get("MLFLOW_TRACKING_URI")
        or (f"sqlite:///{workdir / 'mlflow.db'}")
    )
    storage_url = (
        opts.storage
        or os.environ.get("MOONSWEEP_STORAGE")
        or (f"sqlite:///{workdir / 'optuna.db'}")
    )
    results = results_location(opts.results)
    ray_start = 0.0
    if address:  # joining a cluster: a wrong address or no shared storage writes nothing
        init_ray(address)
        check_results_storage(results, address)
        check_stores(tracking_uri, storage_url)
    else:
        ray_start = _while_ray_starts(check_stores, tracking_uri, storage_url)
    client = mlflow_client(tracking_uri)
    artifact_root = (
        (workdir / "mlartifacts").as_uri() if tracking_uri.startswith("sqlite") else None
    )
    experiment_id = ensure_experiment(client, f"moonsweep-{name}", artifact_root, EXPERIMENT_TAGS)
    # Masked: a storage or tracking URL on the command line may carry a password.
    command = mask_url(shlex.join(["moonsweep", *sys.argv[1:]])) if sys.argv else ""
    parent = client.create_run(
        experiment_id,
        run_name=name,
        tags={
            "moonsweep.sweep": name,
            "moonsweep.command": command,
            "moonsweep.git_commit": _git_commit(),
            "moonsweep.space": opts.space,
            "moonsweep.optuna_storage": mask_url(storage_url),
            "moonsweep.kind": "sweep",
            **{f"version.{k}": v for k, v in library_versions().items()},
        },
    )
    client.log_dict(parent.info.run_id, space.model_dump(mode="json"), "space.json")
    state = SweepState(
        name=name,
        space=space.model_dump(mode="json"),
        space_source=opts.space,
        tracking_uri=tracking_uri,
        storage_url=storage_url,
        experiment_id=experiment_id,
        parent_run_id=parent.info.run_id,
        address=address,
        results=results,
        command=command,
        created=time.strftime("%Y-%m-%dT%H:%M:%S"),
        adjusted=[f"fitted to --epochs {opts.epochs}: {n}" for n in adjusted],
        settings=list(opts.settings),
    )
    for line in state.adjusted:
        print(line, file=sys.stderr)
    with driver_lock(folder, name):
        (folder / "space.yaml").write_text(yaml.safe_dump(state.space, sort_keys=False))
        save_json(folder / "sweep.json", state.model_dump())
        return {**_run(state, folder, restore=False), "ray_start_s": ray_start}


def _while_ray_starts(check: Callable[..., None], *args: Any) -> float:
    """`check(*args)` in a thread while Ray starts on this machine; the seconds Ray took.

    Ray's start is mostly waiting on the processes it spawns; the stores' first use (MLflow's
    and Optuna's schema set-up on SQLite, about 2 s) fits in it. Ray itself starts in the
    main thread: started from another, its first task hung. If `check` fails, Ray is shut
    down again before its error is raised.
    """
    errors: list[BaseException] = []

    def target() -> None:
        try:
            check(*args)
        except BaseException as exc:  # raised again in the main thread
            errors.append(exc)

    thread = threading.Thread(target=target, name="moonsweep-stores", daemon=True)
    thread.start()
    started = time.perf_counter()
    try:
        init_ray(None)
    finally:
        thread.join()
    seconds = time.perf_counter() - started
    if errors:
        ray.shutdown()
        raise errors[0]
    return seconds


def resume_sweep(name: str, workdir: str | Path | None = None) -> dict[str, Any]:
    """Continue an interrupted sweep with the same searcher, study and MLflow runs."""
    environment_defaults()
    quiet_libraries()
    state, folder = load_state(name, workdir)
    with driver_lock(folder, state.name):  # a driver still running it: exit 2, touch nothing
        state, folder = load_state(name, workdir)  # as the last driver left it
        if state.status == "finished":  # every trial ran and was reconciled: nothing to start
            return {
                "name": state.name,
                "status": "finished",
                "folder": str(folder),
                "already_finished": True,
            }
        check_stores(state.tracking_uri, state.storage_url)
        mark_experiment(state)  # a sweep started before the UI's kind tag opens on its runs
        return _run(state, folder, restore=True)


def _space_of(state: SweepState, folder: Path) -> SearchSpace:
    return SearchSpace.model_validate({**state.space, "source_dir": str(folder)})


def init_ray(address: str | None) -> None:
    """Start Ray on this machine (`address` None) or join the cluster at `address`;
    ConfigError when nothing usable answers there."""
    environment_defaults()
    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {
        "log_to_driver": False,
        "logging_level": logging.ERROR,
        "configure_logging": True,
    }
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is None:
        ray.init(include_dashboard=False, **kwargs)
        return
    down = unreachable_address(address)
    if down is not None:
        raise ConfigError(
            f"--address {address}: {down}; start a cluster with `ray start --head`, "
            "or leave --address out for one machine"
        )
    if address.startswith("ray://"):
        if importlib.util.find_spec("grpc") is None:  # what `ray[client]` adds
            raise ConfigError(
                f"--address {address}: Ray Client needs `pip install 'ray[client]'`; "
                "or run the sweep on the head node with --address auto"
            )
    try:
        ray.init(address=address, **kwargs)
    except ConnectionError as exc:
        raise ConfigError(
            f"--address {address}: no Ray cluster answers there ({exc}); start one with "
            "`ray start --head`, or leave --address out for one machine"
        ) from None


class DriverFailpoints(tune.Callback):
    """Test-only failpoints in the driver (engine/faults.py; nothing happens unless set)."""

    def __init__(self, ray_dir: str) -> None:
        self.ray_dir = ray_dir
        self.unrecorded = 0

    def on_trial_save(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        # Ray has just recorded the checkpoint and deleted those past `num_to_keep`; its
        # experiment state is saved later in the same step.
        if trial.checkpoint is not None:
            faults.fire("save", int(Path(trial.checkpoint.path).name.rsplit("_", 1)[-1]))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        # The stores have heard of the trial's end (callbacks run in order); Ray's saved
        # experiment state on storage may not hold the trial yet.
        if faults.names("unrecorded") and not _saved_holds(self.ray_dir, trial.trial_id):
            self.unrecorded += 1
            faults.fire("unrecorded", self.unrecorded)


class UnhandledEndFailpoint(tune.Callback):
    """Test-only: the driver dies when a trial's final result reaches it, before any other
    callback (the stores) has heard of it, for a trial Ray's saved state does not hold: the
    worker has written its final checkpoint, MLflow's run is still RUNNING."""

    def __init__(self, ray_dir: str) -> None:
        self.ray_dir = ray_dir
        self.unhandled = 0

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        if faults.names("result") and result.get("final") == 1:
            if not _saved_holds(self.ray_dir, trial.trial_id):
                self.unhandled += 1
                faults.fire("result", self.unhandled)


def _saved_holds(ray_dir: str, trial_id: str) -> bool:
    """Whether Ray's experiment state saved in a local `ray_dir` names the trial."""
    return any(trial_id in p.read_text() for p in Path(ray_dir).glob("experiment_state*.json"))


# Ray saves its experiment state (every trial, the searcher) at most this often; moonsweep
# saves it every second for a sweep of up to SAVE_EVERY_S_TRIALS trials, so that a killed
# driver leaves few trials Ray never recorded (they start over as new), and less often as the
# sweep grows: each save writes every trial (about 2 ms per hundred trials on 2 cores,
# bench/scale.py), and at once a second a sweep of thousands spends its driver on saving.
SAVE_PERIOD = "TUNE_GLOBAL_CHECKPOINT_S"
SAVE_EVERY_S_TRIALS = 200


def save_period(trials: int) -> float:
    """Seconds between Ray's experiment-state saves for a sweep of `trials` trials: one
    second up to SAVE_EVERY_S_TRIALS, then growing with the trials (the share of the
    driver's time spent saving stays about the same).

        >>> save_period(35), save_period(1000), save_period(5000)
        (1.0, 5.0, 25.0)
    """
    return max(1.0, trials / SAVE_EVERY_S_TRIALS)


@contextmanager
def _save_period(trials: int) -> Iterator[None]:
    """TUNE_GLOBAL_CHECKPOINT_S for one sweep's `Tuner` (read when it starts), unless the
    environment sets it."""
    if SAVE_PERIOD in os.environ:
        yield
        return
    os.environ[SAVE_PERIOD] = f"{save_period(trials):g}"
    try:
        yield
    finally:
        os.environ.pop(SAVE_PERIOD, None)


def _run(state: SweepState, folder: Path, restore: bool) -> dict[str, Any]:
    space = _space_of(state, folder)
    init_ray(state.address)
    if restore:  # a new sweep was checked before its stores were written
        check_results_storage(state.results, state.address)
    resources = {"cpu": space.resources.cpu, "gpu": space.resources.gpu}
    trainable = tune.with_resources(tune.with_parameters(run_trial, space=space), resources)
    ray_dir = experiment_path(state.results, folder, state.name)
    storage_path, experiment = ray_experiment(state.results, folder, state.name)
    state.status = "running"
    save_json(folder / "sweep.json", state.model_dump())
    spool = folder / SPOOL_DIR
    saved: list[Any] = []  # Ray's saved trials: for the adoption and the checkpoint repair
    if restore:  # what a killed driver (or a tracking outage) left unsent, first
        for partial in (folder, spool):  # its writes cut short by the kill, before the rename
            remove_partial_writes(partial)
        tracking = MlflowTracking(
            state.tracking_uri, state.experiment_id, state.parent_run_id, space, spool
        )
        tracking.send_spooled()
        saved = _experiment_trials(ray_dir)
        recorded = {t.trial_id for t in saved}
        for line in adopt_unrecorded(state, space, folder, recorded, tracking, ray_dir):
            print(line, file=sys.stderr)
    adopted_file = str(folder.resolve() / ADOPTED_FILE)  # the searcher's and the live line's
    if restore and tune.Tuner.can_restore(ray_dir):
        for line in restore_missing_checkpoints(saved):
            print(line, file=sys.stderr)
        tuner = tune.Tuner.restore(
            ray_dir, trainable=trainable, resume_unfinished=True, resume_errored=True
        )
    else:
        total = space.budget.trials + len(space.baseline_trials())
        first = space.objectives[0]
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=SweepSearcher(space, state.storage_url, state.name, adopted_file),
                scheduler=make_scheduler(space),
                num_samples=total,
                max_concurrent_trials=space.budget.max_concurrent,
                # One worker process imports torch once and runs trial after trial.
                reuse_actors=True,
                trial_dirname_creator=lambda t: f"{t.config.get('arm', 'trial')}-{t.trial_id}",
            ),
            run_config=tune.RunConfig(
                name=experiment,
                storage_path=storage_path,
                verbose=0,
                callbacks=[
                    UnhandledEndFailpoint(ray_dir),  # first: before any callback hears
                    MlflowTracking(
                        state.tracking_uri, state.experiment_id, state.parent_run_id, space, spool
                    ),
                    LiveView(total, first.metric, first.mode, adopted_file=adopted_file),
                    DriverFailpoints(ray_dir),
                ],
                failure_config=tune.FailureConfig(max_failures=2),
                # Two: a trial whose latest checkpoint is corrupt resumes from the one before.
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            ),
        )
    try:
        with _save_period(space.budget.trials + len(space.baseline_trials())):
            tuner.fit()
    except KeyboardInterrupt:
        state.status = "interrupted"
        save_json(folder / "sweep.json", state.model_dump())
        raise
    trials = _experiment_trials(ray_dir)
    trial_ids = {t.trial_id for t in trials} | set(read_adopted(folder / ADOPTED_FILE))
    expected = space.budget.trials + len(space.baseline_trials())
    unfinished = [t for t in trials if t.status not in ("TERMINATED", "ERROR")]
    # Writes the tracking store never confirmed (it was down at the end) wait for `resume`.
    if unfinished or len(trial_ids) < expected or len(Spool(spool)):
        state.status = "interrupted"
        save_json(folder / "sweep.json", state.model_dump())
        return {"name": state.name, "status": "interrupted", "folder": str(folder)}
    cleanup = reconcile(state, trial_ids)
    rows = read_rows(state)  # once: each read of a sweep of thousands takes seconds
    levels = compare_levels(state, rows)
    log_levels(state, levels)
    mark_findings(state, levels)
    mlflow_client(state.tracking_uri).set_terminated(state.parent_run_id, "FINISHED")
    keep_rows(state, folder, rows)  # what every read of the finished sweep starts from
    state.status = "finished"
    save_json(folder / "sweep.json", state.model_dump())
    return {"name": state.name, "status": "finished", "folder": str(folder), **cleanup}


def _experiment_trials(ray_dir: str) -> list[Any]:
    """Ray's trials as its saved experiment state has them (what `Tuner.restore` reads)."""
    if not is_uri(ray_dir) and not Path(ray_dir).exists():
        return []
    # It warns that each trial lacks Ray's result files: moonsweep turns those off.
    analysis_log = logging.getLogger("ray.tune.analysis.experiment_analysis")
    level = analysis_log.level
    analysis_log.setLevel(logging.ERROR)
    try:
        return list(tune.ExperimentAnalysis(ray_dir).trials)
    finally:
        analysis_log.setLevel(level)


def reconcile(state: SweepState, trial_ids: set[str]) -> dict[str, int]:
    """After a (resumed) sweep ends: no stale RUNNING Optuna trials, no orphan MLflow runs."""
    storage = make_storage(state.storage_url)
    study = optuna.load_study(study_name=state.name, storage=storage)
    stale = 0
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        # Asked for by a driver that died before Ray recorded the trial: it never ran.
        trial_id = storage_trial_id(trial)
        storage.set_trial_user_attr(trial_id, "fail_reason", "orphaned by a killed driver")
        storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL)
        stale += 1
    client = mlflow_client(state.tracking_uri)
    children = child_runs(client, state)
    orphans = 0
    for run in children:
        if run.data.tags.get("ray.trial_id") not in trial_ids:
            client.delete_run(run.info.run_id)  # its trial was never recorded by Ray
            orphans += 1
        elif run.info.status == "RUNNING":
            client.set_terminated(run.info.run_id, "KILLED")
    return {"stale_optuna_trials_failed": stale, "orphan_mlflow_runs_deleted": orphans}
