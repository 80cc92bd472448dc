"""A sweep on a real 2-node Ray cluster with Optuna on PostgreSQL and an MLflow server.

Everything is real and local (127.0.0.1, free ports): a PostgreSQL server, `mlflow server`
on it, a Ray head and a second Ray node started with `ray start` as separate processes,
and `moonsweep run --address` as a user would type it. All of it is stopped afterwards.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
import psycopg
import pytest
from mlflow.tracking import MlflowClient
from runner import moonsweep as run_cli
from services import Postgres, RayCluster, free_port, mlflow_server, postgres, ray_cluster

from sweep.cluster import unreachable_address

pytestmark = pytest.mark.slow

SPACE = """
base: default
# Trials of a few seconds: long enough that the second node's worker is up (it starts
# several seconds after the head's) before the head has run them all.
set: {epochs: 150, voting.epochs: 1, moon.warmup_epochs: 1, model.width: 32}
parameters:
  sparsity.density: {distribution: log_uniform, low: 0.05, high: 0.5}
objectives:
  - {metric: val/accuracy, direction: maximize}
baselines: {dense: {sparsity.method: dense, moon.enabled: false}}
sampler: {name: random, seed: 0}
seeds: [0]
budget: {trials: 3, max_concurrent: 2}
resources: {cpu: 1, gpu: 0}
early_stopping: null
report_every: 2
"""
TRIALS = 3 + 1  # searched + the baseline


@dataclass
class Stack:
    pg: Postgres
    optuna_url: str
    mlflow_db: str
    tracking_uri: str
    cluster: RayCluster
    root: Path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("cluster")
    with postgres() as pg:
        optuna_url = pg.create_database("optuna")
        mlflow_db = pg.create_database("mlflow")
        with (
            mlflow_server(mlflow_db, root / "mlartifacts") as server,
            ray_cluster(workers=1, root=root / "ray", cpus=1) as cluster,
        ):
            yield Stack(pg, optuna_url, mlflow_db, server.url, cluster, root)


def moonsweep(stack: Stack, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return run_cli(*args, timeout=timeout, env=stack.cluster.env)


@pytest.fixture(scope="module")
def sweep(stack: Stack) -> tuple[subprocess.CompletedProcess, Path]:
    space = stack.root / "space.yaml"
    space.write_text(SPACE)
    workdir = stack.root / "w"
    proc = moonsweep(
        stack,
        "run",
        "--space",
        str(space),
        "--name",
        "c",
        "--workdir",
        str(workdir),
        "--address",
        stack.cluster.address,
        "--storage",
        stack.optuna_url,
        "--tracking-uri",
        stack.tracking_uri,
        # A path every node sees: on this machine both nodes share the disk.
        "--results",
        str(stack.root / "shared-results"),
    )
    return proc, workdir


def test_address_checks() -> None:
    port = free_port()
    assert unreachable_address(f"127.0.0.1:{port}") == "nothing answers there (Connection refused)"
    assert unreachable_address("head-node") == "not auto, HOST:PORT or ray://HOST:PORT"
    assert unreachable_address("auto") is None
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert unreachable_address(f"127.0.0.1:{server.getsockname()[1]}") is None


def test_unreachable_address_is_one_error(tmp_path: Path) -> None:
    # Ray's own init would retry an address where nothing listens for minutes.
    address = f"127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MOONSWEEP_", "RAY_"))}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sweep.cli",
            "run",
            "--address",
            address,
            "--workdir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**env, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: --address {address}: nothing answers there")
    assert list(tmp_path.iterdir()) == []  # no store, no sweep folder


def test_two_nodes_need_shared_results(stack: Stack) -> None:
    proc = moonsweep(
        stack,
        "run",
        "--space",
        "default",
        "--name",
        "noshare",
        "--workdir",
        str(stack.root / "w2"),
        "--address",
        stack.cluster.address,
        "--storage",
        stack.optuna_url,
        "--tracking-uri",
        stack.tracking_uri,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: the Ray cluster at ")
    assert "has 2 nodes" in lines[-1] and "--results" in lines[-1] and "s3://" in lines[-1]
    assert "Traceback" not in proc.stderr
    # Nothing half-written: no experiment, no study, no sweep folder.
    assert MlflowClient(stack.tracking_uri).get_experiment_by_name("moonsweep-noshare") is None
    assert "noshare" not in optuna.get_all_study_names(stack.optuna_url)
    assert not (stack.root / "w2" / "noshare").exists()


def test_sweep_runs_on_both_nodes(stack: Stack, sweep) -> None:
    proc, workdir = sweep
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"sweep c finished: {TRIALS} trials" in proc.stdout
    state = json.loads((workdir / "c" / "sweep.json").read_text())
    assert state["tracking_uri"] == stack.tracking_uri
    assert state["address"] == stack.cluster.address
    client = MlflowClient(stack.tracking_uri)
    runs = client.search_runs(
        [state["experiment_id"]],
        filter_string=f"tags.`mlflow.parentRunId` = '{state['parent_run_id']}'",
    )
    assert len(runs) == TRIALS
    assert {r.info.status for r in runs} == {"FINISHED"}
    nodes = {r.data.tags["moonsweep.node_id"] for r in runs}
    # Two nodes, one CPU each, two trials at a time: both nodes ran trials, and only they.
    assert nodes == set(stack.cluster.alive_nodes())
    assert all(r.data.tags["moonsweep.hostname"] for r in runs)
    # Ray's results went to the shared storage, not the sweep folder.
    assert (stack.root / "shared-results" / "c").is_dir()
    assert not (workdir / "c" / "ray").exists()


def test_study_lives_in_postgres(stack: Stack, sweep) -> None:
    proc, _ = sweep
    assert proc.returncode == 0, proc.stderr[-2000:]
    study = optuna.load_study(study_name="c", storage=stack.optuna_url)
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(complete) == TRIALS - 1
    with psycopg.connect(stack.optuna_url) as conn:
        names = [r[0] for r in conn.execute("SELECT study_name FROM studies")]
        count = conn.execute(
            "SELECT count(*) FROM trials JOIN studies USING (study_id) WHERE study_name = 'c'"
        ).fetchone()[0]
    assert names == ["c"]
    assert count == TRIALS - 1


def test_mlflow_runs_in_postgres_through_server(stack: Stack, sweep) -> None:
    proc, workdir = sweep
    assert proc.returncode == 0, proc.stderr[-2000:]
    state = json.loads((workdir / "c" / "sweep.json").read_text())
    with psycopg.connect(stack.mlflow_db) as conn:
        rows = conn.execute(
            "SELECT run_uuid, status, artifact_uri FROM runs WHERE experiment_id = %s",
            (int(state["experiment_id"]),),
        ).fetchall()
        node_tags = conn.execute(
            "SELECT count(*) FROM tags WHERE key = 'moonsweep.node_id'"
        ).fetchone()[0]
    assert len(rows) == TRIALS + 1  # the parent and one child per trial
    assert {r[1] for r in rows} == {"FINISHED"}
    assert node_tags == TRIALS
    # Artifacts went through the server's proxy into its artifact store.
    assert all(r[2].startswith("mlflow-artifacts:/") for r in rows)
    stored = list((stack.root / "mlartifacts").rglob("trial.json"))
    assert len(stored) == TRIALS


def test_status_shows_nodes(stack: Stack, sweep) -> None:
    proc, workdir = sweep
    assert proc.returncode == 0, proc.stderr[-2000:]
    status = moonsweep(stack, "status", "c", "--workdir", str(workdir), timeout=120)
    assert status.returncode == 0, status.stderr[-2000:]
    header = status.stdout.splitlines()[1].split()
    assert "node" in header and "host" in header
    node_col = header.index("node")
    shown = {line.split()[node_col] for line in status.stdout.splitlines()[2:]}
    assert shown == {node_id[:8] for node_id in stack.cluster.alive_nodes()}
