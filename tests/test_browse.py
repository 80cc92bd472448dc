"""Reading and browsing a sweep: `moonsweep list`, `moonsweep ui`, and no Ray for readers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from runner import moonsweep

from engine.config import preset_names
from engine.data import suites
from engine.models import models
from engine.scores import scores
from sweep.spaces import space_names
from sweep.state import SweepState
from sweep.stores import ensure_experiment, mlflow_client

ROOT = Path(__file__).resolve().parent.parent


def test_list_each_kind_reads_the_registries() -> None:
    expected = {
        "models": models.names(),
        "suites": suites.names(),
        "scores": scores.names(),
        "spaces": space_names(),
        "presets": preset_names(),
    }
    for kind, names in expected.items():
        proc = moonsweep("list", kind)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.splitlines() == names, kind
    methods = moonsweep("list", "sparse-methods")
    assert methods.stdout.split() == ["dense", "rigl", "set", "static"]
    everything = moonsweep("list").stdout.splitlines()
    assert everything[0] == f"models: {', '.join(models.names())}"
    assert [line.split(":")[0] for line in everything] == [
        "models",
        "suites",
        "sparse-methods",
        "scores",
        "spaces",
        "presets",
    ]


def test_list_unknown_kind_exits_2() -> None:
    proc = moonsweep("list", "colours")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: unknown kind 'colours'; allowed: models, suites, sparse-methods, scores, "
        "spaces, presets"
    ]


def test_reading_a_sweep_needs_no_ray() -> None:
    code = (
        "import sys\n"
        "import sweep.state, sweep.selection, sweep.status, sweep.report, sweep.stats\n"
        "print(sorted(m for m in ('ray', 'mlflow', 'optuna') if m in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout.strip() == "['mlflow', 'optuna']"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sweep(workdir: Path, name: str, tracking_uri: str | None = None) -> SweepState:
    """A sweep's records as `moonsweep run` leaves them before its first trial: real stores."""
    workdir.mkdir(parents=True, exist_ok=True)
    uri = tracking_uri or f"sqlite:///{workdir / 'mlflow.db'}"
    experiment, parent = "0", "0"
    if tracking_uri is None:
        client = mlflow_client(uri)
        experiment = ensure_experiment(client, f"moonsweep-{name}", None)
        parent = client.create_run(experiment, run_name=name).info.run_id
    state = SweepState(
        name=name,
        space={},
        space_source="default",
        tracking_uri=uri,
        storage_url=f"sqlite:///{workdir / 'optuna.db'}",
        experiment_id=experiment,
        parent_run_id=parent,
    )
    (workdir / name).mkdir()
    (workdir / name / "sweep.json").write_text(state.model_dump_json())
    return state


def test_ui_serves_the_sweeps_runs_and_stops(tmp_path: Path) -> None:
    workdir = tmp_path / "w"
    state = _sweep(workdir, "u")
    port, dash = _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "sweep.cli", "ui", "u", "--workdir", str(workdir)]
        + ["--port", str(port), "--dashboard-port", str(dash)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,  # its own process group: the servers it starts are in it
    )
    try:
        line = proc.stdout.readline()  # the first line comes once the UI answers
        assert line.strip() == (
            f"mlflow  http://127.0.0.1:{port}/#/experiments/{state.experiment_id}/runs"
            "?workflowType=machine_learning"
        ), proc.stderr.read() if proc.poll() is not None else line
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as page:
            assert page.status == 200
        api = (
            f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/get?"
            f"experiment_id={state.experiment_id}"
        )
        with urllib.request.urlopen(api, timeout=30) as answer:
            assert b"moonsweep-u" in answer.read()  # the sweep's own store, not another
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.5)
    else:
        pytest.fail("a process of `moonsweep ui` outlived it")
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5)


def test_ui_refuses_a_sweep_tracked_on_a_server(tmp_path: Path) -> None:
    _sweep(tmp_path, "r", tracking_uri="http://user:pw@mlflow.example:5000")
    proc = moonsweep("ui", "r", "--workdir", str(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: sweep r is tracked on the MLflow server http://user:***@mlflow.example:5000: "
        "open that URL (experiment moonsweep-r); there is nothing to start here"
    ]


def test_ui_refuses_a_port_in_use(tmp_path: Path) -> None:
    _sweep(tmp_path, "p")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = moonsweep("ui", "p", "--workdir", str(tmp_path), "--port", str(port))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: --port {port}: something already listens on 127.0.0.1:{port}; choose another port"
    ]
