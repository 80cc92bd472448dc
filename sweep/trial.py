"""One sweep trial inside Ray: train every seed of the space in lockstep, report to Ray.

Every `report_every` epochs the trial reports its latest figures, the per-epoch figures
since the last report (`history`, for MLflow) and a checkpoint.

Failures (a bad config, NaN, an exception) are reported as data (`fail_reason`) rather
than raised, so the sweep goes on and every store records why. Lost workers are different:
Ray restarts those trials, which resume here from `ray.tune.get_checkpoint()`.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ray import tune

from engine.checkpoint import load_checkpoint, save_checkpoint, save_json
from engine.config import TrainConfig
from engine.data import load_suite
from engine.train import Run
from sweep.cluster import node_placement
from sweep.spaces import SearchSpace

# Metrics whose spread over seeds is reported too (`std/<name>`): the headline figures.
HEADLINE = (
    "accuracy",
    "known_accuracy",
    "ece",
    "nll",
    "brier",
    "auroc_near",
    "auroc_far",
    "fpr95_near",
    "fpr95_far",
)
STATE_FILE = "state.pt"
FINAL_DIR = "final"


def trial_configs(space: SearchSpace, config: dict[str, Any]) -> list[TrainConfig]:
    """The resolved training config of each seed of a trial (arm + searched params)."""
    arm = config["arm"]
    extra = space.baselines.get(arm, {}) if arm != "search" else {}
    return [space.trial_config(config.get("params", {}), seed, extra) for seed in space.seeds]


def aggregate(per_seed: list[dict[str, float]]) -> dict[str, float]:
    """Mean over seeds of every metric, plus `std/<name>` for the headline ones."""
    names = per_seed[0].keys()
    out = {name: float(np.mean([m[name] for m in per_seed])) for name in names}
    if len(per_seed) > 1:
        for name in names:
            base = name.removeprefix("val/")
            if base in HEADLINE:
                out[f"std/{name}"] = float(np.std([m[name] for m in per_seed], ddof=1))
    return out


def _cap_gpu_memory(fraction: float) -> None:
    # Ray's fractional GPUs are bookkeeping only (ray#5902): enforce the share here.
    if 0 < fraction < 1 and torch.cuda.is_available():
        torch.cuda.set_per_process_memory_fraction(fraction)


def run_trial(config: dict[str, Any], space: SearchSpace) -> None:
    """The Ray Tune function trainable."""
    torch.set_num_threads(max(1, int(space.resources.cpu)))
    _cap_gpu_memory(space.resources.gpu)
    epoch = 0
    try:
        cfgs = trial_configs(space, config)
        suite = load_suite(cfgs[0].data)  # one copy shared by every seed
        runs = [Run(cfg, suite) for cfg in cfgs]
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as directory:
                states = load_checkpoint(Path(directory) / STATE_FILE)["runs"]
            for run, state in zip(runs, states, strict=True):
                run.load_state_dict(state)
        history: list[dict[str, float]] = []  # epochs not yet reported
        while not runs[0].done:
            metrics = aggregate([run.train_epoch() for run in runs])
            epoch = runs[0].epoch
            metrics["epoch"] = epoch
            history.append(metrics)
            if epoch % space.report_every == 0 and not runs[0].done:
                with tempfile.TemporaryDirectory() as tmp:
                    save_checkpoint(
                        Path(tmp) / STATE_FILE, {"runs": [r.state_dict() for r in runs]}
                    )
                    report = {**metrics, "history": history, **node_placement()}
                    tune.report(report, checkpoint=tune.Checkpoint.from_directory(tmp))
                history = []
        results = [run.finish() for run in runs]
        final = aggregate([r.metrics for r in results])
        final.update({"epoch": epoch, "val_accuracy": metrics["val_accuracy"], "final": 1})
        final.update(node_placement())
        final["history"] = history
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / FINAL_DIR
            save_json(out / "metrics.json", final)
            for seed, result in zip(space.seeds, results, strict=True):
                save_checkpoint(out / f"model-seed{seed}.pt", result.checkpoint())
                save_json(out / f"metrics-seed{seed}.json", result.metrics)
            tune.report(final, checkpoint=tune.Checkpoint.from_directory(tmp))
    except Exception as exc:  # failures are data: record why, let the sweep go on
        reason = f"{type(exc).__name__}: {exc}"
        tune.report({"fail_reason": reason[:500], "epoch": epoch, "val_accuracy": math.nan})
