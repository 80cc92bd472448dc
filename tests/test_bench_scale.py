"""bench/scale.py at a tiny N: real sweeps, its figures checked against the stores they
describe, and the reads it times paging and cutting the way they do at thousands of trials.

The default space cut to its dense baseline and one level, two and four searched trials of
four epochs on one seed, a 64-wide MLP: seconds of training per sweep.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ray.tune import ExperimentAnalysis
from typer.testing import CliRunner

from sweep import cli, state, status
from sweep.naming import mlflow_metric
from sweep.spaces import SearchSpace, load_space
from sweep.state import child_runs, load_run_json, load_state, read_rows, trial_rows
from sweep.stores import load_study, mlflow_client
from sweep.trial import SWEEP_KEYS, reported

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SIZES = (2, 4)
# What Ray adds to every result itself.
RAY_KEYS = {"timestamp", "time_this_iter_s", "time_total_s", "pid", "training_iteration",
            "time_since_restore", "iterations_since_restore", "done"}  # fmt: skip


def tiny_space(path: Path) -> Path:
    space = yaml.safe_load((ROOT / "search_spaces" / "default.yaml").read_text())
    space["baselines"] = {"dense": space["baselines"]["dense"]}
    space["levels"] = [0.2]
    space["parameters"]["sparsity.density"]["choices"] = [0.2]
    space["budget"] = {**space["budget"], "max_concurrent": 1}  # one worker starts, not two
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def scaled(tmp_path_factory) -> tuple[dict, Path]:
    root = tmp_path_factory.mktemp("scale")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MOONSWEEP_", "MLFLOW_"))}
    env.pop("RAY_ADDRESS", None)
    env["OMP_NUM_THREADS"] = "1"
    out = root / "scale.json"
    sizes = ",".join(map(str, SIZES))
    space = tiny_space(root / "tiny.yaml")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "scale.py"), "--sizes", sizes, "--keep"]
        + ["--space", str(space), "--width", "64", "--epochs", "4", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
        cwd=root,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "driver time per trial" in proc.stdout  # the targets' line, N=4 against N=2
    return json.loads(out.read_text()), root


def test_figures_match_the_stores(scaled: tuple[dict, Path]) -> None:
    data, _ = scaled
    assert [r["n"] for r in data["results"]] == list(SIZES)
    for r in data["results"]:
        sweep, workdir = load_state(f"scale{r['n']}", r["workdir"])
        assert sweep.status == "finished" and r["status"] == "finished"
        assert r["trials"] == r["n"] + 1  # the dense baseline
        assert r["suggested"] == r["n"]  # each searched trial's suggestion was timed
        runs = child_runs(mlflow_client(sweep.tracking_uri), sweep)
        assert len(runs) == r["trials"]
        assert len(load_study(sweep.name, sweep.storage_url).trials) == r["n"]
        # The driver's share, from the figures the row carries.
        driver = (r["wall_s"] - r["ray_start_s"] - r["sum_trial_s"] / r["concurrency"]) / r[
            "trials"
        ]
        assert math.isclose(r["driver_s_per_trial"], driver)
        assert 0 < r["sum_trial_s"] < r["wall_s"] * r["concurrency"]
        assert r["mlflow_queued"] >= 3 * r["trials"]  # at least start, a report, complete
        sizes = r["sizes_mb"]
        assert sizes["mlflow.db"] > 0 and sizes["optuna.db"] > 0 and sizes["ray"] > 0
        assert os.path.getsize(Path(r["workdir"]) / "mlflow.db") / 2**20 == sizes["mlflow.db"]
        assert r["driver_peak_mb"] > 100  # torch alone is more
        for command, timed in r["commands"].items():
            # A tiny sweep whose searched trials all collapsed has nothing to select: the
            # one-line answer, exit 2; everything else works on any sweep.
            nothing = command == "select" and "no finished searched trial" in timed["tail"]
            assert timed["rc"] == (2 if nothing else 0), (command, timed["tail"])
            assert timed["s"] > 0
    assert set(data["targets"]) == {"driver", "reads", "memory"}


def test_reads_page_through_every_run(
    scaled: tuple[dict, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """MLflow returns at most a page of runs per search: with pages of 2 every trial's row
    still comes back, once (trial_rows stopped at 5,000 runs before, reconcile at 1,000)."""
    data, _ = scaled
    r = data["results"][-1]
    sweep, _ = load_state(f"scale{r['n']}", r["workdir"])
    whole = {row["mlflow_run_id"] for row in read_rows(sweep)}
    monkeypatch.setattr(state, "RUNS_PER_PAGE", 2)
    paged = [row["mlflow_run_id"] for row in read_rows(sweep)]
    assert len(paged) == len(set(paged)) == len(whole) == r["trials"]
    assert set(paged) == whole
    # The finished sweep's kept rows are what MLflow holds.
    kept, read = trial_rows(sweep, all_metrics=True), read_rows(sweep)
    assert json.dumps(kept, sort_keys=True) == json.dumps(read, sort_keys=True)  # NaN == NaN


def test_status_shows_the_baselines_and_the_front_past_its_limit(
    scaled: tuple[dict, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    data, _ = scaled
    r = data["results"][-1]
    name, workdir = f"scale{r['n']}", r["workdir"]
    runner = CliRunner()
    everything = runner.invoke(cli.app, ["status", name, "--workdir", workdir])
    assert everything.exit_code == 0, everything.output
    monkeypatch.setattr(status, "ALL_ROWS", 2)
    cut = runner.invoke(cli.app, ["status", name, "--workdir", workdir])
    assert cut.exit_code == 0, cut.output
    sweep, _ = load_state(name, workdir)
    rows = trial_rows(sweep)
    front = {row["trial"] for row in status.leaders(sweep)}
    shown = {row["trial"] for row in rows if row["trial"] in cut.output}
    expected = {row["trial"] for row in rows if row["arm"] != "search" or row["trial"] in front}
    assert shown == expected
    hidden = len(rows) - len(expected)
    if hidden:
        assert f"{hidden} more (" in cut.output
    every = runner.invoke(cli.app, ["status", name, "--workdir", workdir, "--all"])
    assert all(row["trial"] in every.output for row in rows)


def test_a_report_carries_the_figures_the_sweep_decides_on() -> None:
    space = load_space("default")
    final = {
        "val/auroc_near": 0.9,  # an objective
        "val/accuracy": 0.95,  # an objective and the constraint's metric
        "val/auroc_far": 0.97,  # the status table's
        "val/energy/auroc_near": 0.8,  # detail: the checkpoint's metrics.json has it
        "auroc/photo": 0.7,
        "std/val/auroc_near": 0.01,
        "epoch": 30,
        "final": 1,
        "raced_out": 1,
        "test_time_pick": "weights/msp",
        "history": [{"epoch": 30, "loss": 0.1}],
        "seed_values": json.dumps({"0": {"val/auroc_near": 0.9, "auroc/photo": 0.7}}),
    }
    out = reported(final, space)
    assert set(out) == set(final) - {"val/energy/auroc_near", "auroc/photo", "std/val/auroc_near"}
    assert out["history"] == final["history"] and out["test_time_pick"] == "weights/msp"
    assert json.loads(out["seed_values"]) == {"0": {"val/auroc_near": 0.9}}


def test_ray_holds_the_decisions_and_mlflow_every_figure(scaled: tuple[dict, Path]) -> None:
    """Ray's saved experiment state (written every second, all trials) keeps only what the
    sweep decides on; every final figure still reaches MLflow, from the checkpoint."""
    data, _ = scaled
    r = data["results"][-1]
    sweep, folder = load_state(f"scale{r['n']}", r["workdir"])
    space = SearchSpace.model_validate({**sweep.space, "source_dir": str(folder)})
    kept = space.decision_metrics() | SWEEP_KEYS | RAY_KEYS
    for trial in ExperimentAnalysis(str(folder / "ray")).trials:
        numeric = {
            k
            for k, v in (trial.last_result or {}).items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        }
        assert numeric <= kept, numeric - kept
    client = mlflow_client(sweep.tracking_uri)
    finished = [run for run in child_runs(client, sweep) if run.info.status == "FINISHED"]
    assert finished
    for run in finished:
        recorded = load_run_json(client, run.info.run_id, "final/metrics.json")
        details = [k for k in recorded if k.count("/") >= 2 and isinstance(recorded[k], float)]
        assert len(details) > 20  # per-set, per-score figures: none of them in Ray's result
        for key in details:
            assert math.isclose(run.data.metrics[mlflow_metric(key)], recorded[key]) or (
                math.isnan(recorded[key])
            )
