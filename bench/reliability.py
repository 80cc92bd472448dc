"""Reliability figures: SIGKILLed drivers resumed, and fuzzed bad input answered.

Kills: each round runs one real sweep (embedded Ray, MLflow and Optuna on SQLite, 1
baseline + 4 searched trials of 4 epochs) and SIGKILLs its driver three times, resuming after
each: during the first trial, between trials, and while a trial's checkpoint file is being
written (tests/chaos.py, with the test-only failpoints of engine/faults.py). A final resume
runs it to its end; then the stores are audited against what had finished before each kill:

- trials lost: finished before a kill, not FINISHED in MLflow at the end;
- trials run twice: finished before a kill, then trained again (a newer Ray checkpoint) or
  their MLflow run completed again (a changed end time);
- duplicate MLflow runs: more than one child run for a Ray trial, or more runs than trials;
- stale Optuna trials: left RUNNING at the end.

A round's three kills count as survived when its last resume finishes with zeros in all four.

Bad input: hypothesis draws `--set` overrides, search-space files, command lines and
constraint expressions (tests/badinput.py); a bad one is answered when it gets one clear
error (ConfigError, or exit code 2 with a message, no traceback, nothing written). Drawn
inputs that happen to be valid are counted apart.

On the shipped default space (`--space default`): each round is the issue's user, `moonsweep
run --trials 6 --epochs 12` of the default space as shipped (cut only by the command line;
`--set` adds fixed settings), its whole process group SIGKILLed at a random moment in
`--kill-between` seconds (default 15-90), then `moonsweep resume` (must exit 0) and `resume`
once more (must say "already finished", exit 0). `--sigint-rounds` more rounds send SIGINT to
the group instead (Ctrl-C in a terminal; the driver must exit 130). A round survives when the
signal landed mid-run and the audit finds one MLflow child run per trial and baseline, all
FINISHED, none RUNNING, no Optuna trial RUNNING, no trial lost or trained twice. A moment
drawn after the sweep had ended is counted apart (not a kill) and drawn again.

Run (from the repository root):
    .venv/bin/python bench/reliability.py                     # 1 round, 100 inputs per kind
    .venv/bin/python bench/reliability.py --rounds 2 --json bench/out/reliability.json
    .venv/bin/python bench/reliability.py --space default --rounds 5 --sigint-rounds 1
"""

from __future__ import annotations

import sys
from pathlib import Path

# `python bench/reliability.py` puts bench/ first on sys.path (it would shadow nothing
# here, but keep the scripts alike); the shared harness lives in tests/.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path[:0] = [str(_HERE.parent), str(_HERE.parent / "tests")]

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402


def kill_rounds(rounds: int) -> dict[str, int]:
    from chaos import counts, kill_resume_chain

    totals = {
        "kills_tried": 0,
        "kills_survived": 0,
        "trials_lost": 0,
        "trials_run_twice": 0,
        "duplicate_mlflow_runs": 0,
        "stale_optuna_trials": 0,
        "lingering_ray_processes_max": 0,
    }
    for i in range(rounds):
        root = Path(tempfile.mkdtemp(prefix="moonsweep-kills-"))
        started = time.monotonic()
        try:
            chain = kill_resume_chain(root)
        except TimeoutError as exc:  # a resumed driver never got to its kill point
            print(f"round {i + 1}: {exc}", file=sys.stderr)
            totals["kills_tried"] += 3
            continue
        report = chain["audit"]
        totals["kills_tried"] += len(chain["kills"])
        clean = chain["final"].returncode == 0 and report["status"] == "finished"
        clean = clean and not any(
            report[k] for k in ("lost", "run_twice", "duplicate_runs", "stale_optuna")
        )
        totals["kills_survived"] += len(chain["kills"]) if clean else 0
        totals["trials_lost"] += report["lost"]
        totals["trials_run_twice"] += report["run_twice"]
        totals["duplicate_mlflow_runs"] += report["duplicate_runs"]
        totals["stale_optuna_trials"] += report["stale_optuna"]
        lingering = max(k["lingering"] for k in chain["kills"])
        totals["lingering_ray_processes_max"] = max(
            totals["lingering_ray_processes_max"], lingering
        )
        print(
            f"round {i + 1}: {time.monotonic() - started:.0f} s, audit {counts(report)}",
            file=sys.stderr,
        )
        shutil.rmtree(root, ignore_errors=True)
    return totals


def default_rounds(
    kills: int, sigints: int, between: tuple[float, float], run_args: list[str], seed: int
) -> tuple[dict[str, int], list[dict]]:
    """SIGKILL (then SIGINT) rounds of the shipped default space at random moments."""
    import random
    import signal

    from chaos import counts, interrupt_and_resume

    rng = random.Random(seed)
    totals = {
        "kills_tried": 0, "kills_survived": 0, "sigints_tried": 0, "sigints_survived": 0,
        "after_the_end": 0, "trials_lost": 0, "trials_run_twice": 0,
        "duplicate_mlflow_runs": 0, "running_mlflow_runs": 0, "stale_optuna_trials": 0,
    }  # fmt: skip
    rows: list[dict] = []
    # A moment drawn after the sweep's end is no kill: draw again (up to 3x the rounds), so
    # the figures count signals that landed mid-run, uniform over what of the window the run
    # lasts.
    plan = [signal.SIGKILL] * kills + [signal.SIGINT] * sigints
    wanted = {sig: plan.count(sig) for sig in set(plan)}
    attempts = 0
    while any(wanted.values()) and attempts < 3 * len(plan):
        sig = next(s for s in plan if wanted.get(s))
        attempts += 1
        i = len(rows)
        at = rng.uniform(*between)
        root = Path(tempfile.mkdtemp(prefix="moonsweep-default-"))
        started = time.monotonic()
        chain = interrupt_and_resume(root, run_args, sig=sig, after=at)
        report = counts(chain["audit"])
        kind = "kill" if sig == signal.SIGKILL else "sigint"
        resumed = chain["resume"].returncode == 0
        again = chain["again"].returncode == 0 and "already finished" in chain["again"].stderr
        exit_ok = sig == signal.SIGKILL or chain["exit"] == 130
        clean = resumed and again and exit_ok and report["status"] == "finished"
        clean = clean and report["runs"] == report["expected"] == report["finished_runs"]
        clean = clean and not any(
            report[k] for k in ("lost", "run_twice", "duplicate_runs", "stale_optuna",
                                "running_runs", "optuna_mismatch", "spooled")
        )  # fmt: skip
        if not chain["mid_run"]:
            totals["after_the_end"] += 1
        else:
            wanted[sig] -= 1
            totals[f"{kind}s_tried"] += 1
            totals[f"{kind}s_survived"] += int(clean)
        totals["trials_lost"] += report["lost"]
        totals["trials_run_twice"] += report["run_twice"]
        totals["duplicate_mlflow_runs"] += report["duplicate_runs"]
        totals["running_mlflow_runs"] += report["running_runs"]
        totals["stale_optuna_trials"] += report["stale_optuna"]
        row = {
            "round": i + 1, "signal": sig.name, "at_s": round(chain["signalled_at"], 1),
            "mid_run": chain["mid_run"], "driver_exit": chain["exit"],
            "finished_before": chain["finished_before"],
            "resume_exit": chain["resume"].returncode, "again_ok": again, "survived": clean,
            "seconds": round(time.monotonic() - started), **report,
        }  # fmt: skip
        row.pop("workdir", None)
        rows.append(row)
        if not clean:
            print(f"round {i + 1}: resume stderr: {chain['resume'].stderr[-1500:]}",
                  file=sys.stderr)  # fmt: skip
        print(f"round {i + 1}: {row}", file=sys.stderr)
        if clean:
            shutil.rmtree(root, ignore_errors=True)
    return totals, rows


def fuzz(examples: int) -> dict[str, dict[str, int]]:
    from badinput import (
        answer_cli,
        answer_config,
        answer_constraint,
        answer_space,
        cli_argvs,
        config_overrides,
        constraint_exprs,
        space_texts,
    )

    scratch = Path(tempfile.mkdtemp(prefix="moonsweep-fuzz-"))

    def in_folder(answer):  # a fresh folder per input: "nothing written" is per input
        def run(value):
            folder = Path(tempfile.mkdtemp(dir=scratch))
            try:
                return answer(value, folder / "w")
            finally:
                shutil.rmtree(folder, ignore_errors=True)

        return run

    kinds = {
        "--set overrides": (config_overrides(), answer_config),
        "search spaces": (space_texts(), in_folder(answer_space)),
        "command lines": (cli_argvs(), in_folder(answer_cli)),
        "constraint expressions": (constraint_exprs, answer_constraint),
    }
    out: dict[str, dict[str, int]] = {}
    for kind, (strategy, answer) in kinds.items():
        out[kind] = _probe(strategy, answer, examples, kind)
    shutil.rmtree(scratch, ignore_errors=True)
    return out


def _probe(strategy, answer, examples: int, kind: str) -> dict[str, int]:
    """Feed `examples` drawn inputs to `answer`; count valid, bad and clearly answered."""
    from hypothesis import HealthCheck, Phase, given, settings

    counts = {"valid": 0, "bad": 0, "answered": 0}
    failures: list[str] = []

    @settings(
        max_examples=examples,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def probe(value) -> None:
        verdict = answer(value)
        if verdict == "ok":
            counts["valid"] += 1
            return
        counts["bad"] += 1
        if verdict == "clear":
            counts["answered"] += 1
        else:
            failures.append(f"{value!r}: {verdict}")

    probe()
    for failure in failures[:5]:
        print(f"{kind}: {failure}", file=sys.stderr)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=1, help="kill rounds (3 kills each)")
    parser.add_argument("--examples", type=int, default=100, help="fuzzed inputs per kind")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument(
        "--space", choices=["test", "default"], default="test",
        help="test: the small space, 3 aimed kills per round; default: the shipped space",
    )  # fmt: skip
    parser.add_argument("--trials", type=int, default=6, help="--space default: --trials")
    parser.add_argument("--epochs", type=int, default=12, help="--space default: --epochs")
    parser.add_argument("--set", action="append", default=[], help="--space default: --set")
    parser.add_argument("--kill-between", type=float, nargs=2, default=[15.0, 90.0])
    parser.add_argument("--sigint-rounds", type=int, default=1, help="--space default")
    parser.add_argument("--seed", type=int, default=0, help="of the random kill moments")
    args = parser.parse_args()
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.monotonic()
    if args.space == "default":
        run_args = ["--space", "default", "--trials", str(args.trials),
                    "--epochs", str(args.epochs)]  # fmt: skip
        for item in args.set:
            run_args += ["--set", item]
        between = (args.kill_between[0], args.kill_between[1])
        totals, rows = default_rounds(args.rounds, args.sigint_rounds, between, run_args, args.seed)
        print(f"`moonsweep run {' '.join(run_args)}`, signal at a random {between[0]:g}-"
              f"{between[1]:g} s, then `moonsweep resume` twice\n")  # fmt: skip
        print("| round | signal | at (s) | mid-run | trials finished before | driver exit | "
              "resume exit | runs / expected | RUNNING runs | lost | run twice | duplicates | "
              "stale Optuna | survived |")  # fmt: skip
        print("|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for r in rows:
            print(f"| {r['round']} | {r['signal']} | {r['at_s']} | {r['mid_run']} | "
                  f"{r['finished_before']} | {r['driver_exit']} | {r['resume_exit']} | "
                  f"{r['runs']} / {r['expected']} | {r['running_runs']} | {r['lost']} | "
                  f"{r['run_twice']} | {r['duplicate_runs']} | {r['stale_optuna']} | "
                  f"{r['survived']} |")  # fmt: skip
        print()
        for key, value in totals.items():
            print(f"- {key.replace('_', ' ')}: {value}")
        inputs = fuzz(args.examples) if args.examples else {}
        for kind, c in inputs.items():
            print(f"- {kind}: {c['answered']} of {c['bad']} bad inputs answered "
                  f"({c['valid']} valid draws)")  # fmt: skip
        print(f"\n{time.monotonic() - started:.0f} s in all")
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            out = {"command": run_args, "totals": totals, "rounds": rows, "inputs": inputs}
            args.json.write_text(json.dumps(out, indent=2))
        return
    kills = kill_rounds(args.rounds)
    inputs = fuzz(args.examples)
    bad = sum(c["bad"] for c in inputs.values())
    answered = sum(c["answered"] for c in inputs.values())
    print("| figure | value |\n|---|---:|")
    print(f"| kills survived / tried | {kills['kills_survived']} / {kills['kills_tried']} |")
    for key in ("trials_lost", "trials_run_twice", "duplicate_mlflow_runs", "stale_optuna_trials"):
        print(f"| {key.replace('_', ' ')} | {kills[key]} |")
    print(f"| bad inputs answered with a clear error / tried | {answered} / {bad} |")
    print(
        f"| Ray processes still alive 3 s after a kill (max) | "
        f"{kills['lingering_ray_processes_max']} |"
    )
    print()
    print("| input kind | bad | answered | valid draws |\n|---|---:|---:|---:|")
    for kind, c in inputs.items():
        print(f"| {kind} | {c['bad']} | {c['answered']} | {c['valid']} |")
    print(f"\n{time.monotonic() - started:.0f} s in all")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"kills": kills, "inputs": inputs}, indent=2))


if __name__ == "__main__":
    main()
