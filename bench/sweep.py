"""Wall time and orchestration overhead of a sweep; two spaces side by side with `--compare`.

Runs real sweeps (embedded Ray, MLflow and Optuna on SQLite in a temporary work directory).
For each it prints wall time, Ray's start-up, the trials' own training time summed, the
concurrency C and the overhead ratio wall / (sum of trial times / C), with and without Ray's
start-up (target of the project: at most 1.25 for the default sweep on 2 cores), and its
searched trials: how many failed (Optuna FAIL, or a `fail_reason`), raced out, stopped early.

`--compare OLD NEW` runs the two spaces one after the other in the same invocation (order
alternating from one `--repeats` repetition to the next, so the machine's drift falls on both
alike), each with a fresh Ray as a user's `moonsweep run` would have, and adds the ratio of
wall times NEW / OLD and each one's final hypervolume over the same reference point (the
nadir of both sweeps' finished, feasible trials that neither raced out nor failed, pushed
out by `--reference-margin` times each objective's range; see `bench/_search.py`).
`bench/spaces/default-before-14.yaml` is the default space as it was at the start of
issue 14; `--old-code COMMIT` runs OLD on the code of that commit (checked out in a
temporary git worktree, in a process of its own), so the comparison is with the sweep as it
was then, not with the old space on today's faster code.

Trial time is Ray's `time_total_s` of each trial (its function running: data, training of
every seed, evaluation, reports, checkpoints). Everything else (Ray scheduling, actor
start, the searcher, MLflow logging, the experiment checkpoints) is overhead. A second
table says where it is (`phases`): the start to the first trial's start (Ray's start, the
stores, the workers' first imports), the trials in flight against the ideal (gaps between
trials, the last one running alone), and the last trial's end to the sweep's.

Run (from the repository root):
    .venv/bin/python bench/sweep.py                         # the default sweep
    .venv/bin/python bench/sweep.py --trials 4 --epochs 10  # a quick look
    .venv/bin/python bench/sweep.py --compare bench/spaces/default-before-14.yaml default
    .venv/bin/python bench/sweep.py --compare bench/spaces/default-before-14.yaml default \
        --old-code ec1d59f                                  # issue 14's start, its code too
"""

from __future__ import annotations

import sys
from pathlib import Path

# `python bench/sweep.py` puts bench/ first on sys.path, where this file would shadow the
# project's `sweep` package; drop that entry. The repository root goes first instead, for
# `sweep` and `bench._search`.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [str(_HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from contextlib import ExitStack, contextmanager  # noqa: E402
from typing import Any  # noqa: E402

import ray  # noqa: E402
from ray.tune import ExperimentAnalysis  # noqa: E402

from bench._search import (  # noqa: E402
    REFERENCE_MARGIN,
    add_histories,
    final_volume,
    on_test_parts,
    sweep_records,
)
from engine.config import ConfigError  # noqa: E402
from sweep.orchestrator import SweepOptions, start_sweep  # noqa: E402
from sweep.spaces import SEARCH_ARM, load_space  # noqa: E402
from sweep.stores import quiet_libraries  # noqa: E402

TARGET_OVERHEAD = 1.25
TARGET_WALL_RATIO = 0.60  # issue 14: the new default sweep against the one at its start


# A sweep on the code of another commit (`--old-code`), in a process of its own: that
# code's `sweep` and `engine` come first on its path (and its Ray workers', through
# PYTHONPATH). Ray is started first and timed, as that code's bench did.
OLD_CODE_RUNNER = """
import json, sys, time
from sweep.orchestrator import SweepOptions, init_ray, start_sweep
space, name, workdir, trials, epochs, concurrent = sys.argv[1:7]
number = lambda v: int(v) if v else None
started, started_at = time.perf_counter(), time.time()
init_ray(None)
ray_start = time.perf_counter() - started
summary = start_sweep(SweepOptions(space=space, name=name, workdir=workdir,
    trials=number(trials), epochs=number(epochs), max_concurrent=number(concurrent)))
print(json.dumps({**summary, "wall_s": time.perf_counter() - started, "ray_start_s": ray_start,
                  "started_at": started_at}))
"""


def _sweep_here(space: str, name: str, workdir: Path, args: argparse.Namespace) -> dict:
    started, started_at = time.perf_counter(), time.time()
    try:
        # Ray starts inside, as in `moonsweep run` (beside the stores' set-up).
        summary = start_sweep(
            SweepOptions(
                space=space,
                name=name,
                workdir=str(workdir),
                trials=args.trials,
                epochs=args.epochs,
                max_concurrent=args.max_concurrent,
            )
        )
    finally:
        ray.shutdown()  # the next sweep starts its own Ray, as a user's next run would
    return {**summary, "wall_s": time.perf_counter() - started, "started_at": started_at}


def _sweep_on(code: Path, space: str, name: str, workdir: Path, args: argparse.Namespace) -> dict:
    """The sweep run by the code checked out at `code`."""
    local = Path(space)
    if local.suffix in (".yaml", ".yml") and local.exists():
        space = str(local.resolve())  # the process runs in `code`
    numbers = [str(v) if v is not None else "" for v in (args.trials, args.epochs)]
    numbers.append(str(args.max_concurrent) if args.max_concurrent is not None else "")
    env = dict(os.environ, PYTHONPATH=str(code))
    done = subprocess.run(
        [sys.executable, "-c", OLD_CODE_RUNNER, space, name, str(workdir), *numbers],
        cwd=code,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"sweep of {space} on {code} failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_one(
    space: str, index: int, args: argparse.Namespace, code: Path | None = None
) -> dict[str, Any]:
    """One sweep of `space` with a fresh Ray (on the code at `code`, else this code); its
    timings and its searched trials."""
    workdir = Path(tempfile.mkdtemp(prefix="moonsweep-bench-"))
    name = f"bench{index}"
    try:
        if code is None:
            summary = _sweep_here(space, name, workdir, args)
        else:
            summary = _sweep_on(code, space, name, workdir, args)
        wall = float(summary["wall_s"])
        ray_start = float(summary.get("ray_start_s", 0.0))
        if summary["status"] != "finished":
            raise RuntimeError(f"sweep of {space} did not finish: {summary}")
        folder = Path(summary["folder"])
        state = json.loads((folder / "sweep.json").read_text())
        concurrency = state["space"]["budget"]["max_concurrent"]
        trials = ExperimentAnalysis(str(folder / "ray")).trials
        trial_times = [float((t.last_result or {}).get("time_total_s", 0.0)) for t in trials]
        split = phases(trials, float(summary["started_at"]), wall)
        searched_times = [
            s for t, s in zip(trials, trial_times, strict=True) if t.config.get("arm") == SEARCH_ARM
        ]
        records, epochs, seeds = sweep_records(name, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    ideal = sum(trial_times) / concurrency
    return {
        "space": space,
        "trials": len(trials),
        "searched": len(records),
        "failed": sum(r["state"] == "FAIL" or bool(r["fail_reason"]) for r in records),
        "raced_out": sum(r["raced_out"] for r in records),
        "early_stopped": sum(r["early_stopped"] for r in records),
        "epochs": epochs,
        "seeds": seeds,
        "concurrency": concurrency,
        "cpus": float(os.cpu_count() or 1),
        "wall_s": wall,
        "ray_start_s": ray_start,
        "sum_trial_s": sum(trial_times),
        "searched_trial_s": sum(searched_times),
        "baseline_trial_s": sum(trial_times) - sum(searched_times),
        "ideal_s": ideal,
        "overhead": wall / ideal,
        "overhead_after_start": (wall - ray_start) / ideal,
        **split,
        "in_flight_ratio": split["in_flight_s"] / ideal,
        "records": records,
    }


def phases(trials: list[Any], started_at: float, wall: float) -> dict[str, float]:
    """Where a sweep's wall time goes, from Ray's record of each trial (clock times): from
    the start to the first trial's start (Ray's start, the stores, the workers' imports),
    from there to the last trial's last result (`in_flight_s`: trials, the gaps between
    them, the last one running alone), and from there to the end (reconcile, the per-level
    comparisons, the final writes)."""
    starts = [t.run_metadata.start_time for t in trials if t.run_metadata.start_time]
    ends = [t.run_metadata.last_result_time for t in trials if t.run_metadata.last_result_time]
    if not starts or not ends:
        return {"to_first_trial_s": math.nan, "in_flight_s": math.nan, "after_last_s": math.nan}
    first, last = min(starts), max(ends)
    return {
        "to_first_trial_s": first - started_at,
        "in_flight_s": last - first,
        "after_last_s": started_at + wall - last,
    }


def print_runs(runs: list[dict[str, Any]]) -> None:
    """One table row per sweep, in the order they ran."""
    print(
        "| # | space | trials (searched) | failed | raced out | stopped | wall s | Ray start s "
        "| sum of trial s (baselines + searched) | C | ideal s (sum / C) | overhead | w/o start |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for i, r in enumerate(runs):
        print(
            f"| {i} | {r['space']}{'' if r['code'] == 'this' else ' @ ' + r['code']} "
            f"| {r['trials']} ({r['searched']}) | {r['failed']} "
            f"| {r['raced_out']} | {r['early_stopped']} | {r['wall_s']:.1f} "
            f"| {r['ray_start_s']:.1f} | {r['sum_trial_s']:.1f} ({r['baseline_trial_s']:.1f} "
            f"+ {r['searched_trial_s']:.1f}) | {r['concurrency']} "
            f"| {r['ideal_s']:.1f} | {r['overhead']:.2f} | {r['overhead_after_start']:.2f} |"
        )
    print(
        "\nwhere the overhead is (seconds of wall): start to the first trial (Ray's start in "
        "it), the trials in flight (against the ideal), the last trial's end to the end"
    )
    print("| # | to first trial (Ray start) | in flight / ideal | after last trial |")
    print("|---:|---:|---:|---:|")
    for i, r in enumerate(runs):
        print(
            f"| {i} | {r['to_first_trial_s']:.1f} ({r['ray_start_s']:.1f}) "
            f"| {r['in_flight_s']:.1f} / {r['ideal_s']:.1f} = {r['in_flight_ratio']:.2f} "
            f"| {r['after_last_s']:.1f} |"
        )


def compare(runs: list[dict[str, Any]], old: str, new: str, margin: float) -> dict[str, Any]:
    """Wall ratio new / old (per repetition and median), the final hypervolumes over one
    reference point (`margin` beyond the nadir), and the overhead of each; printed."""
    directions = {
        space: [o.direction for o in load_space(space).objectives] for space in (old, new)
    }
    figures: dict[str, Any] = {}
    if directions[old] == directions[new]:
        figures["reference"] = add_histories(
            [{"trials": r["records"]} for r in runs], directions[new], margin
        )
        for r in runs:
            r["final_volume"] = final_volume(r["records"])
        # The same on the test parts (own reference point): free of the pick's bias.
        tests = [{"trials": on_test_parts(r["records"])} for r in runs]
        figures["test_reference"] = add_histories(tests, directions[new], margin)
        for r, t in zip(runs, tests, strict=True):
            r["final_test_volume"] = final_volume(t["trials"])
    else:
        figures["reference"] = None
        print(f"(the spaces' objectives differ, {old} vs {new}: no shared hypervolume)")
    olds = [r for r in runs if r["space"] == old]
    news = [r for r in runs if r["space"] == new]
    ratios = [n["wall_s"] / o["wall_s"] for o, n in zip(olds, news, strict=True)]
    figures["wall_ratio"] = ratios
    figures["wall_ratio_median"] = statistics.median(ratios)
    print(f"\n{new} vs {old}, {len(ratios)} repetition(s), order alternating:")
    print(
        "| space | wall s (median) | final hypervolume, validation (median) "
        "| on the test parts (median) | overhead (median) |"
    )
    print("|---|---:|---:|---:|---:|")
    for space, mine in ((old, olds), (new, news)):
        volumes = [
            f"{statistics.median(r[key] for r in mine):.4g}"
            if figures["reference"] is not None
            else "n/a"
            for key in ("final_volume", "final_test_volume")
        ]
        print(
            f"| {space} | {statistics.median(r['wall_s'] for r in mine):.1f} | {volumes[0]} "
            f"| {volumes[1]} | {statistics.median(r['overhead'] for r in mine):.2f} |"
        )
    ref = figures["reference"]
    print(
        f"wall ratio new / old: {figures['wall_ratio_median']:.2f} (median; per repetition "
        + ", ".join(f"{x:.2f}" for x in ratios)
        + f"); hypervolume reference point (nadir of both + {margin:g} x range): "
        + (", ".join(f"{v:.4g}" for v in ref) if ref else "none")
    )
    if ref is not None:
        pairs = list(zip(olds, news, strict=True))
        larger = [n["final_volume"] >= o["final_volume"] for o, n in pairs]
        larger_test = [n["final_test_volume"] >= o["final_test_volume"] for o, n in pairs]
        figures["volume_at_least_old"] = larger
        figures["test_volume_at_least_old"] = larger_test
        print(
            f"target: wall ratio <= {TARGET_WALL_RATIO} -> {figures['wall_ratio_median']:.2f}, "
            f"{'met' if figures['wall_ratio_median'] <= TARGET_WALL_RATIO else 'NOT met'}; "
            f"final hypervolume new >= old in {sum(larger)} of {len(larger)} repetition(s) "
            f"(on the test parts: {sum(larger_test)} of {len(larger_test)})"
        )
    return figures


@contextmanager
def worktree(commit: str) -> Iterator[Path]:
    """The repository's code at `commit`, checked out in a temporary folder."""
    folder = Path(tempfile.mkdtemp(prefix="moonsweep-old-code-"))
    root = _HERE.parent
    subprocess.run(
        ["git", "-C", str(root), "worktree", "add", "--detach", str(folder), commit],
        check=True,
        capture_output=True,
    )
    try:
        yield folder
    finally:
        subprocess.run(
            ["git", "-C", str(root), "worktree", "remove", "--force", str(folder)],
            check=False,
            capture_output=True,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--space", default="default")
    parser.add_argument(
        "--compare", nargs=2, metavar=("OLD", "NEW"), default=None, help="two spaces, one run"
    )
    parser.add_argument(
        "--old-code",
        default=None,
        metavar="COMMIT",
        help="with --compare: run OLD on the code at this commit (a git worktree)",
    )
    parser.add_argument("--repeats", type=int, default=1, help="sweeps of each space")
    parser.add_argument("--trials", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--max-concurrent", type=int, default=None)
    parser.add_argument(
        "--reference-margin",
        type=float,
        default=REFERENCE_MARGIN,
        help="hypervolume reference point beyond the nadir, x each objective's range",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats: {args.repeats}; at least 1")
    if args.old_code and (not args.compare or args.compare[0] == args.compare[1]):
        parser.error("--old-code needs --compare OLD NEW with two different spaces")
    spaces = list(args.compare) if args.compare else [args.space]
    quiet_libraries()
    try:
        for space in spaces:  # a wrong name or a bad file: one message before any sweep
            load_space(space)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    order = [
        space for rep in range(args.repeats) for space in (spaces if rep % 2 == 0 else spaces[::-1])
    ]
    runs: list[dict[str, Any]] = []
    with ExitStack() as stack:
        code = stack.enter_context(worktree(args.old_code)) if args.old_code else None
        for i, space in enumerate(order):
            print(
                f"[bench] sweep {i + 1}/{len(order)}: {space} "
                f"({time.perf_counter() - started:.0f} s elapsed)",
                file=sys.stderr,
                flush=True,
            )
            old = args.compare is not None and space == args.compare[0]
            run = run_one(space, i, args, code if old else None)
            runs.append({**run, "code": args.old_code if old else "this"})
    print_runs(runs)
    figures: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}}
    if args.compare:
        figures.update(compare(runs, *args.compare, args.reference_margin))
    # The target is the space measured (with --compare, the new one).
    overhead = statistics.median(r["overhead"] for r in runs if r["space"] == spaces[-1])
    verdict = "met" if overhead <= TARGET_OVERHEAD else "NOT met"
    print(f"target: overhead of {spaces[-1]} <= {TARGET_OVERHEAD} -> {overhead:.2f}, {verdict}")
    figures["runs"] = runs
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
