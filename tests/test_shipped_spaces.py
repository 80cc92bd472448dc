"""Every shipped search space is a test case: run from the CLI as a user would, cut to seconds,
SIGKILLed mid-run (the driver's whole process group), resumed, then status, select (with a
registered model), report, replay of the chosen trial and predict on the registered model.

The cases are read from `search_spaces/`: a new space becomes a test by being shipped. The cut
is the command line a user has for a quick look (`--trials`, `--epochs`, `--set`); spaces on
real images read tiny files in the real on-disk formats (tests/datafiles.py).
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from chaos import (
    assert_clean,
    audit,
    child_runs,
    finished_trials,
    optuna_trials,
    run_cli,
    start_driver,
    state_of,
    stop_group,
    wait_until,
)
from datafiles import write_all
from mlflow.tracking import MlflowClient

from sweep.spaces import load_space, space_names
from sweep.state import load_run_json

pytestmark = pytest.mark.slow

TRIALS, EPOCHS = 2, 5
# Every space: one CPU per trial, no GPU, two trials at once, CPU-safe runtime settings.
COMMON = [
    "--trials", str(TRIALS), "--epochs", str(EPOCHS), "--max-concurrent", "2",
    "--cpus-per-trial", "1", "--gpus-per-trial", "0",
    "--set", "runtime.compile=false", "--set", "runtime.autocast=none",
    "--set", "runtime.channels_last=false",
]  # fmt: skip
# What makes a space's model small (a space not named here runs its model as shipped).
NARROW = {
    "default": ["--set", "model.width=64"],
    # 8 a batch: about 110 steps in 5 epochs on its 180 training images, enough to learn them.
    "paper-cifar10": ["--set", "model.width=8", "--set", "batch_size=8"],
}


@pytest.fixture(scope="module")
def data_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("data")
    write_all(root, cifar10_per_class=20)
    return {"MOONSWEEP_DATA": str(root), "MOONSWEEP_VERIFY_MD5": "0"}


def _sigkill_group(driver) -> None:
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and its embedded Ray, all at once
    driver.wait(30)


@pytest.mark.parametrize("name", space_names())
def test_shipped_space_end_to_end(name: str, tmp_path: Path, data_env: dict[str, str]) -> None:
    shipped = load_space(name)
    workdir, log = tmp_path / "w", tmp_path / "driver.log"
    cut = [*COMMON, *NARROW.get(name, [])]
    args = ["run", "--space", name, "--workdir", workdir, "--name", "s", *cut]
    driver = start_driver(*args, env=data_env, log=log)
    try:
        # Mid-run: once a trial has finished (there are baselines + TRIALS, two at a time).
        ended = lambda: driver.poll() is not None or finished_trials(workdir, "s")  # noqa: E731
        wait_until(ended, 300, "a finished trial")
        assert driver.poll() is None, log.read_text()[-3000:]
        _sigkill_group(driver)
        before = finished_trials(workdir, "s")
    finally:
        stop_group(driver)
    expected = TRIALS + len(shipped.baseline_trials())
    assert 1 <= len(before) < expected
    assert state_of(workdir, "s")["status"] == "running"  # killed: nobody said otherwise
    killed = run_cli("status", "s", "--workdir", workdir, "--json", env=data_env)
    assert killed.returncode == 0, killed.stderr[-2000:]
    assert json.loads(killed.stdout)["status"] == "interrupted"  # no driver holds its lock

    resumed = run_cli("resume", "s", "--workdir", workdir, env=data_env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"sweep s finished: {expected} trials" in resumed.stdout
    report = audit(workdir, "s", before, expected=expected)
    # One MLflow child run per trial and per baseline, none RUNNING (cut this way, none failed).
    assert_clean(report, runs=expected)
    assert len(optuna_trials(workdir, "s")) >= TRIALS
    again = run_cli("resume", "s", "--workdir", workdir, env=data_env)
    assert again.returncode == 0 and "already finished" in again.stderr

    # What sweep.json, trial.json and the parent's space.json hold comes back as written,
    # parameter order included (a `when` condition's parameter stays before what it gates).
    state = state_of(workdir, "s")
    order = [p for p in shipped.parameters if p in state["space"]["parameters"]]
    assert list(state["space"]["parameters"]) == order
    assert state["settings"] == [cut[i + 1] for i, a in enumerate(cut) if a == "--set"]
    assert state["space"]["set"]["epochs"] == EPOCHS
    if shipped.epochs > EPOCHS:  # the warm-up and voting lengths were fitted, and said so
        assert state["adjusted"] and all(
            line.startswith(f"fitted to --epochs {EPOCHS}: ") for line in state["adjusted"]
        )
    client = MlflowClient(state["tracking_uri"])
    assert load_run_json(client, state["parent_run_id"], "space.json") == state["space"]
    assert list(load_run_json(client, state["parent_run_id"], "space.json")["parameters"]) == order
    width = NARROW.get(name, ["", f"model.width={shipped.trial_config({}, 0).model.width}"])[1]
    for run in child_runs(workdir, "s"):  # trials of the killed driver and of the resumed one
        assert run.data.params["model.width"] == width.split("=")[1]
        assert run.data.params["epochs"] == str(EPOCHS)
        if run.data.tags["moonsweep.arm"] == "search":
            params = load_run_json(client, run.info.run_id, "trial.json")["params"]
            assert list(params) == [p for p in order if p in params]

    status = run_cli("status", "s", "--workdir", workdir, "--json", env=data_env)
    assert status.returncode == 0, status.stderr[-2000:]
    rows = json.loads(status.stdout)["trials"]
    assert len(rows) == expected
    # Every baseline trains to the end; a searched trial of this cut sweep may finish at chance
    # (collapsed) or be raced out after its first seeds: never a candidate, never lost.
    assert {r["state"] for r in rows if r["arm"] != "search"} == {"done"}
    searched = [r["state"] for r in rows if r["arm"] == "search"]
    assert set(searched) <= {"done", "collapsed", "raced"}

    select = ["select", "s", "--workdir", workdir, "--json", "--register", "champ"]
    chosen = run_cli(*select, env=data_env)
    if "done" not in searched:
        # Every searched trial of a cut sweep may finish at chance (collapsed): select says
        # so in one line, exit 2, and the chained commands after it need a chosen model.
        # The cuts above are chosen so that this does not happen on the tiny files.
        assert chosen.returncode == 2
        assert chosen.stderr.strip().endswith("has no finished searched trial to choose from")
        pytest.skip("every searched trial of the cut sweep collapsed: nothing to select")
    if chosen.returncode != 0:  # a cut sweep may have no trial within the space's constraints
        assert chosen.returncode == 2 and chosen.stderr.startswith("error: "), chosen.stderr
        assert len(chosen.stderr.strip().splitlines()) == 1 and "--no-space-constraints" in (
            chosen.stderr
        )
        chosen = run_cli(*select, "--no-space-constraints", env=data_env)
    assert chosen.returncode == 0, chosen.stderr[-2000:]
    selection = json.loads(chosen.stdout)
    # The version number is MLflow's (under a loaded SQLite, its retried insert once made it
    # 2); what must hold is that the alias names the version just registered for this run.
    registered, version = selection["registered"].split("/")
    assert registered == "champ" and int(version) >= 1
    alias = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}").get_model_version_by_alias(
        "champ", "champion"
    )
    assert str(alias.version) == version and alias.run_id == selection["chosen"]["mlflow_run_id"]
    run_id = selection["chosen"]["mlflow_run_id"]
    assert run_id in {r["mlflow_run_id"] for r in rows}

    built = run_cli("report", "s", "--workdir", workdir, "--no-mlflow", env=data_env)
    assert built.returncode == 0, built.stderr[-2000:]
    assert (workdir / "s" / "report" / "report.html").is_file()

    replayed = run_cli("replay", "s", run_id, "--workdir", workdir, env=data_env)
    assert replayed.returncode == 0, replayed.stderr[-2000:]
    figures = json.loads(replayed.stdout.strip().splitlines()[-1])
    recorded = client.get_run(run_id).data.metrics
    for metric in ("accuracy", "val/accuracy", "val/auroc_near", "auroc_far", "ece"):
        assert figures[metric] == pytest.approx(recorded[metric], abs=1e-6), metric

    predicted = run_cli("predict", "champ@champion", "--workdir", workdir, env=data_env)
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    lines = [json.loads(line) for line in predicted.stdout.splitlines()]
    assert lines and {"input", "in_distribution"} <= set(lines[0])
    assert "Traceback" not in "".join(
        p.stderr for p in (resumed, again, status, chosen, built, replayed, predicted)
    )
