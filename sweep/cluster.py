"""Running a sweep on a Ray cluster: where Ray's results go, and where each trial ran.

On one machine Ray keeps the sweep's results (trial checkpoints, the experiment state) in
the sweep's folder. On a cluster every node writes its trials' checkpoints there and the
driver reads them back, so with more than one node the results must live on storage every
node sees: a shared file system mounted at the same path everywhere (NFS), or a bucket
(`s3://...`, `gs://...`). `check_results_storage` refuses to start otherwise, and for a
shared path it proves the point: a probe file written by the driver must be visible from
every node.

    >>> results_location("/nfs/sweeps")   # doctest: +SKIP
    '/nfs/sweeps'
    >>> check_results_storage(None)       # on a 2-node cluster: ConfigError  # doctest: +SKIP
"""

from __future__ import annotations

import os
import secrets
import socket
from pathlib import Path
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from engine.config import ConfigError

RESULTS_ENV = "MOONSWEEP_RESULTS"
PROBE_PREFIX = ".moonsweep-shared-probe-"


def is_uri(location: str) -> bool:
    """`s3://bucket/x` and other pyarrow file systems, as opposed to a plain path."""
    return "://" in location


def results_location(results: str | None) -> str | None:
    """The `--results` storage (or `$MOONSWEEP_RESULTS`): a URI, or an absolute path."""
    results = results or os.environ.get(RESULTS_ENV) or None
    if results is None or is_uri(results):
        return results
    return str(Path(results).expanduser().resolve())


def ray_experiment(results: str | None, folder: Path, name: str) -> tuple[str, str]:
    """(storage_path, experiment name) for Ray's RunConfig: the sweep folder by default."""
    if results is None:
        return str(folder), "ray"
    return results, name


def experiment_path(results: str | None, folder: Path, name: str) -> str:
    """Where Ray keeps the sweep's experiment (for restore and for reading trials back)."""
    storage, experiment = ray_experiment(results, folder, name)
    return storage.rstrip("/") + "/" + experiment


def unreachable_address(address: str, timeout: float = 5.0) -> str | None:
    """What is wrong with a Ray address: malformed, or nothing answers (None: fine).

    `ray.init` keeps retrying an address where nothing listens for minutes; this asks
    once. `auto` and `ray://` addresses are left to Ray.
    """
    if address == "auto" or "://" in address:
        return None
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        return "not auto, HOST:PORT or ray://HOST:PORT"
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
        return None
    except OSError as exc:
        return f"nothing answers there ({exc.strerror or exc})"


def alive_nodes() -> list[dict[str, Any]]:
    """The Ray nodes that are up (ray.init must have been called)."""
    return [n for n in ray.nodes() if n.get("Alive")]


def node_placement() -> dict[str, str]:
    """Where the calling Ray worker runs: its node id (several nodes can share an IP)."""
    return {"node_id": ray.get_runtime_context().get_node_id()}


def check_results_storage(results: str | None, address: str | None = None) -> None:
    """Refuse a multi-node cluster without shared storage for Ray's results.

    With one node anything works. With several, `results` must be given; a bucket URI is
    taken as shared, a path is checked from every node.
    """
    nodes = alive_nodes()
    if len(nodes) <= 1:
        return
    where = f"the Ray cluster at {address}" if address else "the Ray cluster"
    if results is None:
        raise ConfigError(
            f"{where} has {len(nodes)} nodes, so Ray's results (trial checkpoints) need "
            f"storage every node sees: pass --results with a shared path mounted at the same "
            f"place on every node (NFS), or a bucket such as s3://bucket/prefix "
            f"(or set ${RESULTS_ENV})"
        )
    if is_uri(results):
        return
    blind = _nodes_not_seeing(Path(results), nodes)
    if blind:
        raise ConfigError(
            f"--results {results} is not shared: {len(blind)} of {len(nodes)} nodes of {where} "
            f"do not see it ({', '.join(blind)}); mount it at the same path on every node "
            f"(NFS), or use a bucket such as s3://bucket/prefix"
        )


def _sees(path: str, token: str) -> bool:
    try:
        return Path(path).read_text() == token
    except OSError:
        return False


def _nodes_not_seeing(results: Path, nodes: list[dict[str, Any]]) -> list[str]:
    """Nodes on which a file the driver just wrote under `results` is not there."""
    try:
        results.mkdir(parents=True, exist_ok=True)
        token = secrets.token_hex(8)
        probe = results / f"{PROBE_PREFIX}{token}"
        probe.write_text(token)
    except OSError as exc:
        raise ConfigError(f"--results {results}: cannot write there ({exc.strerror})") from None
    sees = ray.remote(num_cpus=0)(_sees)
    try:
        checks = [
            sees.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
            ).remote(str(probe), token)
            for n in nodes
        ]
        seen = ray.get(checks, timeout=300)
    finally:
        probe.unlink(missing_ok=True)
    return [
        f"{n['NodeManagerAddress']} ({n['NodeID'][:8]})"
        for n, ok in zip(nodes, seen, strict=True)
        if not ok
    ]
