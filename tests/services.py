"""Real servers for tests, on 127.0.0.1 and free ports, always stopped after use.

Each helper is a context manager that stops (and cleans up) everything it started, even
when the test fails:

    with postgres() as pg:                      # PostgreSQL, run as an unprivileged user
        url = pg.create_database("optuna")      # postgresql://moonsweep@127.0.0.1:P/optuna
    with mlflow_server(backend_uri, tmp_path / "art") as ml:
        ml.url                                  # http://127.0.0.1:P
        ml.stop(); ml.start()                   # a tracking outage, then the same server back
    with ray_cluster(workers=1, root=tmp_path) as cluster:
        cluster.address                         # 127.0.0.1:P for ray.init / --address
        cluster.env                             # what a driver's environment needs (token)
        cluster.kill_worker(0)                  # SIGKILL a worker node: a lost machine

Every Ray node is its own `ray start --block` process group with its own ports and temp
dir, so tests beside other Ray instances on this machine never share anything with them
(and `ray stop`, which would stop every Ray on the machine, is never used).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports (held open together while picking, so never repeated)."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


def wait_for(check, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    """Poll `check()` until true; fail with `what` (and the process's exit) on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: process exited with {proc.returncode}")
        time.sleep(0.2)
    raise TimeoutError(f"{what}: not ready after {timeout:.0f} s")


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _start(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    # Own session: the whole process tree is stopped with one killpg.
    out = open(log, "ab")  # noqa: SIM115 - owned by the process for its lifetime
    return subprocess.Popen(
        cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env
    )


def _stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, grace: float = 10.0) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    # Children that outlived the leader still carry its process group id.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


# -- PostgreSQL ----------------------------------------------------------------------------


def postgres_bin(name: str) -> str:
    """Path of a PostgreSQL server program (PATH, then Debian's versioned folders)."""
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    if versions:
        return str(versions[-1])
    raise FileNotFoundError(f"{name} not found: install PostgreSQL (.ci/system-deps.sh)")


@dataclass
class Postgres:
    """A running PostgreSQL server; `create_database` returns a SQLAlchemy URL."""

    port: int
    user: str = "moonsweep"
    host: str = "127.0.0.1"

    def url(self, database: str) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def _as_server_user() -> tuple[list[str], str | None]:
    """PostgreSQL refuses root: run it as `postgres` (or `nobody`) when we are root."""
    if os.geteuid() != 0:
        return [], None
    for user in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            import pwd

            pwd.getpwnam(user)
            return ["runuser", "-u", user, "--"], user
    raise RuntimeError("running as root and no unprivileged user to run PostgreSQL")


@contextlib.contextmanager
def postgres() -> Iterator[Postgres]:
    """A throw-away PostgreSQL cluster (trust auth, 127.0.0.1 only, socket in its own dir)."""
    prefix, user = _as_server_user()
    # Its own folder under /tmp: pytest's tmp_path is root-only, the server user needs it.
    root = Path(tempfile.mkdtemp(prefix="moonsweep-pg-"))
    data, sockets = root / "data", root / "sock"
    sockets.mkdir()
    if user is not None:
        shutil.chown(root, user)
        shutil.chown(sockets, user)
    db_user = "moonsweep"
    init = [postgres_bin("initdb"), "-D", str(data), "-U", db_user, "-A", "trust", "-E", "UTF8"]
    subprocess.run(prefix + init + ["--no-sync"], check=True, capture_output=True)
    port = free_port()
    server = [
        postgres_bin("postgres"),
        "-D",
        str(data),
        "-p",
        str(port),
        "-h",
        "127.0.0.1",
        "-k",
        str(sockets),
        "-c",
        "fsync=off",
        "-c",
        "max_connections=200",
    ]
    proc = _start(prefix + server, root / "server.log")
    try:
        wait_for(lambda: _port_open(port), 30, "PostgreSQL", proc)
        pg = Postgres(port=port, user=db_user)
        # Accepting TCP comes slightly before accepting logins.
        wait_for(lambda: _can_login(pg), 30, "PostgreSQL login", proc)
        yield pg
    finally:
        _stop(proc, signal.SIGINT)  # "fast" shutdown
        shutil.rmtree(root, ignore_errors=True)


def _can_login(pg: Postgres) -> bool:
    import psycopg

    try:
        psycopg.connect(pg.url("postgres")).close()
        return True
    except psycopg.OperationalError:
        return False


# -- MLflow tracking server ----------------------------------------------------------------


@dataclass
class MlflowServer:
    """`mlflow server` on a database, serving artifacts from a folder; stop/start at will."""

    backend_uri: str
    artifacts_dir: Path
    port: int = field(default_factory=free_port)
    log: Path | None = None
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90) -> None:
        """Start (or restart, on the same port) and wait until it answers."""
        cmd = [
            str(BIN / "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
            "--backend-store-uri",
            self.backend_uri,
            "--artifacts-destination",
            str(self.artifacts_dir),
        ]
        log = self.log or self.artifacts_dir.parent / f"mlflow-server-{self.port}.log"
        self.proc = _start(cmd, log)
        wait_for(self.healthy, timeout, f"mlflow server (log {log})", self.proc)

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)
            self.proc = None


@contextlib.contextmanager
def mlflow_server(backend_uri: str, artifacts_dir: Path) -> Iterator[MlflowServer]:
    artifacts_dir.mkdir(parents=True, exist_ok=True)
    server = MlflowServer(backend_uri, artifacts_dir)
    try:
        server.start()
        yield server
    finally:
        server.stop()


# -- Ray: a head and worker nodes as separate processes on this machine --------------------


@dataclass
class RayNode:
    proc: subprocess.Popen
    temp_dir: Path
    log: Path

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None


@dataclass
class RayCluster:
    """A head node and worker nodes started with `ray start`; `address` is the GCS."""

    root: Path
    cpus: int
    address: str = ""
    # Ray 2.59+ turns token authentication on for `ray start` clusters: every node and
    # every driver of this cluster shares this environment (its own token).
    env: dict[str, str] = field(
        default_factory=lambda: {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    )
    head: RayNode | None = None
    workers: list[RayNode] = field(default_factory=list)

    def _node(self, name: str, head: bool) -> RayNode:
        # Short temp dirs: Ray's Unix socket paths must stay under 108 characters.
        temp_dir = Path(tempfile.mkdtemp(prefix=f"msr-{name}-"))
        ports = free_ports(7)
        cmd = [
            str(BIN / "ray"),
            "start",
            "--block",
            "--node-ip-address",
            "127.0.0.1",
            "--num-cpus",
            str(self.cpus),
            "--num-gpus",
            "0",
            "--temp-dir",
            str(temp_dir),
            "--node-manager-port",
            str(ports[1]),
            "--object-manager-port",
            str(ports[2]),
            "--metrics-export-port",
            str(ports[3]),
            "--runtime-env-agent-port",
            str(ports[4]),
            "--dashboard-agent-listen-port",
            str(ports[5]),
            "--dashboard-agent-grpc-port",
            str(ports[6]),
            "--min-worker-port",
            "0",
            "--max-worker-port",
            "0",
            "--disable-usage-stats",
        ]
        if head:
            self.address = f"127.0.0.1:{ports[0]}"
            cmd += [
                "--head",
                "--port",
                str(ports[0]),
                "--include-dashboard",
                "false",
            ]
        else:
            cmd += ["--address", self.address]
        env = {**os.environ, **self.env, "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"}
        log = self.root / f"ray-{name}.log"
        return RayNode(_start(cmd, log, env), temp_dir, log)

    def start(self, workers: int, timeout: float = 90) -> None:
        self.head = self._node("head", head=True)
        self.wait_nodes(1, timeout)
        for i in range(workers):
            self.add_worker(timeout, index=i)

    def add_worker(self, timeout: float = 90, index: int | None = None) -> RayNode:
        node = self._node(f"w{len(self.workers) if index is None else index}", head=False)
        self.workers.append(node)
        self.wait_nodes(1 + sum(w.alive for w in self.workers), timeout)
        return node

    def alive_nodes(self) -> list[dict]:
        """Nodes the GCS reports alive (asked from a short-lived separate process)."""
        # Asked from a separate process so the test process never joins this cluster.
        code = (
            f"import json, ray; ray.init(address={self.address!r}, logging_level='ERROR', "
            "log_to_driver=False); "
            "print(json.dumps([n['NodeID'] for n in ray.nodes() if n['Alive']]))"
        )
        try:
            out = subprocess.run(
                [sys.executable, "-c", code],
                capture_output=True,
                text=True,
                timeout=30,
                env={**os.environ, **self.env},
            )
        except subprocess.TimeoutExpired:
            return []
        if out.returncode != 0:
            return []
        return json.loads(out.stdout.strip().splitlines()[-1])

    def wait_nodes(self, count: int, timeout: float) -> None:
        assert self.head is not None
        wait_for(
            lambda: len(self.alive_nodes()) == count,
            timeout,
            f"{count} Ray nodes (logs in {self.root})",
            self.head.proc,
        )

    def kill_worker(self, index: int) -> None:
        """SIGKILL a worker node's whole process tree, as if its machine went away."""
        _stop(self.workers[index].proc, signal.SIGKILL, grace=10)

    def stop(self) -> None:
        # SIGKILL: a SIGTERM makes each node drain for up to 30 s, and nothing here needs it.
        for node in [*self.workers, *([self.head] if self.head else [])]:
            _stop(node.proc, signal.SIGKILL)
            shutil.rmtree(node.temp_dir, ignore_errors=True)


@contextlib.contextmanager
def ray_cluster(workers: int = 1, root: Path | None = None, cpus: int = 1) -> Iterator[RayCluster]:
    """A head plus `workers` worker nodes, `cpus` logical CPUs each; all stopped after."""
    root = root or Path(tempfile.mkdtemp(prefix="moonsweep-ray-"))
    root.mkdir(parents=True, exist_ok=True)
    cluster = RayCluster(root=root, cpus=cpus)
    try:
        cluster.start(workers)
        yield cluster
    finally:
        cluster.stop()


__all__ = [
    "MlflowServer",
    "Postgres",
    "RayCluster",
    "free_port",
    "free_ports",
    "mlflow_server",
    "postgres",
    "ray_cluster",
    "wait_for",
]
