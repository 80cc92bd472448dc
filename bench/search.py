"""Search efficiency: hypervolume reached at equal training budget, project search vs random.

Runs real sweeps (embedded Ray, MLflow and Optuna on SQLite in a temporary work directory)
of the `default` space, cut to `--epochs` epochs and `--seeds` seeds, in three arms:

- `tpe+asha`: the project's search, Optuna's TPE sampler (the space's settings) with ASHA
  early stopping (`val_accuracy`, reduction factor 2, deciding once the mask has frozen);
  it is given `--extra` times as many trials, since stopped trials cost fewer epochs;
- `tpe`: the same sampler without early stopping (the default space as shipped);
- `random`: Optuna's RandomSampler, no early stopping, `--trials` trials.

Each arm runs `--repeats` times with sampler seeds 0, 1, ..., the same in every arm: TPE's
start-up trials (6 in the space) are exactly the random arm's first trials, so the arms are
paired and can differ only from TPE's first model-guided trial on. Every sweep also trains
the three baselines (the same in every arm, so left out of the budget). The budget is counted
in training epochs (per seed) of the searched trials, in the order Optuna numbered them;
a stopped trial counts the epochs it trained. The hypervolume after a budget is that of the
feasible trials within it that ran to the end (early-stopped ones are COMPLETE in Optuna, with
mid-training figures, and left out: `sweep.state.ran_to_end`; Optuna's
`plot_hypervolume_history` values), with one
reference point for every sweep: the nadir of all their complete feasible trials (per
objective the worst value; see `sweep/hypervolume.py`).

Printed: per arm the hypervolume at budgets of 1/4, 1/2, 3/4 and all of the random arm's
(`--trials` x `--epochs`), as a percentage of the hypervolume of every sweep's feasible
trials pooled, mean +- sd over the repetitions and the ratio to random, plus the trials run
and stopped. `--json` writes every trial's figures; `--table-from FILE` prints the table of
such a file again without training.

Run (from the repository root):
    .venv/bin/python bench/search.py                      # 9 sweeps, 6-19 min on 2 cores
    .venv/bin/python bench/search.py --repeats 1 --trials 4 --epochs 12 --seeds 1  # quick look
"""

from __future__ import annotations

import sys
from pathlib import Path

# `python bench/search.py` puts bench/ first on sys.path, where bench/sweep.py would shadow
# the project's `sweep` package; drop that entry.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import yaml  # noqa: E402

ARMS = ("tpe+asha", "tpe", "random")
FRACTIONS = (0.25, 0.5, 0.75, 1.0)


def arm_space(arm: str, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    from sweep.spaces import load_space

    space = load_space("default").model_dump(mode="json")
    space["set"] = {**space["set"], "epochs": args.epochs}
    space["seeds"] = list(range(args.seeds))
    space["report_every"] = 1  # ASHA decides at its rung, not at the next report
    sampler = space["sampler"]
    if arm == "random":
        # The same seed: TPE's start-up trials are these random draws, so the arms are paired
        # and differ from TPE's first model-guided trial on.
        space["sampler"] = {**sampler, "name": "random", "seed": seed}
    else:
        space["sampler"] = {**sampler, "seed": seed}
    trials = math.ceil(args.trials * args.extra) if arm == "tpe+asha" else args.trials
    space["budget"] = {**space["budget"], "trials": trials}
    space["early_stopping"] = (
        {"metric": "val_accuracy", "mode": "max", "reduction_factor": 2.0}
        if arm == "tpe+asha"
        else None
    )
    return space


def run_sweep(workdir: Path, arm: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    from sweep.orchestrator import SweepOptions, start_sweep
    from sweep.state import load_state, trial_rows

    name = f"{arm.replace('+', '-')}-r{seed}"
    space_file = workdir / f"{name}.yaml"
    space_file.write_text(yaml.safe_dump(arm_space(arm, args, seed), sort_keys=False))
    started = time.perf_counter()
    summary = start_sweep(SweepOptions(space=str(space_file), name=name, workdir=str(workdir)))
    if summary["status"] != "finished":
        raise RuntimeError(f"sweep {name} did not finish: {summary}")
    state, _ = load_state(name, workdir)
    searched = sorted(
        (r for r in trial_rows(state) if r["arm"] == "search"), key=lambda r: r["optuna"]
    )
    return {
        "arm": arm,
        "seed": seed,
        "name": name,
        "storage": state.storage_url,
        "wall_s": time.perf_counter() - started,
        "trials": [
            {"optuna": r["optuna"], "state": r["state"], "epochs": int(r["epochs"] or 0)}
            for r in searched
        ],
    }


def volume_at(sweep: dict[str, Any], budget: float) -> float:
    """Hypervolume of the trials, in Optuna's order, whose cumulative epochs fit `budget`."""
    from sweep.hypervolume import volume_after

    spent, last = 0, -1
    for trial in sweep["trials"]:
        spent += trial["epochs"]
        if spent > budget:
            break
        last = trial["optuna"]
    return volume_after(sweep["numbers"], sweep["volumes"], last)


def pooled_volume(sweeps: list[dict[str, Any]], reference: list[float]) -> float:
    """Hypervolume of every feasible trial of every sweep together: the table's 100%."""
    import optuna

    from sweep.hypervolume import hypervolume_history
    from sweep.spaces import load_space

    directions = [o.direction for o in load_space("default").objectives]
    pooled = optuna.create_study(directions=directions)
    for sweep in sweeps:
        for point in sweep["points"]:
            if point["feasible"]:
                pooled.add_trial(optuna.trial.create_trial(values=point["values"]))
    volumes = hypervolume_history(pooled, reference)[1]
    return volumes[-1] if volumes else 0.0


def print_table(figures: dict[str, Any]) -> dict[str, Any]:
    """The markdown table of hypervolume at equal budget; returns its numbers."""
    opts, sweeps, reference = figures["args"], figures["sweeps"], figures["reference"]
    budget = opts["trials"] * opts["epochs"]
    full = pooled_volume(sweeps, reference)
    rows = {}
    for arm in ARMS:
        mine = [s for s in sweeps if s["arm"] == arm]
        rows[arm] = {
            "volumes": [[volume_at(s, f * budget) for s in mine] for f in FRACTIONS],
            "trials": float(np.mean([len(s["trials"]) for s in mine])),
            "stopped": float(
                np.mean([sum(t["state"] == "stopped" for t in s["trials"]) for s in mine])
            ),
            "epochs": float(np.mean([sum(t["epochs"] for t in s["trials"]) for s in mine])),
        }
    print(
        f"\nhypervolume at equal budget, % of the pooled front's ({full:.4g}): "
        f"{opts['repeats']} repetitions, sampler seeds 0-{opts['repeats'] - 1}; "
        f"{opts['epochs']} epochs x {opts['seeds']} seeds per trial; reference = feasible "
        f"nadir {', '.join(f'{v:.4g}' for v in reference)}"
    )
    heads = [f"{f * budget:.0f} ep (= {f * opts['trials']:g} trials)" for f in FRACTIONS]
    print("| arm | " + " | ".join(heads) + " | trials run (stopped) | epochs used |")
    print("|---|" + "---:|" * (len(FRACTIONS) + 2))
    random_means = [np.mean(v) for v in rows["random"]["volumes"]]
    for arm in ARMS:
        row = rows[arm]
        cells = []
        for volumes, base in zip(row["volumes"], random_means, strict=True):
            ratio = f" ({np.mean(volumes) / base:.2f}x)" if base > 0 and arm != "random" else ""
            pct = 100 * np.asarray(volumes) / full if full > 0 else np.zeros(len(volumes))
            cells.append(f"{pct.mean():.1f} +- {pct.std():.1f}{ratio}")
        print(
            f"| {arm} | "
            + " | ".join(cells)
            + f" | {row['trials']:.0f} ({row['stopped']:.1f}) | {row['epochs']:.0f} |"
        )
    print("(mean +- sd over the repetitions; in brackets the ratio to random's mean)")
    return {"pooled_volume": full, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--trials", type=int, default=12, help="random and tpe arms' trials")
    parser.add_argument("--extra", type=float, default=1.5, help="tpe+asha gets this x trials")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument(
        "--table-from", type=Path, default=None, help="print the table of a saved --json run"
    )
    args = parser.parse_args()
    from sweep.orchestrator import init_ray
    from sweep.stores import quiet_libraries

    quiet_libraries()
    if args.table_from is not None:
        print_table(json.loads(args.table_from.read_text()))
        return

    import optuna
    import ray

    from sweep.hypervolume import feasible, hypervolume_history, nadir
    from sweep.state import ran_to_end
    from sweep.stores import make_storage

    workdir = Path(tempfile.mkdtemp(prefix="moonsweep-bench-search-"))
    sweeps: list[dict[str, Any]] = []
    started = time.perf_counter()
    try:
        init_ray(None)
        total = args.repeats * len(ARMS)
        for seed in range(args.repeats):
            for arm in ARMS:
                sweeps.append(run_sweep(workdir, arm, seed, args))
                done = sweeps[-1]
                print(
                    f"[bench] {len(sweeps)}/{total} {arm} seed {seed}: "
                    f"{len(done['trials'])} trials, {done['wall_s']:.0f} s "
                    f"({time.perf_counter() - started:.0f} s in all)",
                    file=sys.stderr,
                )
        studies = [
            # Only trials that ran to the end count (early-stopped ones are COMPLETE in Optuna).
            ran_to_end(
                optuna.load_study(study_name=s.pop("name"), storage=make_storage(s.pop("storage")))
            )
            for s in sweeps
        ]
        reference = nadir(studies)
        for sweep, study in zip(sweeps, studies, strict=True):
            sweep["numbers"], sweep["volumes"] = hypervolume_history(study, reference)
            sweep["points"] = [  # to recompute with another reference point
                {"optuna": t.number, "values": t.values, "feasible": feasible(t)}
                for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
            ]
    finally:
        ray.shutdown()
        shutil.rmtree(workdir, ignore_errors=True)

    figures = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    figures.update(reference=reference, sweeps=sweeps)
    figures.update(print_table(figures))
    print(f"({time.perf_counter() - started:.0f} s in all)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
