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

Run (from the repository root):
    .venv/bin/python bench/reliability.py                     # 1 round, 100 inputs per kind
    .venv/bin/python bench/reliability.py --rounds 2 --json bench/out/reliability.json
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
    from chaos import kill_resume_chain

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
            f"round {i + 1}: {time.monotonic() - started:.0f} s, audit {report}",
            file=sys.stderr,
        )
        shutil.rmtree(root, ignore_errors=True)
    return totals


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
    args = parser.parse_args()
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.monotonic()
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
