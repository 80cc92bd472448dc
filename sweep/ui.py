"""`moonsweep ui NAME`: MLflow's UI for a sweep's runs, and optuna-dashboard for its study.

Both are started on 127.0.0.1 for the sweep's own stores (its SQLite files, or whatever
database `sweep.json` names), their URLs printed once they answer, and both stopped on
Ctrl-C (or SIGTERM). optuna-dashboard is optional (`pip install 'moonsweep[dashboard]'`).
A sweep tracked on an MLflow server needs nothing started: the server is the UI, and the
command says where it is.

Example:
    >>> from sweep.ui import mlflow_command
    >>> " ".join(mlflow_command("sqlite:////runs/mlflow.db", 5000)[3:])
    'ui --backend-store-uri sqlite:////runs/mlflow.db --host 127.0.0.1 --port 5000'
"""

from __future__ import annotations

import importlib.util
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from engine.config import ConfigError
from sweep.naming import experiment_url
from sweep.state import SweepState
from sweep.stores import is_server, mask_url

HOST = "127.0.0.1"
MLFLOW_PORT = 5000
DASHBOARD_PORT = 8080
START_SECONDS = 120.0  # MLflow's server takes a few seconds to import and migrate the DB


def mlflow_command(tracking_uri: str, port: int) -> list[str]:
    """`mlflow ui` for a tracking store, with this interpreter's MLflow."""
    store = ["--backend-store-uri", tracking_uri]
    return [sys.executable, "-m", "mlflow", "ui", *store, "--host", HOST, "--port", str(port)]


def dashboard_command(storage_url: str, port: int) -> list[str] | None:
    """`optuna-dashboard` for an Optuna storage; None when it is not installed."""
    if importlib.util.find_spec("optuna_dashboard") is None:
        return None
    beside = Path(sys.executable).with_name("optuna-dashboard")
    program = str(beside) if beside.exists() else shutil.which("optuna-dashboard")
    if program is None:
        return None
    return [program, storage_url, "--host", HOST, "--port", str(port)]


def _check_port(port: int, flag: str) -> None:
    with socket.socket() as probe:
        try:
            probe.bind((HOST, port))
        except OSError:
            raise ConfigError(
                f"{flag} {port}: something already listens on {HOST}:{port}; choose another port"
            ) from None


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError):
        return False


def _last_line(log: Path) -> str:
    lines = log.read_text(errors="replace").strip().splitlines() if log.exists() else []
    return mask_url(lines[-1][:300]) if lines else "no output"


class _Server:
    """One child server; its output goes to a log file in the sweep's folder."""

    def __init__(self, what: str, command: list[str], url: str, log: Path, cwd: Path) -> None:
        self.what, self.url, self.log = what, url, log
        with open(log, "w") as out:
            # Same process group as this command: Ctrl-C in a terminal reaches both.
            self.proc = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=cwd
            )

    def wait_ready(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ConfigError(
                    f"{self.what} stopped on start (exit {self.proc.returncode}): "
                    f"{_last_line(self.log)} (log: {self.log})"
                )
            if _answers(self.url):
                return
            time.sleep(0.5)
        raise ConfigError(
            f"{self.what} did not answer at {self.url} in {START_SECONDS:.0f} s (log: {self.log})"
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def serve(
    state: SweepState, folder: Path, port: int, dashboard_port: int, echo: Callable[[str], None]
) -> None:
    """Start the UIs for the sweep's stores, print their URLs, stop them on Ctrl-C."""
    if is_server(state.tracking_uri):
        raise ConfigError(
            f"sweep {state.name} is tracked on the MLflow server {mask_url(state.tracking_uri)}: "
            f"open that URL (experiment moonsweep-{state.name}); there is nothing to start here"
        )
    _check_port(port, "--port")
    dashboard = dashboard_command(state.storage_url, dashboard_port)
    if dashboard is not None:
        _check_port(dashboard_port, "--dashboard-port")
    previous = signal.signal(signal.SIGTERM, _interrupt)
    servers: list[_Server] = []
    try:
        servers.append(
            _Server(
                "the MLflow UI",
                mlflow_command(state.tracking_uri, port),
                f"http://{HOST}:{port}/health",
                folder / "ui-mlflow.log",
                folder,
            )
        )
        if dashboard is not None:
            servers.append(
                _Server(
                    "optuna-dashboard",
                    dashboard,
                    f"http://{HOST}:{dashboard_port}/",
                    folder / "ui-optuna.log",
                    folder,
                )
            )
        deadline = time.monotonic() + START_SECONDS
        for server in servers:
            server.wait_ready(deadline)
        echo(f"mlflow  {experiment_url(f'http://{HOST}:{port}', state.experiment_id)}")
        if dashboard is not None:
            echo(f"optuna  http://{HOST}:{dashboard_port}/dashboard/")
        else:
            echo("optuna  optuna-dashboard is not installed: pip install 'moonsweep[dashboard]'")
        echo("Ctrl-C stops them")
        while all(s.proc.poll() is None for s in servers):
            time.sleep(0.5)
        gone = next(s for s in servers if s.proc.poll() is not None)
        raise ConfigError(
            f"{gone.what} stopped (exit {gone.proc.returncode}): {_last_line(gone.log)}"
        )
    except KeyboardInterrupt:
        echo("stopped")
    finally:
        for server in servers:
            server.stop()
        signal.signal(signal.SIGTERM, previous)
