"""Search efficiency: hypervolume per training budget, each sampler against random search.

Runs real sweeps (embedded Ray, MLflow and Optuna on SQLite in a temporary work directory)
of the `default` space (its trials, epochs and seeds unless `--trials`, `--epochs`,
`--seeds` cut them), one per arm and repetition. An arm is a sampler on that space:

- `tpe`: Optuna's TPESampler (the space's start-up trials);
- `tpe-mv` (optional): TPE modelling the parameters jointly, each `when:` branch apart
  (`multivariate`, `group`);
- `gp`: Optuna's GPSampler (constrained, multi-objective; the same start-up trials);
- `nsga2`: Optuna's NSGAIISampler;
- `random`: plain random search, the arm every other is measured against: Optuna's
  RandomSampler with every trial trained on every seed and epoch (no seed racing, no early
  stopping: the search a user runs without moonsweep's);
- `random+race` (optional): RandomSampler with the space's racing and early stopping, for
  the sampler alone against random;
- `tpe+asha` (optional, `--arms`): TPE with ASHA early stopping on `val_accuracy`
  (reduction factor 2, deciding once the mask has frozen) and `--extra` times the trials.

Everything else (baselines, constraints, test-time variants, seed racing, early stopping of
the space) is the space's own, the same in every arm but `random`. Repetition r gives every
arm sampler seed r: the arms are paired (TPE's and GP's start-up trials are random's first
draws), and the arms' order rotates from one repetition to the next so that the machine's
noise falls on all alike.

The budget is epochs x seeds trained by the searched trials (the baselines, the same in every
arm, are left out), counted in Optuna's trial order. A trial's cost is its user attr
`epochs_trained` when it has one; else epochs x seeds for a trial run to the end,
`stopped_at_epoch` x seeds for an early-stopped one, and its last logged epoch x seeds for a
failed one. The hypervolume after a budget is that of the trials within it that ran to the
end, are feasible, and neither raced out (`raced_out`) nor failed (`fail_reason`), from
Optuna's `plot_hypervolume_history`, with one reference point for every sweep of the run:
the nadir of those trials (`sweep/hypervolume.py`) pushed out by `--reference-margin` (0.1)
times each objective's range over them. At the nadir itself, a trial that is the worst on one
objective adds no volume: every trial at the densest level (density is an objective), and in
a sweep cut short, where only that level meets the accuracy constraint, every trial.

Printed, per arm: at 1/4, 1/2, 3/4 and all of random's total budget of the same repetition,
the hypervolume ratio to random's, mean of the per-repetition ratio with its 95% t interval
over repetitions (a repetition where random has no volume yet is left out, n says how many
count); and the budget, as a fraction of random's total, at which the arm first reaches
random's final hypervolume of the same repetition: the median over repetitions (one that
never reaches it counts as never), the mean and 95% t interval over those that reached it, and
how many did. `--json` writes every trial's figures; `--table-from FILE` prints the tables of
such a file again, recomputed from its trials, without training.

Run (from the repository root):
    .venv/bin/python bench/search.py --json bench/out/search.json  # 4 arms x 5 repetitions
    .venv/bin/python bench/search.py --repeats 1 --trials 10 --epochs 6 --seeds 2  # a look
"""

from __future__ import annotations

import sys
from pathlib import Path

# `python bench/search.py` puts bench/ first on sys.path, where bench/sweep.py would shadow
# the project's `sweep` package; drop that entry. The repository root goes first instead, for
# `sweep` and `bench._search`.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [str(_HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import ray  # noqa: E402
import yaml  # noqa: E402

from bench._search import REFERENCE_MARGIN, add_histories, sweep_records, volume_at  # noqa: E402
from engine.config import ConfigError  # noqa: E402
from sweep.orchestrator import SweepOptions, init_ray, start_sweep  # noqa: E402
from sweep.spaces import SearchSpace, load_space  # noqa: E402
from sweep.stats import t_interval  # noqa: E402
from sweep.stores import quiet_libraries  # noqa: E402

ARMS = ("tpe", "tpe-mv", "gp", "nsga2", "random", "random+race", "tpe+asha")
DEFAULT_ARMS = ("tpe", "gp", "nsga2", "random+race", "random")
BASE = "random"  # the arm every other is measured against
FRACTIONS = (0.25, 0.5, 0.75, 1.0)
# Volumes of the same front computed twice differ by rounding at most.
REACHED = 1 - 1e-9


def arm_space(
    arm: str, space: SearchSpace, seed: int, seeds: int | None, race_constraints: bool = False
) -> dict[str, Any]:
    """The space file of `arm` in the repetition with sampler seed `seed` (`race_constraints`:
    the space's racing also tests its constraints, `race.constraints`)."""
    data = space.model_dump(mode="json")
    if space.source_dir and (Path(space.source_dir) / space.base).is_file():
        # The file is written elsewhere: a `base` file beside the space goes by its full path.
        data["base"] = str((Path(space.source_dir) / space.base).resolve())
    name = arm.split("+")[0]
    data["sampler"] = {
        **data["sampler"],
        "name": "tpe" if name == "tpe-mv" else name,
        "seed": seed,
        "multivariate": name == "tpe-mv",
    }
    if seeds is not None:
        data["seeds"] = list(range(seeds))
        race = data.get("race")
        if race is not None and race["seeds"] >= seeds:
            # Fewer seeds than the space races on: race on all but one, or not at all.
            data["race"] = {**race, "seeds": seeds - 1} if seeds > 1 else None
    if race_constraints and data.get("race") is not None:
        data["race"] = {**data["race"], "constraints": True}
    if arm == BASE:  # plain random search: every trial trains every seed and epoch
        data["race"] = None
        data["early_stopping"] = None
    if arm == "tpe+asha":
        data["early_stopping"] = {"metric": "val_accuracy", "mode": "max", "reduction_factor": 2}
        data["report_every"] = 1  # ASHA decides at its rung, not at the next report
    return data


def run_sweep(workdir: Path, arm: str, rep: int, args: argparse.Namespace) -> dict[str, Any]:
    """Run one arm's sweep of repetition `rep`; its searched trials in Optuna's order."""
    name = f"{arm.replace('+', '-')}-r{rep}"
    space_file = workdir / f"{name}.yaml"
    data = arm_space(arm, load_space(args.space), rep, args.seeds, args.race_constraints)
    space_file.write_text(yaml.safe_dump(data, sort_keys=False))
    trials = args.trials if args.trials is not None else data["budget"]["trials"]
    if arm == "tpe+asha":
        trials = math.ceil(trials * args.extra)
    started = time.perf_counter()
    summary = start_sweep(
        SweepOptions(
            space=str(space_file),
            name=name,
            workdir=str(workdir),
            trials=trials,
            epochs=args.epochs,
            settings=args.set,
        )
    )
    wall = time.perf_counter() - started
    if summary["status"] != "finished":
        raise RuntimeError(f"sweep {name} did not finish: {summary}")
    records, epochs, seeds = sweep_records(name, workdir)
    return {
        "arm": arm,
        "rep": rep,
        "sampler_seed": rep,
        "wall_s": wall,
        "epochs": epochs,
        "seeds": seeds,
        "trials": records,
    }


# -- figures, from the trials' records alone (a live run and --table-from alike) ----------------
def first_reaching(records: list[dict[str, Any]], target: float) -> float | None:
    """The cumulative budget at which the records' hypervolume first reaches `target`."""
    for t in records:
        if t["volume_after"] >= target * REACHED:
            return float(t["cumulative_budget"])
    return None


def summarize(figures: dict[str, Any]) -> dict[str, Any]:
    """Per arm: ratios to random at each budget fraction, and the budget reaching random's
    final hypervolume, per repetition and as intervals."""
    sweeps = {(s["arm"], s["rep"]): s for s in figures["sweeps"]}
    arms = figures["arms"]
    # Repetitions every arm finished (a run cut short leaves a partial last one).
    reps = sorted(
        {s["rep"] for s in figures["sweeps"] if all((a, s["rep"]) in sweeps for a in arms)}
    )
    out: dict[str, Any] = {}
    for arm in arms:
        ratios: dict[str, list[float | None]] = {f"{f:g}": [] for f in FRACTIONS}
        reach: list[float | None] = []
        for rep in reps:
            mine, base = sweeps[(arm, rep)], sweeps[(BASE, rep)]
            total = sum(t["budget"] for t in base["trials"])
            for f in FRACTIONS:
                theirs = volume_at(base["trials"], f * total)
                mine_v = volume_at(mine["trials"], f * total)
                ratios[f"{f:g}"].append(mine_v / theirs if theirs > 0 else None)
            final = volume_at(base["trials"], total)
            spent = first_reaching(mine["trials"], final) if final > 0 else None
            reach.append(spent / total if spent is not None and total > 0 else None)
        reached = [r for r in reach if r is not None]
        # The median over every repetition, one that never reached it ranking last.
        ranked = sorted(r if r is not None else math.inf for r in reach)
        median = statistics.median(ranked) if ranked else math.inf
        trials = [sweeps[(arm, rep)]["trials"] for rep in reps]
        out[arm] = {
            "ratio": ratios,
            "ratio_interval": {
                f: t_interval([r for r in v if r is not None]).as_dict()
                if any(r is not None for r in v)
                else None
                for f, v in ratios.items()
            },
            "reach_fraction": reach,
            "reach_median": None if math.isinf(median) else median,  # None: never
            "reach_interval": t_interval(reached).as_dict() if reached else None,
            "reached": len(reached),
            "repetitions": len(reps),
            "trials_mean": statistics.mean(len(ts) for ts in trials),
            "failed_mean": statistics.mean(
                sum(t["state"] == "FAIL" or bool(t["fail_reason"]) for t in ts) for ts in trials
            ),
            "raced_out_mean": statistics.mean(sum(t["raced_out"] for t in ts) for ts in trials),
            "stopped_mean": statistics.mean(sum(t["early_stopped"] for t in ts) for ts in trials),
            "budget_mean": statistics.mean(sum(t["budget"] for t in ts) for ts in trials),
        }
    return out


def _interval(iv: dict[str, float] | None, fmt: str = ".2f") -> str:
    if iv is None:
        return "n/a (n 0)"
    if math.isnan(iv["low"]):
        return f"{iv['mean']:{fmt}} (n {iv['n']})"
    return f"{iv['mean']:{fmt}} [{iv['low']:{fmt}}, {iv['high']:{fmt}}] (n {iv['n']})"


def print_tables(figures: dict[str, Any], margin: float) -> dict[str, Any]:
    """Recompute the figures from the trials' records (reference point `margin` beyond the
    nadir) and print both tables; returns them."""
    done = {(s["arm"], s["rep"]) for s in figures["sweeps"]}
    if not any(all((a, r) in done for a in figures["arms"]) for _, r in done):
        print("no repetition was finished by every arm: nothing to compare")
        return {}
    if figures.get("partial"):
        print(f"(a run cut short: {len(figures['sweeps'])} sweeps; complete repetitions only)")
    figures["reference"] = add_histories(figures["sweeps"], figures["directions"], margin)
    figures["reference_margin"] = margin
    summary = summarize(figures)
    opts, reference = figures["args"], figures["reference"]
    reps = summary[BASE]["repetitions"]
    base_budget = summary[BASE]["budget_mean"]
    ref = ", ".join(f"{v:.4g}" for v in reference) if reference else "none (no counted trial)"
    sweep = figures["sweeps"][0]
    print(
        f"\nsearch on space {opts['space']!r}: {reps} repetition(s), sampler seeds 0-{reps - 1}; "
        f"{sweep['epochs']} epochs x {sweep['seeds']} seeds per trial, random's total budget "
        f"{base_budget:.0f} epochs x seeds (mean); reference point (nadir of the counted trials "
        f"+ {margin:g} x their range) {ref}"
    )
    print("\nhypervolume / random's at equal budget (fraction of random's total budget):")
    print("| arm | " + " | ".join(f"{f:g}" for f in FRACTIONS) + " |")
    print("|---|" + "---:|" * len(FRACTIONS))
    for arm, row in summary.items():
        cells = [_interval(row["ratio_interval"][f"{f:g}"]) for f in FRACTIONS]
        print(f"| {arm} | " + " | ".join(cells) + " |")
    print(
        "(mean of the per-repetition ratio, [95% t interval over repetitions]; n: repetitions "
        "where random had volume at that budget)"
    )
    print("\nbudget to reach random's final hypervolume (fraction of random's total budget):")
    print(
        "| arm | median | mean [95% t interval] of those that reached it | reached | trials "
        "| failed | raced out | stopped | budget used / random's |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for arm, row in summary.items():
        median = row["reach_median"]
        median_s = "never" if median is None else f"{median:.2f}"
        used = row["budget_mean"] / base_budget if base_budget else math.nan
        print(
            f"| {arm} | {median_s} | {_interval(row['reach_interval'])} "
            f"| {row['reached']}/{row['repetitions']} | {row['trials_mean']:.1f} "
            f"| {row['failed_mean']:.1f} | {row['raced_out_mean']:.1f} "
            f"| {row['stopped_mean']:.1f} | {used:.2f} |"
        )
    print("(trials, failed, raced out, stopped, budget: means over repetitions)")
    return summary


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--space", default="default", help="the space every arm searches")
    parser.add_argument("--repeats", type=int, default=5, help="repetitions (sampler seeds)")
    parser.add_argument(
        "--arms",
        default=",".join(DEFAULT_ARMS),
        help=f"comma-separated, among {', '.join(ARMS)}; random is required",
    )
    parser.add_argument("--trials", type=int, default=None, help="searched trials (the space's)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per trial (the space's)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 (the space's)")
    parser.add_argument("--extra", type=float, default=1.5, help="tpe+asha gets this x trials")
    parser.add_argument(
        "--race-constraints",
        action="store_true",
        help="racing also tests the space's constraints (race.constraints: true)",
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="fixed setting, all arms"
    )
    parser.add_argument(
        "--reference-margin",
        type=float,
        default=None,
        help=f"reference point beyond the nadir, x each objective's range ({REFERENCE_MARGIN}; "
        "0: the nadir; with --table-from: the file's)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument(
        "--table-from", type=Path, default=None, help="print the tables of a saved --json run"
    )
    args = parser.parse_args(argv)
    args.arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in args.arms if a not in ARMS]
    if unknown:
        parser.error(f"--arms: unknown {', '.join(unknown)}; arms: {', '.join(ARMS)}")
    if BASE not in args.arms:
        parser.error(f"--arms: {BASE} is required, every arm is measured against it")
    if args.reference_margin is not None and args.reference_margin < 0:
        parser.error(f"--reference-margin: {args.reference_margin}; 0 or more")
    for flag in ("repeats", "trials", "epochs", "seeds"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            parser.error(f"--{flag}: {value}; at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_libraries()
    if args.table_from is not None:
        try:
            figures = json.loads(args.table_from.read_text())
        except (OSError, ValueError) as exc:
            print(f"error: --table-from {args.table_from}: {exc}", file=sys.stderr)
            return 2
        margin = args.reference_margin
        if margin is None:
            margin = figures.get("reference_margin", REFERENCE_MARGIN)
        print_tables(figures, margin)
        return 0
    margin = REFERENCE_MARGIN if args.reference_margin is None else args.reference_margin
    try:
        directions = [o.direction for o in load_space(args.space).objectives]
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args_out = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    header: dict[str, Any] = {"args": args_out, "arms": args.arms, "directions": directions}
    workdir = Path(tempfile.mkdtemp(prefix="moonsweep-bench-search-"))
    sweeps: list[dict[str, Any]] = []
    started = time.perf_counter()
    total = args.repeats * len(args.arms)
    try:
        init_ray(None)
        for rep in range(args.repeats):
            k = rep % len(args.arms)  # rotated: the machine's noise falls on every arm alike
            for arm in args.arms[k:] + args.arms[:k]:
                print(
                    f"[bench] sweep {len(sweeps) + 1}/{total}: {arm}, repetition {rep} "
                    f"({time.perf_counter() - started:.0f} s elapsed)",
                    file=sys.stderr,
                    flush=True,
                )
                sweeps.append(run_sweep(workdir, arm, rep, args))
                done, elapsed = sweeps[-1], time.perf_counter() - started
                left = elapsed / len(sweeps) * (total - len(sweeps))
                print(
                    f"[bench]   {len(done['trials'])} trials, "
                    f"{sum(t['budget'] for t in done['trials'])} epochs x seeds, "
                    f"{done['wall_s']:.0f} s; about {left / 60:.0f} min to go",
                    file=sys.stderr,
                    flush=True,
                )
                if args.json:  # so far: a run cut short keeps its finished sweeps
                    write_json(args.json, {**header, "sweeps": sweeps, "partial": True})
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        ray.shutdown()
        shutil.rmtree(workdir, ignore_errors=True)
    figures: dict[str, Any] = dict(header)
    figures["sweeps"] = sorted(sweeps, key=lambda s: (s["rep"], args.arms.index(s["arm"])))
    figures["summary"] = print_tables(figures, margin)
    figures["wall_s"] = time.perf_counter() - started
    print(f"({figures['wall_s']:.0f} s in all)")
    if args.json:
        write_json(args.json, figures)
    return 0


def write_json(path: Path, figures: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    sys.exit(main())
