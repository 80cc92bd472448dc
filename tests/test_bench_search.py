"""bench/search.py end to end at a tiny size: real sweeps, figures re-derived by hand.

Two arms (random, TPE with one start-up trial), one repetition, three trials of two epochs and
one seed on the default space with the dense baseline only: a few seconds of training. The
hypervolumes are recomputed from the JSON by inclusion-exclusion over the trials' boxes, the
reference point by hand, the budgets from epochs x seeds.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from bench import _search, search

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
TRIALS, EPOCHS, SEEDS = 3, 2, 1


def tiny_space(path: Path) -> Path:
    """The default space with only the dense baseline (the constraint's reference), a
    constraint every trial meets, TPE guided from its second trial, and only the 0.2 level
    (two-epoch models at 2% density are at chance: collapsed, so not counted)."""
    space = yaml.safe_load((ROOT / "search_spaces" / "default.yaml").read_text())
    space["baselines"] = {"dense": space["baselines"]["dense"]}
    space["levels"] = [0.2]
    space["parameters"]["sparsity.density"]["choices"] = [0.2]
    space["constraints"] = [
        {"metric": "val/accuracy", "op": ">=", "baseline": "dense", "offset": -1.0}
    ]
    space["sampler"] = {**space["sampler"], "startup_trials": 1}
    space["budget"] = {**space["budget"], "max_concurrent": 1}  # one worker starts, not two
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def bench(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MOONSWEEP_", "MLFLOW_"))}
    env.pop("RAY_ADDRESS", None)
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run(
        [sys.executable, str(ROOT / "bench" / "search.py"), *args],
        capture_output=True,
        text=True,
        timeout=400,
        env=env,
        cwd=cwd,
    )


def hypervolume(points: list[list[float]], ref: list[float], maximize: list[bool]) -> float:
    """Volume dominated by `points` within `ref`, by inclusion-exclusion over their boxes."""
    flip = [[-v if m else v for v, m in zip(p, maximize, strict=True)] for p in points]
    r = [-v if m else v for v, m in zip(ref, maximize, strict=True)]
    total = 0.0
    for k in range(1, len(flip) + 1):
        for subset in itertools.combinations(flip, k):
            corner = [max(p[d] for p in subset) for d in range(len(r))]
            total += (-1) ** (k + 1) * math.prod(max(0.0, r[d] - corner[d]) for d in range(len(r)))
    return total


@pytest.fixture(scope="module")
def done(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str, Path]:
    tmp = tmp_path_factory.mktemp("bench-search")
    out = tmp / "search.json"
    proc = bench(
        "--space", str(tiny_space(tmp / "tiny.yaml")), "--arms", "random,tpe",
        "--repeats", "1", "--trials", str(TRIALS), "--epochs", str(EPOCHS),
        "--seeds", str(SEEDS), "--json", str(out), cwd=tmp,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[bench] sweep 2/2: tpe, repetition 0" in proc.stderr
    return json.loads(out.read_text()), proc.stdout, out


def test_budgets_are_epochs_times_seeds(done) -> None:
    figures, printed, _ = done
    assert [(s["arm"], s["rep"]) for s in figures["sweeps"]] == [("random", 0), ("tpe", 0)]
    for sweep in figures["sweeps"]:
        assert (sweep["epochs"], sweep["seeds"]) == (EPOCHS, SEEDS)
        assert [t["optuna"] for t in sweep["trials"]] == list(range(TRIALS))
        assert all(t["state"] == "COMPLETE" and not t["fail_reason"] for t in sweep["trials"])
        assert [t["budget"] for t in sweep["trials"]] == [EPOCHS * SEEDS] * TRIALS
        assert sweep["trials"][-1]["cumulative_budget"] == TRIALS * EPOCHS * SEEDS
    assert figures["summary"]["tpe"]["budget_mean"] == TRIALS * EPOCHS * SEEDS
    # Paired: the same sampler seed draws the same first (start-up) trial in both arms.
    first = [s["trials"][0]["values"] for s in figures["sweeps"]]
    assert first[0] == first[1]


def test_hypervolumes_recomputed_by_hand(done) -> None:
    figures, _, _ = done
    maximize = [d == "maximize" for d in figures["directions"]]
    counted = [t["values"] for s in figures["sweeps"] for t in s["trials"] if t["counted"]]
    assert len(counted) >= 2
    ref = []
    for d, m in enumerate(maximize):  # the nadir, pushed out by 0.1 (the default) x the range
        column = [p[d] for p in counted]
        worst = (min if m else max)(column)
        spread = (max(column) - min(column)) or abs(worst)  # one shared value: its size
        ref.append(worst - 0.1 * spread if m else worst + 0.1 * spread)
    assert figures["reference"] == pytest.approx(ref, rel=1e-12)
    for sweep in figures["sweeps"]:
        for i, t in enumerate(sweep["trials"]):
            mine = [u["values"] for u in sweep["trials"][: i + 1] if u["counted"]]
            assert t["volume_after"] == pytest.approx(hypervolume(mine, ref, maximize), abs=1e-12)
    assert figures["sweeps"][0]["trials"][-1]["volume_after"] > 0


def test_ratios_and_reach_follow_from_the_trials(done) -> None:
    figures, printed, _ = done
    random, tpe = (s["trials"] for s in figures["sweeps"])
    total = TRIALS * EPOCHS * SEEDS
    summary = figures["summary"]
    for f in ("0.25", "0.5", "0.75", "1"):
        within = int(float(f) * total) // (EPOCHS * SEEDS)  # whole trials inside the budget
        base = random[within - 1]["volume_after"] if within else 0.0
        mine = tpe[within - 1]["volume_after"] if within else 0.0
        [r_random], [r_tpe] = summary["random"]["ratio"][f], summary["tpe"]["ratio"][f]
        if base > 0:
            assert r_random == 1.0  # exactly: random against itself
            assert r_tpe == pytest.approx(mine / base, rel=1e-12)
        else:
            assert r_random is None and r_tpe is None
    final = random[-1]["volume_after"]
    first = next(t for t in random if t["volume_after"] >= final)
    assert summary["random"]["reach_fraction"] == [first["cumulative_budget"] / total]
    reached = [t for t in tpe if t["volume_after"] >= final * (1 - 1e-9)]
    expected = reached[0]["cumulative_budget"] / total if reached else None
    assert summary["tpe"]["reach_fraction"] == [expected]
    assert summary["random"]["reached"] == 1
    ratio_row, reach_row = (line for line in printed.splitlines() if line.startswith("| random |"))
    cells = ratio_row.strip("| ").split(" | ")[1:]
    assert cells == [
        "1.00 (n 1)" if r == [1.0] else "n/a (n 0)" for r in summary["random"]["ratio"].values()
    ]
    assert reach_row.endswith("| 1/1 | 3.0 | 0.0 | 0.0 | 0.0 | 1.00 |")


def test_table_from_prints_the_same(done) -> None:
    _, printed, out = done
    again = io.StringIO()
    with contextlib.redirect_stdout(again):  # no Ray: in this process
        assert search.main(["--table-from", str(out)]) == 0
    assert again.getvalue().strip() == printed.rsplit("\n(", 1)[0].strip()  # less "s in all"


def test_trial_cost_prefers_epochs_trained_and_counts_only_finished_models() -> None:
    complete, fail = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL
    cases = [  # (state, user attrs, last logged epoch) -> (budget, source, counted)
        (complete, {}, None, (10 * 5, "epochs x seeds", True)),
        (complete, {"epochs_trained": 23, "raced_out": True}, None, (23, "epochs_trained", False)),
        (complete, {"early_stopped": True, "stopped_at_epoch": 4}, None,
         (4 * 5, "stopped_at_epoch x seeds", False)),
        (complete, {"fail_reason": "diverged"}, 3.0, (3 * 5, "last epoch x seeds", False)),
        (fail, {"fail_reason": "ray error"}, None, (0, "last epoch x seeds", False)),
    ]  # fmt: skip
    for state, attrs, last, (budget, source, counted) in cases:
        values = [0.5, 0.5] if state == complete else None
        trial = optuna.trial.create_trial(state=state, values=values, user_attrs=attrs)
        record = _search.trial_record(trial, epochs=10, seeds=5, last_epoch=last)
        assert (record["budget"], record["budget_from"], record["counted"]) == (
            budget,
            source,
            counted,
        ), attrs


def test_random_is_required() -> None:
    with pytest.raises(SystemExit) as exc, contextlib.redirect_stderr(io.StringIO()) as err:
        search.main(["--arms", "tpe,gp"])
    assert exc.value.code == 2
    assert "--arms: random is required" in err.getvalue()


def test_records_carry_the_objectives_on_the_test_parts(done) -> None:
    figures, _, _ = done
    trials = [t for s in figures["sweeps"] for t in s["trials"] if t["values"]]
    assert trials
    for t in trials:
        test = t["test_values"]
        assert test is not None and len(test) == len(t["values"])
        assert test[-1] == t["values"][-1]  # density: the same figure on both parts
        assert all(0.0 <= v <= 1.0 for v in test)
    # Test figures are not the validation ones (different images).
    assert any(t["test_values"][:3] != t["values"][:3] for t in trials)


def test_on_test_parts_swaps_the_objectives_and_drops_records_without_them() -> None:
    counted = _search.record_of(0, [0.9, 0.1])
    records = [
        {**counted, "test_values": [0.8, 0.2]},
        {**_search.record_of(1, [0.7, 0.3]), "test_values": None},
        {**counted, "optuna": 2, "counted": False, "test_values": [0.6, 0.4]},
    ]
    swapped = _search.on_test_parts(records)
    assert [r["values"] for r in swapped] == [[0.8, 0.2], None, [0.6, 0.4]]
    assert [r["counted"] for r in swapped] == [True, False, False]
    assert records[0]["values"] == [0.9, 0.1]  # the records themselves are left as they were


def test_random_is_plain_random_search_and_random_race_keeps_the_spaces_racing() -> None:
    space = search.load_space("default")
    assert space.race is not None  # the default space races its searched trials
    plain = search.arm_space("random", space, seed=3, seeds=None)
    raced = search.arm_space("random+race", space, seed=3, seeds=None)
    assert plain["sampler"]["name"] == raced["sampler"]["name"] == "random"
    assert plain["sampler"]["seed"] == raced["sampler"]["seed"] == 3
    assert plain["race"] is None and plain["early_stopping"] is None
    assert raced["race"] == space.race.model_dump(mode="json")
    # Everything else is the same space.
    same = {k: v for k, v in plain.items() if k not in ("race", "early_stopping")}
    assert same == {k: v for k, v in raced.items() if k not in ("race", "early_stopping")}
    # --race-constraints: the racing arms test the constraints too; plain random still races not.
    assert raced["race"]["constraints"] is False
    on = search.arm_space("random+race", space, seed=3, seeds=None, race_constraints=True)
    assert on["race"] == {**raced["race"], "constraints": True}
    assert search.arm_space("random", space, 3, None, race_constraints=True)["race"] is None
