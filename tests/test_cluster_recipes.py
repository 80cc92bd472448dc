"""The recipes in cluster/: they parse, hold the fields moonsweep relies on, and every
command they run exists (moonsweep's CLI, `ray start`, `mlflow server`) with its options.

No cloud, Kubernetes or SLURM is reachable here: the launcher YAMLs are checked against
Ray's own schema, the manifests by hand, and the SLURM script runs with DRY_RUN=1 and a
stand-in `scontrol` (the one part mocked: it expands a node list as SLURM would).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from importlib import metadata
from pathlib import Path

import click
import jsonschema
import pytest
import ray
import typer
import yaml

from sweep.cli import app

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
ENV_KEYS = {
    "MOONSWEEP_STORAGE",
    "MLFLOW_TRACKING_URI",
    "MOONSWEEP_RESULTS",
    "RAY_AUTH_MODE",
    "RAY_AUTH_TOKEN",
}


def options_of(command: click.Command) -> set[str]:
    return {opt for p in command.params for opt in p.opts + p.secondary_opts}


def ray_start_options() -> set[str]:
    from ray.scripts.scripts import start

    return options_of(start)


def check_moonsweep(line: str) -> None:
    """`moonsweep SUB --opt ...`: SUB exists and every option is one of its options."""
    words = shlex.split(line)
    assert words[0] == "moonsweep", line
    group = typer.main.get_command(app)
    sub = group.commands.get(words[1])
    assert sub is not None, f"no command {words[1]!r}: {line}"
    used = {w.split("=")[0] for w in words[2:] if w.startswith("--")}
    unknown = used - options_of(sub)
    assert not unknown, f"{line}: unknown options {unknown}"


def check_ray_start(line: str) -> None:
    words = shlex.split(line)
    assert words[:2] == ["ray", "start"], line
    used = {w.split("=")[0] for w in words[2:] if w.startswith("--")}
    unknown = used - ray_start_options()
    assert not unknown, f"{line}: unknown options {unknown}"


def moonsweep_commands(text: str) -> list[str]:
    """Every `moonsweep <sub> ...` command in a file (continuation lines joined)."""
    text = re.sub(r"\\\n\s*#?\s*", " ", text)
    found = re.findall(r"moonsweep (?:run|resume|status|replay|train)(?=\s)[^'\"`\n]*", text)
    return [re.split(r"\s+&&|\s*;", f)[0].strip() for f in found]


def test_every_moonsweep_command_in_cluster_exists() -> None:
    files = [p for p in CLUSTER.rglob("*") if p.is_file()]
    commands = [c for p in files for c in moonsweep_commands(p.read_text())]
    assert len(commands) >= 8
    for command in commands:
        check_moonsweep(command)
    # The checker itself catches a wrong option.
    with pytest.raises(AssertionError, match="unknown options"):
        check_moonsweep("moonsweep run --adress auto")


@pytest.mark.parametrize("name", ["aws.yaml", "gcp.yaml"])
def test_launcher_yaml(name: str) -> None:
    config = yaml.safe_load((CLUSTER / name).read_text())
    schema_file = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"
    jsonschema.validate(config, json.loads(schema_file.read_text()))
    assert config["provider"]["type"] == name.removesuffix(".yaml")
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}  # trials stay off the head
    gpu = [t for t in types.values() if t["resources"].get("GPU", 0) >= 1]
    assert gpu and all(t["max_workers"] >= 1 for t in gpu)
    # The checkout and the env file reach every node; moonsweep is installed from it.
    mounts = config["file_mounts"]
    assert mounts["/home/ray/moonsweep"] == "."
    assert mounts["/home/ray/moonsweep.env"] == "cluster/moonsweep.env"
    assert any("pip install" in c and "/home/ray/moonsweep" in c for c in config["setup_commands"])
    assert config["docker"]["image"].startswith(f"rayproject/ray:{ray.__version__}-")
    starts = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    ray_starts = [c for c in starts if "ray start" in c]
    assert len(ray_starts) == 2
    for command in ray_starts:
        assert ". ~/moonsweep.env" in command  # the Ray token and the stores on every node
        check_ray_start(command[command.index("ray start") :])
    assert "--head" in ray_starts[0] and "--address" in ray_starts[1]


def load_manifests(name: str) -> list[dict]:
    return list(yaml.safe_load_all((CLUSTER / "kuberay" / name).read_text()))


def test_kuberay_raycluster() -> None:
    docs = {d["kind"]: d for d in load_manifests("raycluster.yaml")}
    assert set(docs) == {"PersistentVolumeClaim", "RayCluster"}
    pvc, cluster = docs["PersistentVolumeClaim"], docs["RayCluster"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]  # every pod writes results
    assert cluster["apiVersion"] == "ray.io/v1"
    assert cluster["spec"]["rayVersion"] == ray.__version__
    head = cluster["spec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    pods = [head["template"]["spec"]] + [
        g["template"]["spec"] for g in cluster["spec"]["workerGroupSpecs"]
    ]
    for pod in pods:
        (container,) = pod["containers"]
        assert {"secretRef": {"name": "moonsweep-env"}} in container["envFrom"]
        assert {"name": "shared", "mountPath": "/shared"} in container["volumeMounts"]
        claim = pod["volumes"][0]["persistentVolumeClaim"]["claimName"]
        assert claim == pvc["metadata"]["name"]
    for group in cluster["spec"]["workerGroupSpecs"]:
        (container,) = group["template"]["spec"]["containers"]
        assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]


def test_kuberay_rayjob_runs_a_sweep_on_the_cluster() -> None:
    (job,) = load_manifests("rayjob.yaml")
    (cluster,) = [d for d in load_manifests("raycluster.yaml") if d["kind"] == "RayCluster"]
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    entrypoint = job["spec"]["entrypoint"]
    check_moonsweep(entrypoint)
    words = shlex.split(entrypoint)
    assert words[1] == "run"
    # Work directory and Ray results on the shared volume every pod mounts.
    assert words[words.index("--workdir") + 1].startswith("/shared/")
    assert words[words.index("--results") + 1].startswith("/shared/")


def test_env_example_names_what_moonsweep_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    text = (CLUSTER / "moonsweep.env.example").read_text()
    values = dict(
        line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#")
    )
    assert set(values) == ENV_KEYS
    assert values["MOONSWEEP_STORAGE"].startswith("postgresql+psycopg://")
    from sweep.cluster import results_location

    monkeypatch.setenv("MOONSWEEP_RESULTS", values["MOONSWEEP_RESULTS"])
    assert results_location(None) == values["MOONSWEEP_RESULTS"]


def slurm_dry_run(tmp_path: Path, nodes: list[str]) -> list[str]:
    fake = tmp_path / "bin"
    fake.mkdir(parents=True)
    # Stand-in for SLURM's `scontrol show hostnames LIST` (SLURM cannot run here).
    (fake / "scontrol").write_text('#!/bin/sh\necho "$3" | tr , "\\n"\n')
    (fake / "scontrol").chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{fake}:{os.environ['PATH']}",
        "DRY_RUN": "1",
        "SLURM_JOB_NODELIST": ",".join(nodes),
        "SLURM_CPUS_PER_TASK": "16",
        "SLURM_GPUS_PER_NODE": "a100:4",
        "HEAD_IP": "10.1.2.3",
        "SHARED": "/nfs/sweeps",
    }
    script = CLUSTER / "slurm" / "moonsweep.sbatch"
    out = subprocess.run(
        ["bash", str(script)], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()


def test_slurm_script(tmp_path: Path) -> None:
    script = CLUSTER / "slurm" / "moonsweep.sbatch"
    syntax = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr
    directives = [ln for ln in script.read_text().splitlines() if ln.startswith("#SBATCH")]
    assert "#SBATCH --ntasks-per-node=1" in directives
    lines = slurm_dry_run(tmp_path, ["gpu01", "gpu02", "gpu03"])
    assert len(lines) == 4
    head, *workers, sweep = lines
    assert head.startswith("srun --nodes=1 --ntasks=1 -w gpu01 ray start --head")
    assert [w.split()[4] for w in workers] == ["gpu02", "gpu03"]
    for line in (head, *workers):
        assert line.endswith("--block &")  # SLURM stops the steps when the job ends
        command = line[line.index("ray start") :].removesuffix("&")
        check_ray_start(command)
        assert "--num-cpus=16" in command and "--num-gpus=4" in command
    assert "--port=6379" in head and "--node-ip-address=10.1.2.3" in head
    assert all("--address=10.1.2.3:6379" in w for w in workers)
    check_moonsweep(sweep)
    assert "--address 10.1.2.3:6379" in sweep
    assert "--results /nfs/sweeps/ray-results" in sweep
    # One node: a head and no workers.
    assert len(slurm_dry_run(tmp_path / "one", ["solo"])) == 2


def test_mlflow_recipe(tmp_path: Path) -> None:
    from mlflow.cli import server

    script = CLUSTER / "mlflow" / "mlflow-server.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    env = {
        **os.environ,
        "DRY_RUN": "1",
        "MLFLOW_DB_URI": "postgresql+psycopg://u:p@db:5432/mlflow",
        "MLFLOW_ARTIFACTS": "/shared/mlartifacts",
        "MLFLOW_ALLOWED_HOSTS": "mlflow.internal:5000",
    }
    out = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    words = out.stdout.split()
    assert words[:2] == ["mlflow", "server"]
    used = {w for w in words[2:] if w.startswith("--")}
    assert used <= options_of(server), used - options_of(server)
    assert words[words.index("--backend-store-uri") + 1] == env["MLFLOW_DB_URI"]
    assert words[words.index("--allowed-hosts") + 1] == "mlflow.internal:5000"
    # Missing settings: a clear message, not a server on defaults.
    bare = {k: v for k, v in env.items() if k != "MLFLOW_DB_URI"}
    failed = subprocess.run(["bash", str(script)], env=bare, capture_output=True, text=True)
    assert failed.returncode != 0 and "MLFLOW_DB_URI" in failed.stderr

    compose = yaml.safe_load((CLUSTER / "mlflow" / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"postgres", "minio", "mlflow"} <= set(services)
    mlflow = services["mlflow"]
    assert "mlflow-server.sh" in mlflow["command"]
    assert mlflow["environment"]["MLFLOW_DB_URI"].startswith("postgresql+psycopg://")
    assert mlflow["environment"]["MLFLOW_ARTIFACTS"].startswith("s3://")
    # The server image: a published release on the client's major line (pip resolves the
    # newest client, so an exact match would break on every MLflow release).
    tag = mlflow["image"].rsplit(":v", 1)[1]
    assert re.fullmatch(r"\d+\.\d+\.\d+", tag), tag
    assert tag.split(".")[0] == metadata.version("mlflow").split(".")[0]
    init = (CLUSTER / "mlflow" / "initdb" / "optuna.sql").read_text()
    assert "CREATE DATABASE optuna" in init


def test_local_postgres_script_syntax() -> None:
    script = CLUSTER / "local" / "postgres.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
