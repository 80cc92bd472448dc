"""One sweep trial inside Ray: train every seed of the space in lockstep, report to Ray.

Every `report_every` epochs the trial reports its latest figures, the per-epoch figures
since the last report (`history`, for MLflow) and a checkpoint. With early stopping, the
reports from the grace epoch on also carry the validation figures of the current weights
(`Run.evaluate`, means over seeds): the objectives of a trial the scheduler stops.

Failures (a bad config, NaN, an exception) are reported as data (`fail_reason`, and its
kind as `failure`: `sweep.failures`) rather than raised, so the sweep goes on and every
store records why; a searched trial that finishes at chance accuracy is flagged `failure:
collapsed` in its final report. The space's `retry` policy first gives the faults it names
(e.g. `oom`) more attempts from the last reported state.
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
import json
import math
import posixpath
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.fs
import torch
from ray import tune

from engine import faults
from engine.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_json,
    load_newest,
    save_bytes,
    save_checkpoint,
    save_json,
)
from engine.data import load_suite
from engine.test_time import (
    TestTime,
    collected_modes,
    kept_settings,
    pick,
    variant_figures,
    variant_name,
    variants,
)
from engine.train import Run, TrainingFailed, TrainResult
from sweep.cluster import is_uri, node_placement
from sweep.failures import chance_accuracy, collapse, failure_kind
from sweep.naming import FINAL_DIR
from sweep.racing import Limit, raced_by
from sweep.spaces import SEARCH_ARM, SearchSpace
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


def final_checkpoint(ray_dir: str, arm: str, trial_id: str) -> tune.Checkpoint | None:
    """A trial's newest checkpoint on storage if it holds the trial's final results (what
    `run_trial` writes after its last seed), or None.

    For a trial Ray's saved state does not name (sweep.adoption): its folder is the one the
    orchestrator's `trial_dirname_creator` names, `<arm>-<trial id>`.
    """
    fs, root = pyarrow.fs.FileSystem.from_uri(
        ray_dir if is_uri(ray_dir) else str(Path(ray_dir).resolve())
    )
    trial_dir = posixpath.join(root, f"{arm}-{trial_id}")
    selector = pyarrow.fs.FileSelector(trial_dir, allow_not_found=True)
    folders = sorted(
        info.path
        for info in fs.get_file_info(selector)
        if info.type == pyarrow.fs.FileType.Directory and CHECKPOINT_NAME.fullmatch(info.base_name)
    )
    if not folders or not _exists(fs, posixpath.join(folders[-1], FINAL_DIR, "metrics.json")):
        return None
    return tune.Checkpoint(folders[-1], filesystem=fs)


def final_results(directory: Path) -> dict[str, Any] | None:
    """The final figures in a checkpoint's folder, if every file `run_trial` writes with
    them is there and reads back (a worker killed while Ray copied the checkpoint to
    storage leaves some missing or cut short), else None."""
    folder = directory / FINAL_DIR
    try:
        final = load_json(folder / "metrics.json")
        for seed in json.loads(final["seed_values"]):  # the seeds it trained (raced: fewer)
            load_json(folder / f"metrics-seed{seed}.json")
            load_checkpoint(folder / f"model-seed{seed}.pt")
        if "test_time_pick" in final:
            load_json(folder / "variants.json")
            for seed in json.loads(final["seed_values"]):
                load_json(folder / f"variants-seed{seed}.json")
    except (OSError, ValueError, KeyError, CheckpointError):
        return None
    return final


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


# Numeric keys every report to Ray keeps besides the space's own metrics (sweep.search,
# sweep.failures, the live view and the MLflow writer read them from Ray's result).
SWEEP_KEYS = frozenset(
    {"final", "epoch", "epochs_trained", "val_accuracy", "chance_accuracy", "retries",
     "raced_out", "seeds_trained"}
)  # fmt: skip


def reported(result: dict[str, Any], space: SearchSpace) -> dict[str, Any]:
    """What a report hands Ray: the figures the sweep decides on (the space's objectives,
    constraints and early-stopping metric, the status table's key metrics), the sweep's own
    keys and every non-numeric one; `seed_values` cut to those figures.

    Ray keeps each trial's last result, and a min/max/mean of every number it was ever
    sent, in the experiment state it saves every second: the engine's hundreds of detail
    figures would make each save grow with the sweep (bench/scale.py). They travel in the
    checkpoint instead (`final/metrics.json`, which MLflow logs) and in `history`.
    """
    kept = space.decision_metrics()
    out = {
        k: v
        for k, v in result.items()
        if k in kept or k in SWEEP_KEYS or isinstance(v, bool) or not isinstance(v, int | float)
    }
    if "seed_values" in out:
        per_seed = json.loads(out["seed_values"])
        cut = {s: {k: v for k, v in m.items() if k in kept} for s, m in per_seed.items()}
        out["seed_values"] = json.dumps(cut)
    return out


def run_trial(config: dict[str, Any], space: SearchSpace) -> None:
    """The Ray Tune function trainable."""
    torch.set_num_threads(max(1, int(space.resources.cpu)))
    _cap_gpu_memory(space.resources.gpu)
    retried: list[str] = []
    known: dict[str, float] = {}  # what the final and a failure report both carry
    try:
        cfgs = space.arm_configs(config)
        suite = load_suite(cfgs[0].data)  # one copy shared by every seed
        known["chance_accuracy"] = chance_accuracy(suite.num_classes)
        states: list[dict] | None = None
        note = ""
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as directory:
                recorded = Path(directory) / FINAL_DIR / "metrics.json"
                if recorded.exists():
                    # Finished before the driver died, recorded after: report again, untrained.
                    tune.report(reported(load_json(recorded), space))
                    return
                states, note = _restore(checkpoint, Path(directory))
        test_time = space.test_time_for(config)
        while True:
            runs = [Run(cfg, suite, collected_modes(cfg, test_time)) for cfg in cfgs]
            for run, state in zip(runs, states or [], strict=False):
                run.load_state_dict(state)
            try:
                finished = _train(runs, space, note, config, test_time)
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
        final.update(known, retries=len(retried))
        if config["arm"] == SEARCH_ARM:  # a baseline is a reference arm, whatever it reaches
            final.update(collapse(final))
        final.update(node_placement())
        if retried:
            final["retried"] = " | ".join(retried)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / FINAL_DIR
            save_json(out / "metrics.json", final)
            for seed, result in zip(space.seeds, results, strict=False):  # raced: fewer
                save_checkpoint(out / f"model-seed{seed}.pt", result.checkpoint())
                save_json(out / f"metrics-seed{seed}.json", result.metrics)
            if finished.variants:
                save_json(out / "variants.json", finished.variants)
            for seed, figures in finished.seed_variants.items():
                save_json(
                    out / f"variants-seed{seed}.json",
                    {
                        "picked": finished.picked,
                        "published": finished.published,
                        "variants": figures,
                    },
                )
            tune.report(reported(final, space), checkpoint=tune.Checkpoint.from_directory(tmp))
    except Exception as exc:  # failures are data: record why, let the sweep go on
        epoch = exc.epoch if isinstance(exc, TrainingFailed) else 0
        reason = str(exc) if isinstance(exc, TrainingFailed) else f"{type(exc).__name__}: {exc}"
        if retried:
            reason += f" (after {len(retried)} retries: {' | '.join(retried)})"
        failure = {"fail_reason": reason[:500], "failure": failure_kind(exc), **known}
        tune.report({**failure, "epoch": epoch, "val_accuracy": math.nan})


@dataclass
class Finished:
    """A trial trained to the end (or raced out): its final figures (means over the seeds
    trained), each trained seed's run (the picked test-time variant) and the variants' table."""

    metrics: dict[str, Any]
    results: list[TrainResult]
    variants: list[dict[str, Any]] | None = None
    # seed -> variant name -> its figures (`variant_figures`): what comparisons at one shared
    # test-time setting read (`final/variants-seed<s>.json`).
    seed_variants: dict[int, dict[str, dict[str, float]]] = field(default_factory=dict)
    picked: str = ""  # the variant kept (without a grid: the config's own, its one variant)
    published: str = ""  # the variant the config names (for an arm: as published)


def _train(
    runs: list[Run],
    space: SearchSpace,
    note: str,
    config: dict[str, Any],
    test_time: TestTime | None,
) -> Finished:
    """Train to the end, reporting (with a checkpoint) every `report_every` epochs.

    With racing, the first `race.seeds` runs train to the end first; the others train only
    if the race seeds are not dominated by a reference (sweep/racing.py). Any exception
    comes out as a `TrainingFailed` carrying the epoch and the last reported state.
    """
    searched = config["arm"] == SEARCH_ARM
    references = config.get("references") or {}
    limits = [Limit.model_validate(lim) for lim in config.get("limits") or []]
    race = space.race if searched and (references or limits) else None
    split = race.seeds if race is not None else len(runs)
    groups = [runs[:split], runs[split:]] if split < len(runs) else [runs]
    reporter = _Reporter(space, note, early=searched and space.early_stopping is not None)
    # Epochs not yet reported; after a restore, every epoch so far of the seeds trained first
    # (MLflow skips those it has; with racing the curves are the race seeds').
    reporter.history = epochs_so_far(groups[0])
    evaluated: dict[int, list[TrainResult]] = {}
    try:
        for group in groups:
            if group is groups[-1] and len(groups) == 2 and not group[0].epoch:
                raced = _race(
                    groups[0], space, test_time, reporter.history, evaluated, references, limits,
                    config.get("spread"),  # absent in a config from before it: None
                )  # fmt: skip
                if raced is not None:
                    return raced
            reporter.train(group, runs)
    except Exception as exc:
        raise TrainingFailed(exc, runs[0].epoch, reporter.last_state) from exc
    try:
        return _finish(runs, test_time, reporter.history, evaluated)
    except Exception as exc:  # no epoch nor state to name: a retry starts as this attempt did
        raise TrainingFailed(exc, 0) from exc


class _Reporter:
    """Trains a group of runs (seeds) in lockstep and reports every `report_every` epochs."""

    def __init__(self, space: SearchSpace, note: str, early: bool) -> None:
        self.space = space
        self.note = note
        # ASHA decides nothing before the grace epoch; from there on each report carries the
        # objectives of the current weights, so a trial it stops still tells the sampler
        # something. (Baselines are never stopped: they skip it.)
        self.evaluate_from = space.grace_epochs() if early else None
        self.history: list[dict[str, float]] = []  # epochs not yet reported
        self.last_state: bytes | None = None

    def train(self, group: list[Run], runs: list[Run]) -> None:
        space = self.space
        while not group[0].done:
            metrics = aggregate([run.train_epoch() for run in group])
            epoch = group[0].epoch
            metrics["epoch"] = epoch
            metrics["epochs_trained"] = sum(r.epoch for r in runs)
            self.history.append(metrics)
            faults.fire("epoch", epoch)
            if epoch % space.report_every == 0 and not group[0].done:
                if self.evaluate_from is not None and epoch >= self.evaluate_from:
                    metrics.update(aggregate([run.evaluate() for run in group]))
                # Serialized once: the state a retry starts from is the checkpoint's file.
                self.last_state = _state_bytes(runs)
                with tempfile.TemporaryDirectory() as tmp:
                    save_bytes(
                        Path(tmp) / STATE_FILE,
                        self.last_state,
                        before_rename=lambda e=epoch: faults.fire("checkpoint", e),
                    )
                    report = {
                        **reported(metrics, space),
                        "history": self.history,
                        **node_placement(),
                    }
                    if self.note:
                        report["checkpoint_fallback"] = self.note[:500]
                        self.note = ""
                    tune.report(report, checkpoint=tune.Checkpoint.from_directory(tmp))
                self.history = []


def _finish(
    runs: list[Run],
    test_time: TestTime | None,
    history: list[dict[str, float]],
    evaluated: dict[int, list[TrainResult]],
) -> Finished:
    """Fold the votes and evaluate every seed in every test-time variant; keep the one the
    rule picks on the validation figures.

    `evaluated` keeps each seed's variants (by seed), so race seeds are evaluated once.
    The variants' table has each variant's means over seeds; `seed_variants` each seed's.
    """
    seed_variants: dict[int, dict[str, dict[str, float]]] = {}
    if test_time is None:
        results = [run.finish() for run in runs]
        table = None
        # Its one variant, named, so that a contrast reads which setting it has.
        name = variant_name(runs[0].cfg)
        seed_variants = {r.config.seed: {name: variant_figures(r.metrics)} for r in results}
    else:
        for run in runs:
            if run.cfg.seed not in evaluated:
                evaluated[run.cfg.seed] = variants(run, test_time)
        per_seed = [evaluated[run.cfg.seed] for run in runs]
        means = [aggregate([seed[i].metrics for seed in per_seed]) for i in range(len(per_seed[0]))]
        chosen = pick(means, test_time.pick)
        results = [seed[chosen] for seed in per_seed]
        names = [variant_name(v.config) for v in per_seed[0]]
        table = [
            {"variant": names[i], "picked": i == chosen, **variant_figures(figures)}
            for i, figures in enumerate(means)
        ]
        seed_variants = {
            run.cfg.seed: {n: variant_figures(v.metrics) for n, v in zip(names, seed, strict=True)}
            for run, seed in zip(runs, per_seed, strict=True)
        }
    final: dict[str, Any] = aggregate([r.metrics for r in results])
    # The last epoch's validation accuracy of the current weights (before voting), every seed.
    last = float(sum(r.history[-1]["val_accuracy"] for r in runs) / len(runs))
    final.update({"epoch": runs[0].epoch, "val_accuracy": last, "final": 1})
    final["epochs_trained"] = sum(r.epoch for r in runs)
    final["seed_values"] = json.dumps({r.config.seed: r.metrics for r in results})
    if test_time is not None:
        final["test_time_pick"] = variant_name(results[0].config)
        final["test_time_settings"] = json.dumps(kept_settings(results[0].config))
        # The setting the config names (for an arm: as published), kept beside the pick.
        final["test_time_published"] = variant_name(runs[0].cfg)
        final["test_time_rule"] = test_time.pick.describe()
    final["history"] = history
    published = variant_name(runs[0].cfg)
    kept = final.get("test_time_pick", published)
    return Finished(final, results, table, seed_variants, kept, published)


def _race(
    first: list[Run],
    space: SearchSpace,
    test_time: TestTime | None,
    history: list[dict[str, float]],
    evaluated: dict[int, list[TrainResult]],
    references: dict[str, dict[int, dict[str, float]]],
    limits: list[Limit],
    spread: dict[str, list[float]] | None = None,
) -> Finished | None:
    """Finish the race seeds; a Finished (flagged) when they miss one of the trial's
    limits or one of its references dominates them (on the trial's `spread`)."""
    race = space.race
    assert race is not None
    done = _finish(first, test_time, history, evaluated)
    per_seed = {r.config.seed: r.metrics for r in done.results}
    refs = {label: {int(s): v for s, v in ref.items()} for label, ref in references.items()}
    by = raced_by(per_seed, refs, space.race_objectives(), race.alpha, limits, spread)
    if by is None:
        return None
    done.metrics.update({"raced_out": 1, "raced_by": by, "seeds_trained": len(first)})
    return done
