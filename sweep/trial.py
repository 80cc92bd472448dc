"""One sweep trial inside Ray: train every seed of the space in lockstep, report to Ray.

Every `report_every` epochs the trial reports its latest figures, the per-epoch figures
since the last report (`history`, for MLflow) and a checkpoint. With early stopping, the
reports from the grace epoch on also carry the validation figures of the current weights
(`Run.evaluate`, means over seeds): the objectives of a trial the scheduler stops.

Failures (a bad config, NaN, an exception) are reported as data (`fail_reason`) rather
than raised, so the sweep goes on and every store records why; the space's `retry` policy
first gives the faults it names (e.g. `oom`) more attempts from the last reported state.
Lost workers are different: Ray restarts those trials, which resume here from
`ray.tune.get_checkpoint()` (or from the checkpoint before it, if that one is corrupt). A
trial whose checkpoint already holds its final results (it finished just before a driver
was killed) reports them again instead of training again. A resumed trial's first report
carries every epoch so far (each run's checkpoint holds its history): MLflow logs each
epoch once, and so gets those whose reports a killed driver never processed.

`restore_missing_checkpoints` runs in the driver before a resume: Ray deletes a trial's
checkpoints past `num_to_keep` as soon as it records a newer one, but writes its experiment
state to storage later (in the background), so a driver killed in between leaves a state
that names deleted checkpoints. Ray would fail the trial ("does not exist on storage
anymore"), even one that had finished, so they are put back first.
"""

from __future__ import annotations

import io
import math
import posixpath
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs
import torch
from ray import tune

from engine import faults
from engine.checkpoint import load_json, load_newest, save_checkpoint, save_json
from engine.data import load_suite
from engine.train import Run, TrainingFailed, TrainResult
from sweep.cluster import node_placement
from sweep.spaces import SEARCH_ARM, SearchSpace
from sweep.state import FINAL_DIR
from sweep.stats import aggregate

STATE_FILE = "state.pt"
CHECKPOINT_NAME = re.compile(r"checkpoint_\d+")  # Ray's folders for a trial's checkpoints


def _cap_gpu_memory(fraction: float) -> None:
    # Ray's fractional GPUs are bookkeeping only (ray#5902): enforce the share here.
    if 0 < fraction < 1 and torch.cuda.is_available():
        torch.cuda.set_per_process_memory_fraction(fraction)


def _restore(checkpoint: tune.Checkpoint, directory: Path) -> tuple[list[dict], str]:
    """Run states from the checkpoint, or from an older one beside it if it is corrupt."""
    latest = directory / STATE_FILE
    # Ray keeps the last `num_to_keep` checkpoints of a trial side by side (checkpoint_NNNNNN).
    here = Path(checkpoint.path)
    older = sorted(
        (p / STATE_FILE for p in here.parent.glob("checkpoint_*") if p.name < here.name),
        reverse=True,
    )
    payload, used, problems = load_newest([latest, *older])
    note = f"{'; '.join(problems)}; resumed from {used.parent.name}" if problems else ""
    return payload["runs"], note


def _exists(fs: pyarrow.fs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound


def _usable(fs: pyarrow.fs.FileSystem, folder: str) -> bool:
    """A checkpoint folder `run_trial` can go on from: final results or a state file."""
    wanted = [posixpath.join(folder, FINAL_DIR, "metrics.json"), posixpath.join(folder, STATE_FILE)]
    return any(info.type == pyarrow.fs.FileType.File for info in fs.get_file_info(wanted))


def restore_missing_checkpoints(trials: list[Any]) -> list[str]:
    """Put back the checkpoints that Ray's saved state names for a trial it will resume but
    that are gone from storage (see the module's docstring); one line per trial mended.

    The one Ray resumes from (the newest named) becomes a copy of the second-newest usable
    checkpoint the trial left after it: Ray had recorded that one, so every epoch up to it
    reached MLflow, and at most one report's epochs are trained again. (The newest may be
    one that a worker wrote after its driver died: never recorded, perhaps incomplete.)
    The older ones named become empty folders, which Ray deletes as the trial goes on: it
    fails on one already gone, and then writes later checkpoints over earlier ones.
    `trials`: Ray's, from the saved state `Tuner.restore` reads.
    """
    notes = []
    for trial in trials:
        latest = trial.checkpoint
        if trial.status == "TERMINATED" or latest is None:
            continue  # finished trials are not resumed; unstarted ones start afresh
        fs, path = latest.filesystem, latest.path
        if not _exists(fs, path):
            selector = pyarrow.fs.FileSelector(posixpath.dirname(path), allow_not_found=True)
            later = sorted(  # zero-padded indices: oldest first
                info.path
                for info in fs.get_file_info(selector)
                if info.type == pyarrow.fs.FileType.Directory
                and CHECKPOINT_NAME.fullmatch(info.base_name)
                and info.base_name > posixpath.basename(path)
                and _usable(fs, info.path)
            )
            if not later:
                continue  # nothing to go on from: Ray fails the trial with its own message
            source = later[-2] if len(later) > 1 else later[-1]
            fs.create_dir(path)  # copy_files makes the folders inside it, not the folder
            pyarrow.fs.copy_files(source, path, source_filesystem=fs, destination_filesystem=fs)
            notes.append(
                f"trial {trial.trial_id}: its recorded {posixpath.basename(path)} was deleted "
                f"before the driver stopped; resuming it from {posixpath.basename(source)}"
            )
        for kept in trial.run_metadata.checkpoint_manager.best_checkpoint_results:
            if not _exists(fs, kept.checkpoint.path):
                fs.create_dir(kept.checkpoint.path)
    return notes


def epochs_so_far(runs: list[Run]) -> list[dict[str, float]]:
    """Every epoch the runs have trained (restored with their state), means over seeds."""
    out = []
    for records in zip(*(run.history for run in runs), strict=True):
        metrics = aggregate(list(records))
        metrics["epoch"] = int(records[0]["epoch"])
        out.append(metrics)
    return out


def _state_bytes(runs: list[Run]) -> bytes:
    buffer = io.BytesIO()
    torch.save({"runs": [r.state_dict() for r in runs]}, buffer)
    return buffer.getvalue()


def run_trial(config: dict[str, Any], space: SearchSpace) -> None:
    """The Ray Tune function trainable."""
    torch.set_num_threads(max(1, int(space.resources.cpu)))
    _cap_gpu_memory(space.resources.gpu)
    retried: list[str] = []
    try:
        cfgs = space.arm_configs(config)
        suite = load_suite(cfgs[0].data)  # one copy shared by every seed
        states: list[dict] | None = None
        note = ""
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as directory:
                recorded = Path(directory) / FINAL_DIR / "metrics.json"
                if recorded.exists():
                    # Finished before the driver died, recorded after: report again, untrained.
                    tune.report(load_json(recorded))
                    return
                states, note = _restore(checkpoint, Path(directory))
        while True:
            runs = [Run(cfg, suite) for cfg in cfgs]
            for run, state in zip(runs, states or [], strict=False):
                run.load_state_dict(state)
            try:
                finished = _train(runs, space, note, stoppable=config["arm"] == SEARCH_ARM)
                break
            except TrainingFailed as failed:
                policy = space.retry
                if failed.kind not in policy.on or len(retried) >= policy.attempts:
                    raise
                retried.append(str(failed)[:200])
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                # Again from the last reported checkpoint (or the start).
                last = failed.last_state
                states = torch.load(io.BytesIO(last), weights_only=True)["runs"] if last else states
                note = ""
        final, results = finished.metrics, finished.results
        final["retries"] = len(retried)
        final.update(node_placement())
        if retried:
            final["retried"] = " | ".join(retried)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / FINAL_DIR
            save_json(out / "metrics.json", final)
            for seed, result in zip(space.seeds, results, strict=True):
                save_checkpoint(out / f"model-seed{seed}.pt", result.checkpoint())
                save_json(out / f"metrics-seed{seed}.json", result.metrics)
            tune.report(final, checkpoint=tune.Checkpoint.from_directory(tmp))
    except Exception as exc:  # failures are data: record why, let the sweep go on
        epoch = exc.epoch if isinstance(exc, TrainingFailed) else 0
        reason = str(exc) if isinstance(exc, TrainingFailed) else f"{type(exc).__name__}: {exc}"
        if retried:
            reason += f" (after {len(retried)} retries: {' | '.join(retried)})"
        tune.report({"fail_reason": reason[:500], "epoch": epoch, "val_accuracy": math.nan})


@dataclass
class Finished:
    """A trial trained to the end: its final figures (means over seeds) and each seed's run."""

    metrics: dict[str, Any]
    results: list[TrainResult]


def _train(runs: list[Run], space: SearchSpace, note: str, stoppable: bool) -> Finished:
    """Train to the end, reporting (with a checkpoint) every `report_every` epochs.

    Any exception comes out as a `TrainingFailed` carrying the epoch and the last reported
    state, for a retry.
    """
    # Epochs not yet reported; after a restore, every epoch so far (MLflow skips those it has).
    history: list[dict[str, float]] = epochs_so_far(runs)
    last_state: bytes | None = None
    metrics: dict[str, Any] = {}
    # ASHA decides nothing before the grace epoch; from there on each report carries the
    # objectives of the current weights, so a trial it stops still tells the sampler something.
    # (Baselines are never stopped: they skip it.)
    early = stoppable and space.early_stopping is not None
    evaluate_from = space.grace_epochs() if early else None
    try:
        while not runs[0].done:
            metrics = aggregate([run.train_epoch() for run in runs])
            epoch = runs[0].epoch
            metrics["epoch"] = epoch
            history.append(metrics)
            faults.fire("epoch", epoch)
            if epoch % space.report_every == 0 and not runs[0].done:
                if evaluate_from is not None and epoch >= evaluate_from:
                    metrics.update(aggregate([run.evaluate() for run in runs]))
                last_state = _state_bytes(runs)
                with tempfile.TemporaryDirectory() as tmp:
                    save_checkpoint(
                        Path(tmp) / STATE_FILE,
                        {"runs": [r.state_dict() for r in runs]},
                        before_rename=lambda e=epoch: faults.fire("checkpoint", e),
                    )
                    report = {**metrics, "history": history, **node_placement()}
                    if note:
                        report["checkpoint_fallback"] = note[:500]
                        note = ""
                    tune.report(report, checkpoint=tune.Checkpoint.from_directory(tmp))
                history = []
    except Exception as exc:
        raise TrainingFailed(exc, runs[0].epoch, last_state) from exc
    try:
        results = [run.finish() for run in runs]
    except Exception as exc:  # no epoch nor state to name: a retry starts as this attempt did
        raise TrainingFailed(exc, 0) from exc
    final: dict[str, Any] = aggregate([r.metrics for r in results])
    final.update({"epoch": runs[0].epoch, "val_accuracy": metrics["val_accuracy"], "final": 1})
    final["history"] = history
    return Finished(final, results)
