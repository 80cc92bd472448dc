"""Orchestration overhead of a sweep: wall time against the ideal (sum of trial times / C).

Runs a real sweep (embedded Ray, MLflow and Optuna on SQLite in a temporary work directory)
and prints a markdown table: wall time, Ray start-up, the trials' own training time summed,
the concurrency C, and the overhead ratio wall / (sum of trial times / C), with and without
Ray's start-up. Target of the project: at most 1.25 for the default sweep on 2 cores.

Trial time is Ray's `time_total_s` of each trial (its function running: data, training of
every seed, evaluation, reports, checkpoints). Everything else (Ray scheduling, actor
start, the searcher, MLflow logging, the experiment checkpoints) is overhead.

Run (from the repository root):
    .venv/bin/python bench/sweep.py                         # the default sweep (~5 min)
    .venv/bin/python bench/sweep.py --trials 4 --epochs 10  # a quick look
"""

from __future__ import annotations

import sys
from pathlib import Path

# `python bench/sweep.py` puts bench/ first on sys.path, where this file would shadow the
# project's `sweep` package; drop that entry.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--space", default="default")
    parser.add_argument("--trials", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--max-concurrent", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()

    import ray
    from ray.tune import ExperimentAnalysis

    from sweep.orchestrator import SweepOptions, init_ray, start_sweep
    from sweep.stores import quiet_libraries

    quiet_libraries()
    workdir = Path(tempfile.mkdtemp(prefix="moonsweep-bench-"))
    try:
        started = time.perf_counter()
        init_ray(None)
        ray_start = time.perf_counter() - started
        summary = start_sweep(
            SweepOptions(
                space=args.space,
                name="bench",
                workdir=str(workdir),
                trials=args.trials,
                epochs=args.epochs,
                max_concurrent=args.max_concurrent,
            )
        )
        wall = time.perf_counter() - started
        folder = Path(summary["folder"])
        state = json.loads((folder / "sweep.json").read_text())
        concurrency = state["space"]["budget"]["max_concurrent"]
        trials = ExperimentAnalysis(str(folder / "ray")).trials
        trial_times = [float((t.last_result or {}).get("time_total_s", 0.0)) for t in trials]
    finally:
        ray.shutdown()
        shutil.rmtree(workdir, ignore_errors=True)

    ideal = sum(trial_times) / concurrency
    figures = {
        "space": args.space,
        "trials": len(trials),
        "concurrency": concurrency,
        "cpus": ray_cpus(),
        "wall_s": wall,
        "ray_start_s": ray_start,
        "sum_trial_s": sum(trial_times),
        "ideal_s": ideal,
        "overhead": wall / ideal,
        "overhead_after_start": (wall - ray_start) / ideal,
    }
    print(f"sweep {args.space}: {len(trials)} trials (baselines included), C = {concurrency}")
    print("| wall s | Ray start s | sum of trial s | ideal s (sum / C) | overhead | w/o start |")
    print("|---:|---:|---:|---:|---:|---:|")
    print(
        f"| {wall:.1f} | {ray_start:.1f} | {sum(trial_times):.1f} | {ideal:.1f} "
        f"| {figures['overhead']:.2f} | {figures['overhead_after_start']:.2f} |"
    )
    verdict = "met" if figures["overhead"] <= 1.25 else "NOT met"
    print(f"target: overhead <= 1.25 -> {figures['overhead']:.2f}, {verdict}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2))


def ray_cpus() -> float:
    import os

    return float(os.cpu_count() or 1)


if __name__ == "__main__":
    main()
