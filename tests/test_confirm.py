"""`moonsweep confirm NAME --seeds N` (issue 26) on one small real sweep with two density
levels (embedded Ray, MLflow and Optuna on SQLite, tiny real trainings; every trial
evaluates a test-time grid): every level's best searched trial and its arms
get `confirm/` files for exactly the N seeds after the space's, with the figures a training
by hand gives; a second confirm trains nothing, another N is refused, a deleted seed is the
only one trained again, the mistakes are one line and exit 2, and `status` and `report`
then show the confirmed figures, the seeds named."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from urllib.parse import urlparse

import pytest
from mlflow.tracking import MlflowClient
from runner import SMALL_SET, moonsweep

from engine.config import validate_config
from engine.test_time import variant_figures, variant_name
from sweep.driver_lock import driver_lock
from sweep.levels import best_searched
from sweep.naming import CONFIRM_DIR, CONFIRM_TAG
from sweep.replay import retrain_trial
from sweep.spaces import SEARCH_ARM
from sweep.state import (
    confirm_seeds,
    confirmed_records,
    load_run_json,
    load_state,
    seed_records,
    trial_rows,
)

pytestmark = pytest.mark.slow

LEVELS = [0.05, 0.2]
SEEDS = [0]
FRESH = [1, 2]  # the two after the space's largest seed
SPACE = (
    SMALL_SET
    + """  sparsity.method: rigl
levels: [0.05, 0.2]
parameters:
  sparsity.density: {distribution: categorical, choices: [0.05, 0.2]}
  moon.alpha_mode: {distribution: categorical, choices: [auto, fixed]}
test_time:
  voting.mode: [weights, predictions]
  eval.primary: [msp, max_logit]
objectives:
  - {metric: val/auroc_near, direction: maximize}
  - {metric: density, direction: minimize}
sampler: {name: random, seed: 3}  # searched trials at both levels
seeds: [0]
budget: {trials: 4, max_concurrent: 2}
early_stopping: null
report_every: 3
"""
)
PROGRESS = re.compile(r"^confirm (\d+)/(\d+): (\S+) seed (\d+)$")


def _trained(stderr: str) -> list[tuple[str, int]]:
    """The (label, seed) of each training a confirm's progress lines name."""
    found = [PROGRESS.match(line) for line in stderr.splitlines()]
    return [(m.group(3), int(m.group(4))) for m in found if m]


def _confirm(workdir: Path, *args: str) -> tuple[int, str, str]:
    proc = moonsweep("confirm", "cf", "--workdir", str(workdir), *args)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("confirm")
    (root / "space.yaml").write_text(SPACE)
    workdir = root / "w"
    run = moonsweep(
        "run", "--space", str(root / "space.yaml"), "--workdir", str(workdir), "--name", "cf"
    )
    assert run.returncode == 0, run.stderr[-3000:]
    state, _ = load_state("cf", workdir)
    rows = trial_rows(state, all_metrics=True)
    assert {r["state"] for r in rows} == {"done"}
    assert {r["level"] for r in rows if r["arm"] == SEARCH_ARM} == set(LEVELS)
    code, out, err = _confirm(workdir, "--seeds", "2")
    assert code == 0, err[-3000:]
    # Which trials: each level's best searched one and its finished arms, dense once.
    expected = {}
    for level in LEVELS:
        best, _ = best_searched(state, rows, level)
        assert best is not None
        expected[best["mlflow_run_id"]] = f"search#{best['optuna']}@{level:g}"
        for r in rows:
            if r["arm"] != SEARCH_ARM and r["level"] == level:
                expected[r["mlflow_run_id"]] = f"{r['arm']}@{level:g}"
    (dense,) = [r for r in rows if r["arm"] == "dense"]
    expected[dense["mlflow_run_id"]] = "dense"
    return {
        "workdir": workdir,
        "state": state,
        "rows": {r["mlflow_run_id"]: r for r in rows},
        "client": MlflowClient(state.tracking_uri),
        "expected": expected,
        "stdout": out,
        "stderr": err,
    }


def test_confirm_trains_each_level_s_best_and_its_arms_on_the_fresh_seeds(swept: dict) -> None:
    state, client, expected = swept["state"], swept["client"], swept["expected"]
    parent = client.get_run(state.parent_run_id)
    assert parent.data.tags[CONFIRM_TAG] == "1,2"
    assert confirm_seeds(state) == FRESH
    # Each trial once per fresh seed, dense once (not per level), numbered 1..total.
    trained = _trained(swept["stderr"])
    assert sorted(trained) == sorted((label, s) for label in expected.values() for s in FRESH)
    lines = [PROGRESS.match(x) for x in swept["stderr"].splitlines()]
    numbers = [(int(m.group(1)), int(m.group(2))) for m in lines if m]
    total = len(expected) * len(FRESH)
    assert numbers == [(i, total) for i in range(1, total + 1)]
    assert len(expected) == 2 * 4 + 1  # per level: searched, moon_auto, sparse, sparse+voting
    for run_id in expected:
        names = {Path(f.path).name for f in client.list_artifacts(run_id, CONFIRM_DIR)}
        assert names == {f"{k}-seed{s}.json" for k in ("metrics", "variants") for s in FRESH}
    # Trials that are no level's best are not confirmed.
    others = set(swept["rows"]) - set(expected)
    assert others and all(not client.list_artifacts(r, CONFIRM_DIR) for r in others)
    assert confirmed_records(state, next(iter(others))) is None
    out = swept["stdout"]
    assert f"confirmed {len(expected)} trials of sweep cf on seeds 1-2: {total} trainings" in out
    assert "`moonsweep status cf` and `moonsweep report cf` now show the confirmed" in out


def test_confirmed_records_are_a_training_by_hand_on_those_seeds(swept: dict) -> None:
    """The kept variant's per-seed figures equal a re-training of the trial's config on the
    same seed (replay's), in the format of `final/`; searched: the kept variant as recorded."""
    state, client = swept["state"], swept["client"]
    searched = next(r for r, label in swept["expected"].items() if label.startswith("search#"))
    arm = next(r for r, label in swept["expected"].items() if label.startswith("moon_auto@"))
    for run_id in (searched, arm):
        records = confirmed_records(state, run_id)
        assert records is not None and sorted(records.metrics) == FRESH
        assert confirmed_records(state, run_id, FRESH) == records  # seeds read once by a caller
        assert confirmed_records(state, run_id, [*FRESH, 3]) is None  # not every seed there
        final = seed_records(state, run_id)
        kept, by_hand = retrain_trial(state, run_id, FRESH)
        cfg = validate_config(load_run_json(client, run_id, "trial.json")["configs"][0])
        # The space's test-time grid (searched trials and arms alike): the variant it kept
        # when recorded, every variant (2 voting modes x 2 scores) beside it.
        assert kept is not None
        assert kept == final.picked == client.get_run(run_id).data.tags["moonsweep.test_time"]
        assert records.picked == kept and len(records.variants[FRESH[0]]) == 4
        assert records.published == variant_name(cfg)
        assert records.metrics[FRESH[0]] != records.metrics[FRESH[1]]  # seeds that differ
        for seed, metrics in zip(FRESH, by_hand, strict=True):
            assert records.metrics[seed] == pytest.approx(metrics, rel=1e-9, abs=1e-12)
            assert records.variants[seed][records.picked] == variant_figures(records.metrics[seed])
        stored = load_run_json(client, run_id, f"{CONFIRM_DIR}/variants-seed{FRESH[0]}.json")
        assert list(stored) == ["picked", "published", "variants"]


def test_a_second_confirm_resumes_and_another_n_is_refused(swept: dict) -> None:
    workdir, client, expected = swept["workdir"], swept["client"], swept["expected"]
    code, out, err = _confirm(workdir, "--seeds", "2")
    assert code == 0, err[-3000:]
    assert _trained(err) == []
    assert "0 trainings now" in out
    code, out, err = _confirm(workdir, "--seeds", "3")
    assert code == 2
    assert err.strip().splitlines() == [
        "error: sweep cf is confirmed on seeds 1-2 (moonsweep.confirm_seeds on its parent "
        "run), not 1-3: run `moonsweep confirm cf --seeds 2` to resume or repeat it"
    ]
    # One seed's files gone (an interrupted confirm): just that seed is trained again.
    run_id = next(r for r, label in expected.items() if label.startswith("sparse@"))
    folder = Path(urlparse(client.get_run(run_id).info.artifact_uri).path) / CONFIRM_DIR
    for kind in ("metrics", "variants"):
        (folder / f"{kind}-seed2.json").unlink()
    before = (folder / "metrics-seed1.json").stat().st_mtime_ns
    code, out, err = _confirm(workdir, "--seeds", "2")
    assert code == 0, err[-3000:]
    assert _trained(err) == [(expected[run_id], 2)]
    assert (folder / "metrics-seed1.json").stat().st_mtime_ns == before
    assert sorted(confirmed_records(swept["state"], run_id).metrics) == FRESH


def test_the_mistakes_are_one_line_and_exit_2(swept: dict, tmp_path: Path) -> None:
    workdir = swept["workdir"]
    code, _, err = _confirm(workdir, "--seeds", "0")
    assert code == 2 and err.strip().splitlines() == [
        "error: --seeds 0: confirm needs 1 or more fresh seeds"
    ]
    proc = moonsweep("confirm", "nope", "--seeds", "2", "--workdir", str(workdir))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: no sweep named 'nope' in {workdir}; sweeps there: cf"
    ]
    # A sweep without levels: its sweep.json as recorded, the levels taken out.
    flat = tmp_path / "w" / "flat"
    flat.mkdir(parents=True)
    recorded = json.loads((workdir / "cf" / "sweep.json").read_text())
    (flat / "sweep.json").write_text(
        json.dumps({**recorded, "name": "flat", "space": {**recorded["space"], "levels": []}})
    )
    proc = moonsweep("confirm", "flat", "--seeds", "2", "--workdir", str(tmp_path / "w"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: sweep flat has no density levels; confirm re-trains each level's best "
        "searched trial and its arms"
    ]
    shutil.rmtree(flat)
    # A sweep a driver is running (its lock held, sweep.json `running`): refused.
    busy = tmp_path / "w" / "busy"
    busy.mkdir()
    (busy / "sweep.json").write_text(json.dumps({**recorded, "name": "busy", "status": "running"}))
    with driver_lock(busy, "busy"):
        proc = moonsweep("confirm", "busy", "--seeds", "2", "--workdir", str(tmp_path / "w"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: sweep busy is being run by a driver; confirm it once that has ended"
    ]


def test_status_and_report_show_the_confirmed_figures(swept: dict) -> None:
    # Runs last: after the resume above, every confirmed seed is back.
    workdir, state = swept["workdir"], swept["state"]
    status = moonsweep("status", "cf", "--workdir", str(workdir), "--json")
    assert status.returncode == 0, status.stderr[-3000:]
    levels = json.loads(status.stdout)["levels"]
    assert [lv["density"] for lv in levels] == LEVELS
    for lv in levels:
        assert lv["confirmed_seeds"] == FRESH and lv["seeds_text"] == "confirmed on seeds 1, 2"
        assert set(lv["arms"]) >= {"searched", "moon_auto", "sparse", "sparse+voting", "dense"}
        for arm in lv["arms"].values():
            assert arm["seeds"] == FRESH
            records = confirmed_records(state, arm["mlflow_run_id"])
            values = [records.variants[s][arm["variant"]]["auroc_near"] for s in FRESH]
            assert arm["figures"]["auroc_near"]["mean"] == pytest.approx(sum(values) / 2)
        assert all("confirmed on seeds 1, 2" in v for v in lv["verdicts"])
    text = moonsweep("status", "cf", "--workdir", str(workdir))
    assert text.stdout.count("confirmed on seeds 1, 2") >= len(LEVELS)
    assert "selected on these seeds" not in text.stdout
    report = moonsweep("report", "cf", "--workdir", str(workdir))
    assert report.returncode == 0, report.stderr[-3000:]
    summary = json.loads((workdir / "cf" / "report" / "report.json").read_text())
    assert [lv["confirmed_seeds"] for lv in summary["levels"]] == [FRESH, FRESH]
    page = (workdir / "cf" / "report" / "report.html").read_text()
    assert page.count("confirmed on seeds 1, 2") >= len(LEVELS)
