"""What a sweep costs per trial as it grows: N = 100, 1,000, 5,000 trials through one driver.

Each N is a real sweep of the default space (embedded Ray, MLflow and Optuna on SQLite in a
fresh work directory, the bundled digits suite, its baselines, levels and sampler) with
trials as cheap as the engine allows: `--epochs` (2: MOON's warm-up needs one) epochs,
`--seeds` (1) seed (with more, racing on all but one), the MLP `--width` (32) wide, the
test-time grid off unless `--test-time`. Each N runs in its own process, so the driver's
peak memory is that sweep's alone.
Per N it prints:

- wall time, Ray's start-up, the trials' own time summed (Ray's `time_total_s`), the
  concurrency C, and the driver's time per trial: (wall - start-up - sum / C) / N;
- Optuna's suggestion time per searched trial (`SweepSearcher.suggest`, timed in the
  driver), mean over the first and the last 10% of the suggestions;
- the MLflow writer: writes queued, the largest backlog (writes waiting), its write rate
  (writes per second it spent writing), and how long the end of the sweep waited for it;
- the sizes of `mlflow.db`, `optuna.db`, the MLflow artifacts and Ray's experiment folder;
- the driver's peak resident memory (`getrusage`);
- the time a user waits for `moonsweep status`, `select`, `report` and `resume` of the
  finished sweep, each a fresh process as typed (`resume`: the sweep marked interrupted
  after it finished, i.e. a driver killed at the very end: Ray restores the experiment,
  the stores are reconciled, the levels compared again).

The timing of `suggest` and of the writer is read by wrapping those two methods in this
process (nothing else changes): the figures are the driver's own.

Run (from the repository root):
    .venv/bin/python bench/scale.py                       # N = 100, 1000, 5000 (hours)
    .venv/bin/python bench/scale.py --sizes 100,1000      # about 20 min on 2 cores
    .venv/bin/python bench/scale.py --sizes 5 --json bench/out/scale.json   # seconds-ish
"""

from __future__ import annotations

import sys
from pathlib import Path

# `python bench/scale.py` puts bench/ first on sys.path, where bench/sweep.py would shadow
# the project's `sweep` package; the repository root goes first instead.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [str(_HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import ray  # noqa: E402
import yaml  # noqa: E402
from ray.tune import ExperimentAnalysis  # noqa: E402

from sweep.orchestrator import SweepOptions, init_ray, start_sweep  # noqa: E402
from sweep.search import SweepSearcher  # noqa: E402
from sweep.spaces import load_space  # noqa: E402
from sweep.stores import quiet_libraries  # noqa: E402
from sweep.tracking import MlflowTracking  # noqa: E402

TARGET_DRIVER_RATIO = 1.5  # driver time per trial, largest N / smallest N
TARGET_READ_S = 30.0  # status, select, report of the largest sweep
TARGET_MEMORY_RATIO = 2.0  # the driver's peak memory, largest N / smallest N
COMMANDS = ("status", "select", "report", "resume")


def scale_space(
    space_name: str, trials: int, seeds: int, width: int, test_time: bool = False
) -> dict[str, Any]:
    """The space (default: `default`) with `trials` searched trials on `seeds` seeds
    (racing on all but one of them, none with one seed), the model `width` wide, and its
    test-time grid only with `test_time` (each variant is an evaluation in the trial)."""
    space = load_space(space_name)
    data = space.model_dump(mode="json")
    if space.source_dir and (Path(space.source_dir) / space.base).is_file():
        data["base"] = str((Path(space.source_dir) / space.base).resolve())
    data["seeds"] = list(range(seeds))
    if data.get("race") is not None:
        data["race"] = {**data["race"], "seeds": seeds - 1} if seeds > 1 else None
    data["budget"] = {**data["budget"], "trials": trials}
    data["set"] = {**data.get("set", {}), "model.width": width}
    if not test_time:
        data["test_time"] = None
    return data


class Probe:
    """Times `SweepSearcher.suggest` and the MLflow writer's calls in this process."""

    def __init__(self) -> None:
        self.suggest_s: list[float] = []  # searched trials only (a baseline asks no sampler)
        self.queued = 0
        self.max_backlog = 0
        self.writes = 0
        self.write_s = 0.0

    def install(self) -> None:
        suggest, submit, write = (
            SweepSearcher.suggest,
            MlflowTracking._submit,
            MlflowTracking._write,
        )
        probe = self

        def timed_suggest(searcher: SweepSearcher, trial_id: str) -> Any:
            baseline = bool(searcher.pending_arms)
            started = time.perf_counter()
            out = suggest(searcher, trial_id)
            if not baseline and isinstance(out, dict):
                probe.suggest_s.append(time.perf_counter() - started)
            return out

        def counted_submit(tracking: MlflowTracking, fn: Any, *args: Any) -> None:
            submit(tracking, fn, *args)
            probe.queued += 1
            if tracking._queue is not None:
                probe.max_backlog = max(probe.max_backlog, tracking._queue.qsize())

        def timed_write(tracking: MlflowTracking, fn: Any, args: tuple) -> bool:
            started = time.perf_counter()
            try:
                return write(tracking, fn, args)
            finally:
                probe.writes += 1
                probe.write_s += time.perf_counter() - started

        SweepSearcher.suggest = timed_suggest  # type: ignore[method-assign]
        MlflowTracking._submit = counted_submit  # type: ignore[method-assign]
        MlflowTracking._write = timed_write  # type: ignore[method-assign]


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def _timed(argv: list[str], env: dict[str, str]) -> tuple[float, int, str]:
    started = time.perf_counter()
    out = subprocess.run(argv, capture_output=True, text=True, env=env)
    tail = (out.stdout + out.stderr).strip().splitlines()[-3:]
    return time.perf_counter() - started, out.returncode, " | ".join(tail)


def one(trials: int, args: argparse.Namespace) -> dict[str, Any]:
    """One sweep of `trials` searched trials in this process, then the user's commands."""
    quiet_libraries()
    probe = Probe()
    probe.install()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="moonsweep-scale-"))
    workdir.mkdir(parents=True, exist_ok=True)
    space_file = workdir / "scale.yaml"
    data = scale_space(args.space, trials, args.seeds, args.width, args.test_time)
    space_file.write_text(yaml.safe_dump(data, sort_keys=False))
    name = f"scale{trials}"
    started = time.perf_counter()
    init_ray(None)
    ray_start = time.perf_counter() - started
    summary = start_sweep(
        SweepOptions(space=str(space_file), name=name, workdir=str(workdir), epochs=args.epochs)
    )
    wall = time.perf_counter() - started
    folder = Path(summary["folder"])
    state = json.loads((folder / "sweep.json").read_text())
    concurrency = state["space"]["budget"]["max_concurrent"]
    ray_trials = ExperimentAnalysis(str(folder / "ray")).trials
    trial_s = sum(float((t.last_result or {}).get("time_total_s", 0.0)) for t in ray_trials)
    ray.shutdown()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tenth = max(1, len(probe.suggest_s) // 10)
    result: dict[str, Any] = {
        "n": trials,
        "status": summary["status"],
        "trials": len(ray_trials),
        "wall_s": wall,
        "ray_start_s": ray_start,
        "sum_trial_s": trial_s,
        "concurrency": concurrency,
        "driver_s_per_trial": (wall - ray_start - trial_s / concurrency) / len(ray_trials),
        "suggested": len(probe.suggest_s),
        "suggest_first_s": statistics.mean(probe.suggest_s[:tenth]) if probe.suggest_s else 0,
        "suggest_last_s": statistics.mean(probe.suggest_s[-tenth:]) if probe.suggest_s else 0,
        "mlflow_queued": probe.queued,
        "mlflow_max_backlog": probe.max_backlog,
        "mlflow_writes_per_s": probe.writes / probe.write_s if probe.write_s else 0.0,
        "mlflow_write_s": probe.write_s,
        "sizes_mb": {
            key: _size(path) / 2**20
            for key, path in {
                "mlflow.db": workdir / "mlflow.db",
                "optuna.db": workdir / "optuna.db",
                "mlartifacts": workdir / "mlartifacts",
                "ray": folder / "ray",
            }.items()
        },
        "driver_peak_mb": peak_mb,
        "commands": {},
    }
    env = {**os.environ, "MOONSWEEP_WORKDIR": str(workdir)}
    cli = [str(Path(sys.executable).parent / "moonsweep")]
    for command in COMMANDS:
        if command == "resume":  # a driver killed after the last trial: restore and reconcile
            sweep_json = folder / "sweep.json"
            sweep_json.write_text(json.dumps({**state, "status": "interrupted"}))
        argv = [*cli, command, name]
        if command == "select":
            argv.append("--no-space-constraints")  # a 2-epoch sweep rarely meets dense - 5
        seconds, rc, tail = _timed(argv, env)
        result["commands"][command] = {"s": seconds, "rc": rc, "tail": tail}
    if not args.keep and not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        result["workdir"] = str(workdir)
    return result


def print_table(results: list[dict[str, Any]]) -> None:
    print(
        "| N | trials | wall s | sum of trial s / C | driver s / trial | suggest s first / last "
        "| MLflow queued, max backlog, writes/s | mlflow.db / optuna.db / artifacts / ray MB "
        "| peak MB | status / select / report / resume s |"
    )
    print("|---:|---:|---:|---:|---:|---|---|---|---:|---|")
    for r in results:
        sizes = r["sizes_mb"]
        cmds = r["commands"]
        print(
            f"| {r['n']} | {r['trials']} | {r['wall_s']:.0f} "
            f"| {r['sum_trial_s'] / r['concurrency']:.0f} | {r['driver_s_per_trial']:.3f} "
            f"| {r['suggest_first_s']:.3f} / {r['suggest_last_s']:.3f} "
            f"| {r['mlflow_queued']}, {r['mlflow_max_backlog']}, {r['mlflow_writes_per_s']:.0f} "
            f"| {sizes['mlflow.db']:.1f} / {sizes['optuna.db']:.1f} / {sizes['mlartifacts']:.1f}"
            f" / {sizes['ray']:.1f} | {r['driver_peak_mb']:.0f} | "
            + " / ".join(
                f"{cmds[c]['s']:.1f}" + ("" if cmds[c]["rc"] == 0 else f" (exit {cmds[c]['rc']})")
                for c in COMMANDS
            )
            + " |"
        )


def targets(results: list[dict[str, Any]]) -> dict[str, bool]:
    """The issue's targets, largest N against the smallest; printed."""
    small, large = results[0], results[-1]
    driver = large["driver_s_per_trial"] / max(small["driver_s_per_trial"], 1e-9)
    memory = large["driver_peak_mb"] / small["driver_peak_mb"]
    reads = max(large["commands"][c]["s"] for c in ("status", "select", "report"))
    met = {
        "driver": driver <= TARGET_DRIVER_RATIO,
        "reads": reads <= TARGET_READ_S,
        "memory": memory <= TARGET_MEMORY_RATIO,
    }
    print(
        f"N={large['n']} vs N={small['n']}: driver time per trial x{driver:.2f} "
        f"(target <= {TARGET_DRIVER_RATIO}: {'met' if met['driver'] else 'NOT met'}); "
        f"slowest of status/select/report {reads:.1f} s (target <= {TARGET_READ_S:g}: "
        f"{'met' if met['reads'] else 'NOT met'}); peak memory x{memory:.2f} "
        f"(target <= {TARGET_MEMORY_RATIO}: {'met' if met['memory'] else 'NOT met'})"
    )
    return met


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100,1000,5000", help="numbers of searched trials")
    parser.add_argument("--space", default="default", help="a shipped space's name or a file")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--width", type=int, default=32, help="the MLP's width (model.width)")
    parser.add_argument("--test-time", action="store_true", help="keep the space's test-time grid")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep each sweep's work directory")
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one is not None:  # the child process of one N: figures as JSON on stdout's end
        print("SCALE " + json.dumps(one(args.one, args)))
        return 0
    results = []
    for n in [int(x) for x in args.sizes.split(",")]:
        print(f"[scale] N={n} ...", file=sys.stderr, flush=True)
        child = [sys.executable, __file__, "--one", str(n), "--epochs", str(args.epochs)]
        child += ["--seeds", str(args.seeds), "--space", args.space, "--width", str(args.width)]
        child += ["--keep"] if args.keep else []
        child += ["--test-time"] if args.test_time else []
        out = subprocess.run(child, stdout=subprocess.PIPE, text=True)
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith("SCALE ")]
        if out.returncode != 0 or not lines:
            print(f"N={n}: the sweep's process exited {out.returncode}", file=sys.stderr)
            return 1
        results.append(json.loads(lines[-1][len("SCALE ") :]))
        print(f"[scale] N={n}: {results[-1]['wall_s']:.0f} s", file=sys.stderr, flush=True)
    print_table(results)
    met = targets(results) if len(results) > 1 else {}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"results": results, "targets": met}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
