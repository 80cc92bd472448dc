"""Reliability with real processes: a SIGKILLed driver, trial faults with retries, corrupt
checkpoints, a tracking server that is unreachable or goes away, a lost Ray worker node.

Every sweep runs the `moonsweep` command in its own process group (tests/chaos.py), so a
killed driver's embedded Ray is cleaned up after each test.
"""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import optuna
import pytest
import torch
from chaos import (
    EPOCHS,
    SPACE,
    assert_clean,
    audit,
    child_runs,
    expected_trials,
    failpoint,
    finished_trials,
    interrupt_and_resume,
    kill_resume_chain,
    optuna_trials,
    ray_dir,
    run_cli,
    start_driver,
    stop_group,
    trial_checkpoints,
    wait_until,
    write_space,
)
from mlflow.tracking import MlflowClient
from services import free_port, mlflow_server, ray_cluster

from engine.checkpoint import CheckpointError, load_checkpoint, load_newest, save_checkpoint
from engine.train import Run
from sweep.naming import mlflow_metric
from sweep.spaces import load_space
from sweep.stats import aggregate
from sweep.stores import ensure_experiment, mask_url, mlflow_client
from sweep.tracking import MlflowTracking
from sweep.trial import epochs_so_far

pytestmark = pytest.mark.slow


def _steps(client: MlflowClient, run_id: str) -> list[int]:
    return [m.step for m in client.get_metric_history(run_id, "val_accuracy")]


def _last_checkpoint(workdir: Path, name: str, trial_id: str) -> str:
    return trial_checkpoints(workdir, name)[trial_id][-1].name


def _ray_trials(workdir: Path, name: str) -> dict:
    from ray.tune import ExperimentAnalysis

    return {t.trial_id: t for t in ExperimentAnalysis(str(ray_dir(workdir, name))).trials}


def _run_until_the_failpoint_kills_it(
    space: Path, workdir: Path, name: str, spec: str, tmp_path: Path
) -> None:
    """`moonsweep run` with the driver failpoint `spec`, Ray's experiment state saved only
    when Ray forces it (a period of 1000 s), until the failpoint SIGKILLs the driver."""
    log = tmp_path / "driver.log"
    env = {**failpoint(spec, tmp_path / "f"), "TUNE_GLOBAL_CHECKPOINT_S": "1000"}
    driver = start_driver("run", "--space", space, "--workdir", workdir, "--name", name,
                          env=env, log=log)  # fmt: skip
    try:
        driver.wait(300)
    finally:
        stop_group(driver)
    assert driver.returncode == -signal.SIGKILL, log.read_text()[-3000:]


def test_driver_sigkilled_three_times_then_resumed(tmp_path: Path) -> None:
    """Kill during the first trial, between trials and while a checkpoint is written."""
    chain = kill_resume_chain(tmp_path, trials=4)
    kills = chain["kills"]
    # Nothing had finished at the first kill; at the third the sweep was not over yet.
    assert [k["finished"] for k in kills][0] == 0 and kills[2]["finished"] < 5
    [(stalled, folders)] = chain["first_trial"].items()
    assert folders == ["checkpoint_000000"]  # epoch 1's; killed while in epoch 2's report
    assert chain["final"].returncode == 0, chain["final"].stderr[-3000:]
    report = chain["audit"]
    assert_clean(report, runs=5)
    workdir = chain["workdir"]
    client = MlflowClient(json.loads((workdir / "k" / "sweep.json").read_text())["tracking_uri"])
    for run in child_runs(workdir, "k"):
        assert _steps(client, run.info.run_id) == list(range(1, EPOCHS + 1))  # no epoch twice
    trials = optuna_trials(workdir, "k")
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 4
    # Asked for by a driver killed before Ray saved the trial: failed, with the reason.
    for t in trials:
        if t.state != optuna.trial.TrialState.COMPLETE:
            assert t.state == optuna.trial.TrialState.FAIL
            assert t.user_attrs["fail_reason"] == "orphaned by a killed driver"
    # The first trial went on from its epoch-1 checkpoint (000000): epochs 2 and 3 and the
    # final report make 000001-000003; from scratch they would have gone up to 000004.
    assert _last_checkpoint(workdir, "k", stalled) == f"checkpoint_{EPOCHS - 1:06d}"
    # The temporary file of the interrupted write never reached Ray's storage.
    assert not list((workdir / "k").rglob("*.tmp"))


def test_resume_after_ray_deleted_the_checkpoint_its_saved_state_names(tmp_path: Path) -> None:
    """Ray deletes a trial's checkpoints past `num_to_keep` when it records a newer one, and
    saves its experiment state later in the same step (then copies it to storage in the
    background). A driver killed in between leaves a state naming a deleted checkpoint: Ray
    failed that trial on resume ("does not exist on storage anymore"), though it had
    finished, and its MLflow run ended FAILED (the flaky SIGKILL chain test's 4 of 5)."""
    space = write_space(tmp_path / "space.yaml", trials=2)
    workdir = tmp_path / "w"
    # The experiment state is then saved only when Ray forces it, after every second
    # checkpoint of a trial: after checkpoint_000001. Recording checkpoint_000003 (the
    # baseline's final one) deletes 000001, and the driver dies right there.
    _run_until_the_failpoint_kills_it(space, workdir, "d", "die@3", tmp_path)
    [trial] = _ray_trials(workdir, "d").values()
    recorded = Path(trial.checkpoint.path)
    assert trial.status != "TERMINATED" and recorded.name == "checkpoint_000001"
    assert not recorded.exists()  # deleted by Ray itself, once 000003 was recorded
    folders = trial_checkpoints(workdir, "d")[trial.trial_id]
    assert [f.name for f in folders] == ["checkpoint_000002", "checkpoint_000003"]
    before = finished_trials(workdir, "d")  # the baseline: a final checkpoint, run RUNNING
    assert list(before) == [trial.trial_id] and before[trial.trial_id]["end"] is None

    resumed = run_cli("resume", "d", "--workdir", workdir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_clean(audit(workdir, "d", before, expected=3), runs=3)
    # From the second-newest checkpoint it left (the newest might be one Ray never recorded);
    # the deleted 000000 put back empty, so Ray's own clean-up of it does not fail either.
    assert (
        f"trial {trial.trial_id}: its recorded checkpoint_000001 was deleted before the driver "
        "stopped; resuming it from checkpoint_000002"
    ) in resumed.stderr
    assert "Error handling checkpoint" not in resumed.stderr
    client = MlflowClient(json.loads((workdir / "d" / "sweep.json").read_text())["tracking_uri"])
    for run in child_runs(workdir, "d"):
        assert _steps(client, run.info.run_id) == list(range(1, EPOCHS + 1))
        names = {a.path for a in client.list_artifacts(run.info.run_id, "final")}
        assert "final/metrics.json" in names and "final/model-seed0.pt" in names
    complete = optuna_trials(workdir, "d")
    assert [t.state for t in complete] == [optuna.trial.TrialState.COMPLETE] * 2


def test_a_driver_killed_while_it_spools_a_tracking_write_resumes_clean(tmp_path: Path) -> None:
    """SIGKILL between a spool file's write and its rename leaves a temporary file (the
    clean-clone CI's flaky `*.tmp` in the three-kill chain). The write it held was never
    sent; resume removes the file and the stores still end complete."""
    space = write_space(tmp_path / "space.yaml", trials=2)
    workdir = tmp_path / "w"
    _run_until_the_failpoint_kills_it(space, workdir, "t", "torn@12", tmp_path)
    [partial] = (workdir / "t" / "spool").glob(".*.pkl.*.tmp")
    before = finished_trials(workdir, "t")

    resumed = run_cli("resume", "t", "--workdir", workdir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not partial.exists()
    assert_clean(audit(workdir, "t", before, expected=3), runs=3)
    client = MlflowClient(json.loads((workdir / "t" / "sweep.json").read_text())["tracking_uri"])
    for run in child_runs(workdir, "t"):
        assert _steps(client, run.info.run_id) == list(range(1, EPOCHS + 1))


def test_resume_while_the_driver_still_runs_is_refused_then_works_after_a_kill(
    tmp_path: Path,
) -> None:
    """A second driver on the same sweep would restore Ray's experiment beside the first
    (trials twice, one reconcile deleting the other's runs): refused, exit 2, one line,
    nothing touched. SIGKILL releases the lock: the resume after it goes ahead."""
    space = write_space(tmp_path / "space.yaml", trials=2)
    workdir = tmp_path / "w"
    paused = tmp_path / "f"
    env, log = failpoint("stall@2", paused), tmp_path / "driver.log"
    driver = start_driver("run", "--space", space, "--workdir", workdir, "--name", "b",
                          env=env, log=log)  # fmt: skip
    try:
        wait_until(lambda: (paused / "paused").exists(), 300, "the first trial's stall")
        state = (workdir / "b" / "sweep.json").read_bytes()
        second = run_cli("resume", "b", "--workdir", workdir)
        assert second.returncode == 2, second.stderr[-3000:]
        [line] = second.stderr.strip().splitlines()
        assert line.startswith("error: sweep b is being run by another driver (pid ")
        assert f"pid {driver.pid} on " in line and "moonsweep resume b" in line
        assert (workdir / "b" / "sweep.json").read_bytes() == state  # untouched
        assert driver.poll() is None  # the first driver runs on
        running = run_cli("status", "b", "--workdir", workdir, "--json")
        assert json.loads(running.stdout)["status"] == "running", running.stderr[-3000:]
        before = finished_trials(workdir, "b")
    finally:
        stop_group(driver)
    # The killed driver could not record its end; status asks the lock instead.
    assert json.loads((workdir / "b" / "sweep.json").read_text())["status"] == "running"
    killed = run_cli("status", "b", "--workdir", workdir, "--json")
    assert json.loads(killed.stdout)["status"] == "interrupted", killed.stderr[-3000:]
    table = run_cli("status", "b", "--workdir", workdir)
    assert table.stdout.startswith("sweep b: interrupted, "), table.stdout[:300]
    resumed = run_cli("resume", "b", "--workdir", workdir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_clean(audit(workdir, "b", before, expected=3), runs=3)


def test_a_resumed_trial_reports_every_epoch_so_far(small) -> None:
    # Its first report after a restore carries them all, so MLflow (which logs each epoch
    # once) also gets an epoch whose report a killed driver never processed.
    runs = [Run(small()), Run(small("seed=1"))]
    records = [[run.train_epoch() for run in runs] for _ in range(2)]
    resumed = [Run(small()), Run(small("seed=1"))]
    for run, source in zip(resumed, runs, strict=True):
        run.load_state_dict(source.state_dict())
    got = epochs_so_far(resumed)
    assert [r["epoch"] for r in got] == [1, 2]
    assert got[1]["loss"] == pytest.approx((records[1][0]["loss"] + records[1][1]["loss"]) / 2)
    assert got == [{**aggregate(pair), "epoch": n} for n, pair in enumerate(records, 1)]
    assert epochs_so_far([Run(small())]) == []  # a fresh start reports only its own epochs


def test_default_space_ctrl_c_of_the_process_group_then_resumed(tmp_path: Path) -> None:
    """Ctrl-C in a terminal (SIGINT to the whole process group) on the shipped default space,
    cut by the command line, once a first trial has finished; resumed to its end."""
    args = ["--space", "default", "--trials", "2", "--epochs", "5", "--set", "model.width=64"]
    chain = interrupt_and_resume(tmp_path, args, sig=signal.SIGINT)
    assert chain["mid_run"] and chain["finished_before"] >= 1
    assert chain["exit"] == 130 and chain["status_after_signal"] == "interrupted"
    assert chain["resume"].returncode == 0, chain["resume"].stderr[-3000:]
    assert chain["again"].returncode == 0 and "already finished" in chain["again"].stderr
    report = chain["audit"]
    assert_clean(report, runs=expected_trials(args))  # 2 trials + the baselines


def test_oom_is_retried_then_recorded_in_every_store(tmp_path: Path) -> None:
    # Three simulated OOMs after epoch 2, one retry allowed: trial 0 fails twice (and ends),
    # trial 1 fails once and finishes on its retry, trial 2 never fails.
    space = write_space(
        tmp_path / "space.yaml", trials=3, extra="retry: {attempts: 1, on: [oom]}\n"
    )
    text = space.read_text().replace(
        "baselines: {dense: {sparsity.method: dense, moon.enabled: false}}", "baselines: {}"
    )
    space.write_text(text)
    env = failpoint("oom@2", tmp_path / "f", times=3)
    workdir = tmp_path / "w"
    proc = run_cli("run", "--space", space, "--workdir", workdir, "--name", "o", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = {int(r.data.tags["optuna.trial_number"]): r for r in child_runs(workdir, "o")}
    trials = {t.number: t for t in optuna_trials(workdir, "o")}
    ray_trials = _ray_trials(workdir, "o")
    assert len(runs) == len(trials) == 3
    failed = runs[0]
    assert failed.info.status == "FAILED"
    reason = failed.data.tags["moonsweep.fail_reason"]
    assert reason.startswith("OutOfMemoryError: simulated CUDA out of memory after epoch 2")
    assert "after 1 retries" in reason
    assert trials[0].state == optuna.trial.TrialState.FAIL
    assert trials[0].user_attrs["fail_reason"] == reason
    assert ray_trials[failed.data.tags["ray.trial_id"]].last_result["fail_reason"] == reason
    retried = runs[1]
    assert retried.info.status == "FINISHED"
    assert retried.data.metrics["retries"] == 1
    assert "OutOfMemoryError" in retried.data.tags["moonsweep.retried"]
    assert trials[1].state == optuna.trial.TrialState.COMPLETE
    client = MlflowClient(json.loads((workdir / "o" / "sweep.json").read_text())["tracking_uri"])
    assert _steps(client, retried.info.run_id) == list(range(1, EPOCHS + 1))
    assert runs[2].data.metrics["retries"] == 0 and "moonsweep.retried" not in runs[2].data.tags
    assert len(list((tmp_path / "f").glob("fired-*"))) == 3


# -- checkpoint files ------------------------------------------------------------------------


def test_checkpoint_write_is_atomic_and_load_is_weights_only(tmp_path: Path, small) -> None:
    path = tmp_path / "state.pt"
    save_checkpoint(path, {"epoch": torch.tensor(1)})

    def crash() -> None:
        raise KeyboardInterrupt  # the process dies between the write and the rename

    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"epoch": torch.tensor(2)}, before_rename=crash)
    assert load_checkpoint(path)["epoch"].item() == 1  # the old file, whole
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]  # no temporary left
    torch.save({"run": Run}, tmp_path / "foreign.pt")  # pickles a class: not weights only
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(tmp_path / "foreign.pt")


def test_corrupt_checkpoint_is_reported_and_the_previous_one_used(tmp_path: Path, small) -> None:
    from ray import tune

    from sweep.trial import STATE_FILE, _restore

    run = Run(small())
    run.train_epoch()
    older, newer = tmp_path / "checkpoint_000000", tmp_path / "checkpoint_000001"
    save_checkpoint(older / STATE_FILE, {"runs": [run.state_dict()]})
    run.train_epoch()
    save_checkpoint(newer / STATE_FILE, {"runs": [run.state_dict()]})
    data = (newer / STATE_FILE).read_bytes()
    (newer / STATE_FILE).write_bytes(data[: len(data) // 2])  # truncated
    states, note = _restore(tune.Checkpoint.from_directory(str(newer)), newer)
    assert states[0]["epoch"] == 1  # the older checkpoint's
    assert "checkpoint_000001" in note and "cannot be read" in note
    assert note.endswith("resumed from checkpoint_000000")
    resumed = Run(small())
    resumed.load_state_dict(states[0])
    assert resumed.epoch == 1
    (older / STATE_FILE).write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="no usable checkpoint"):
        load_newest([newer / STATE_FILE, older / STATE_FILE])


# -- tracking store and work directory -------------------------------------------------------


def _cli(*args: str | Path) -> tuple[int, str]:
    """The CLI in this process (exit code, stderr): checks that end before Ray starts."""
    from typer.testing import CliRunner

    from sweep.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.stderr


def test_unreachable_tracking_server_is_a_clear_error_before_anything(tmp_path: Path) -> None:
    space = write_space(tmp_path / "space.yaml", trials=2)
    uri = f"http://alice:s3cret-pw@127.0.0.1:{free_port()}"
    code, err = _cli("run", "--space", space, "--workdir", tmp_path / "w", "--name", "u",
                     "--tracking-uri", uri)  # fmt: skip
    assert code == 2, err
    assert err.startswith("error: MLflow tracking server http://alice:***@127.0.0.1")
    assert "unreachable" in err and "Traceback" not in err and "s3cret-pw" not in err
    assert not (tmp_path / "w" / "u").exists()  # no sweep folder, no Ray, no trial
    assert [p for p in (tmp_path / "w").rglob("*") if p.is_file()] == []


def test_unwritable_workdir_is_a_clear_error(tmp_path: Path) -> None:
    space = write_space(tmp_path / "space.yaml", trials=2)
    (tmp_path / "file").write_text("not a folder")
    code, err = _cli("run", "--space", space, "--workdir", tmp_path / "file" / "w")
    assert code == 2
    assert err.startswith("error: --workdir") and "cannot write there (Not a directory)" in err
    assert "Traceback" not in err


def test_tracking_server_stopped_and_restarted_mid_sweep(tmp_path: Path) -> None:
    """Training goes on while MLflow is down; everything logged meanwhile arrives later.

    The server's URL carries credentials (ignored by a server without auth): they must not
    appear in any output, tag or param.
    """
    backend = f"sqlite:///{tmp_path / 'server.db'}"
    space = write_space(tmp_path / "space.yaml", trials=3)
    workdir = tmp_path / "w"
    with mlflow_server(backend, tmp_path / "artifacts") as server:
        uri = server.url.replace("http://", "http://bob:hunter2-pw@")
        # The first trial stalls 30 s after epoch 2 (time to stop the server while it runs);
        # the drain waits long enough to restart the server even if the sweep ends first.
        env = {**failpoint("stall@2", tmp_path / "f"), "MOONSWEEP_TRACKING_DRAIN_S": "300"}
        args = ["run", "--space", space, "--workdir", workdir, "--name", "m", "--tracking-uri", uri]
        driver = start_driver(*args, log=tmp_path / "driver.log", env=env)

        def ended() -> int:  # trials with a final checkpoint on Ray's storage
            return sum((f[-1] / "final").is_dir() for f in trial_checkpoints(workdir, "m").values())

        try:
            wait_until(lambda: (tmp_path / "f" / "paused").exists(), 240, "the first trial")
            server.stop()
            ended_before = ended()
            assert ended_before == 0
            # Training goes on: two more trials end while MLflow is down.
            wait_until(lambda: ended() >= ended_before + 2, 240, "trials ending, MLflow down")
            assert driver.poll() is None
            assert len(list((workdir / "m" / "spool").glob("*.pkl"))) > 0  # held on disk
            server.start()
            driver.wait(300)
        finally:
            stop_group(driver)
        out = err = (tmp_path / "driver.log").read_text()
        assert driver.returncode == 0, err[-3000:]
        report = audit(workdir, "m", {}, expected=4)
        assert report == {
            **report,
            "status": "finished",
            "finished_runs": 4,
            "duplicate_runs": 0,
            "stale_optuna": 0,
            "spooled": 0,
        }
        client = MlflowClient(server.url)
        state = json.loads((workdir / "m" / "sweep.json").read_text())
        parent = client.get_run(state["parent_run_id"])
        for run in child_runs(workdir, "m"):
            assert _steps(client, run.info.run_id) == list(range(1, EPOCHS + 1))
            assert "val/auroc_near" in run.data.metrics
            texts = [*run.data.params.values(), *run.data.tags.values()]
            assert not [t for t in texts if "hunter2" in t]
        assert "hunter2" not in out + err
        assert not [t for t in parent.data.tags.values() if "hunter2" in t]
        assert mask_url(uri) in parent.data.tags["moonsweep.command"]


def test_a_store_lost_after_a_run_was_created_gets_no_second_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store goes away between a run's creation and its params: the writer's retry
    describes the run it created, it does not create another (seen in CI under load: a
    trial with two runs, one KILLED and empty)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow_client(uri)
    experiment = ensure_experiment(client, "e", (tmp_path / "a").as_uri(), {})
    parent = client.create_run(experiment).info.run_id
    tracking = MlflowTracking(uri, experiment, parent, load_space("default"))
    real, failures = tracking.client.log_batch, []

    def flaky(*args, **kwargs):
        if kwargs.get("params") and not failures:
            failures.append(1)
            raise ConnectionError("the store went away")
        return real(*args, **kwargs)

    monkeypatch.setattr(tracking.client, "log_batch", flaky)
    monkeypatch.setattr("sweep.tracking.time.sleep", lambda s: None)  # no retry back-off
    config = {"arm": "dense", "level": None, "params": {}, "optuna_trial": -1}
    assert tracking._write(tracking._run_for, ("t1", config))
    runs = client.search_runs([experiment], filter_string="tags.`ray.trial_id` = 't1'")
    assert failures and len(runs) == 1
    assert runs[0].data.params["sparsity.method"] == "dense"
    client.download_artifacts(runs[0].info.run_id, "trial.json", str(tmp_path))


def test_worker_node_lost_mid_trial(tmp_path: Path) -> None:
    """A node dies mid-trial; the trial goes on from its checkpoint on another node."""
    space = write_space(tmp_path / "space.yaml", trials=1)
    workdir = tmp_path / "w"
    # A head without CPUs: trials run on the worker nodes only.
    with ray_cluster(workers=0, root=tmp_path / "ray", cpus=0) as cluster:
        cluster.cpus = 1
        # Trials inherit their node's environment: the failpoint goes to the nodes too.
        cluster.env.update(failpoint("stall@2", tmp_path / "f"))
        env = cluster.env
        cluster.add_worker()
        driver = start_driver(
            "run",
            "--space",
            space,
            "--workdir",
            workdir,
            "--name",
            "n",
            "--address",
            cluster.address,
            "--results",  # shared by every node: they are all on this machine
            tmp_path / "results",
            env=env,
            log=tmp_path / "d.log",
        )
        try:
            wait_until(lambda: (tmp_path / "f" / "paused").exists(), 240, "a trial mid-way")
            cluster.add_worker()
            cluster.kill_worker(0)  # the only node the stalled trial can be on
            driver.wait(300)
        finally:
            stop_group(driver)
    assert driver.returncode == 0, (tmp_path / "d.log").read_text()[-3000:]
    report = audit(workdir, "n", {}, expected=2)
    assert report == {
        **report,
        "status": "finished",
        "finished_runs": 2,
        "duplicate_runs": 0,
        "stale_optuna": 0,
    }
    trials = _ray_trials(workdir, "n")
    lost = [t for t in trials.values() if t.run_metadata.num_failures == 1]
    assert len(lost) == 1
    # From its epoch-1 checkpoint (see the SIGKILL test for the numbering).
    assert _last_checkpoint(workdir, "n", lost[0].trial_id) == f"checkpoint_{EPOCHS - 1:06d}"
    client = MlflowClient(json.loads((workdir / "n" / "sweep.json").read_text())["tracking_uri"])
    for run in child_runs(workdir, "n"):
        assert _steps(client, run.info.run_id) == list(range(1, EPOCHS + 1))


def test_ui_commands_bind_to_localhost() -> None:
    # Every UI command the project prints or documents names the loopback address.
    root = Path(__file__).resolve().parent.parent
    command = re.compile(r"(mlflow ui|mlflow server|optuna-dashboard) +(--|sqlite|postgres|http)")
    found = []
    for path in [root / "README.md", *sorted((root / "sweep").glob("*.py"))]:
        found += [(path.name, ln) for ln in path.read_text().splitlines() if command.search(ln)]
    assert len(found) >= 3
    assert [f for f in found if "--host 127.0.0.1" not in f[1]] == []


def test_sweep_json_is_private(tmp_path: Path) -> None:
    # It holds the store URLs (with any password) for `resume`: readable by its owner only.
    from engine.checkpoint import save_json

    save_json(tmp_path / "sweep.json", {"storage_url": "postgresql://u:pw@h/db"})
    assert os.stat(tmp_path / "sweep.json").st_mode & 0o077 == 0


def test_a_trial_that_ended_after_rays_last_save_is_kept_on_resume(tmp_path: Path) -> None:
    """A trial can start and end between two of Ray's saves of its experiment state: the
    stores hear of its end at once, Ray's saved state never held it. Killed right then, the
    driver left a finished MLflow run (and a told Optuna trial) that resume deleted as an
    orphan, training its arm again under a new id (the flaky shipped-space audit, `lost`)."""
    space = tmp_path / "space.yaml"
    # One checkpoint per trial (its final one) forces no save; the period is long, so after
    # the first save (the baseline, pending) the next trials are in no saved state.
    space.write_text(SPACE.replace("TRIALS", "3").replace("report_every: 1", "report_every: 4"))
    workdir = tmp_path / "w"
    _run_until_the_failpoint_kills_it(space, workdir, "o", "orphan@1", tmp_path)
    recorded = set(_ray_trials(workdir, "o"))
    before = finished_trials(workdir, "o")
    orphans = set(before) - recorded
    assert len(orphans) == 1, (before, recorded)  # the searched trial that ended unrecorded
    [orphan] = orphans
    number = {
        r.data.tags["ray.trial_id"]: r.data.tags["optuna.trial_number"]
        for r in child_runs(workdir, "o")
    }[orphan]
    told = {t.number: t.state for t in optuna_trials(workdir, "o")}
    assert told[int(number)] == optuna.trial.TrialState.COMPLETE  # told before the kill

    resumed = run_cli("resume", "o", "--workdir", workdir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    report = audit(workdir, "o", before, expected=4)
    assert_clean(report, runs=4)  # kept (not lost), not trained again, no second run
    assert f"trial {orphan} ended after Ray's last save of the experiment" in resumed.stderr
    # The live line counts it with Ray's trials: 4 of 4 ended, not 3.
    assert re.findall(r"\[moonsweep\] (\d+)/4 trials", resumed.stderr)[-1] == "4"
    # The searcher counted it against the budget: 3 searched trials in Optuna, not 4.
    trials = optuna_trials(workdir, "o")
    assert len(trials) == 3 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    after = _ray_trials(workdir, "o")
    assert orphan not in after and len(after) == 3  # adopted beside Ray's, not re-run by it
    state = json.loads((workdir / "o" / "sweep.json").read_text())
    assert state["status"] == "finished"


def test_a_trial_whose_end_the_killed_driver_never_handled_is_recorded_from_storage(
    tmp_path: Path,
) -> None:
    """A trial's worker wrote its final checkpoint, and the driver died before it handled
    that end: MLflow's run is RUNNING, Optuna's trial too, Ray's saved state lacks the
    trial. Resume used to delete the run and train the arm again under a new id (the
    flaky shipped-space audit, `lost: 1`); it records the end from the checkpoint now."""
    space = tmp_path / "space.yaml"
    space.write_text(SPACE.replace("TRIALS", "3").replace("report_every: 1", "report_every: 4"))
    workdir = tmp_path / "w"
    _run_until_the_failpoint_kills_it(space, workdir, "u", "unhandled@1", tmp_path)
    recorded = set(_ray_trials(workdir, "u"))
    before = finished_trials(workdir, "u")
    unhandled = set(before) - recorded
    assert len(unhandled) == 1, (before, recorded)
    [trial_id] = unhandled
    runs = {r.data.tags["ray.trial_id"]: r for r in child_runs(workdir, "u")}
    assert runs[trial_id].info.status == "RUNNING"  # the stores had not heard of its end
    run_id = runs[trial_id].info.run_id
    number = int(runs[trial_id].data.tags["optuna.trial_number"])
    told = {t.number: t.state for t in optuna_trials(workdir, "u")}
    assert told[number] == optuna.trial.TrialState.RUNNING
    final_dir = trial_checkpoints(workdir, "u")[trial_id][-1] / "final"
    written = json.loads((final_dir / "metrics.json").read_text())

    resumed = run_cli("resume", "u", "--workdir", workdir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_clean(audit(workdir, "u", before, expected=4), runs=4)  # not lost, not retrained
    assert f"trial {trial_id} had finished when the driver died" in resumed.stderr
    assert re.findall(r"\[moonsweep\] (\d+)/4 trials", resumed.stderr)[-1] == "4"
    client = MlflowClient(json.loads((workdir / "u" / "sweep.json").read_text())["tracking_uri"])
    run = client.get_run(run_id)  # the same run, ended as the trial did
    assert run.info.status == "FINISHED"
    assert _steps(client, run_id) == list(range(1, EPOCHS + 1))  # every epoch, once
    first = load_space(space).objectives[0].metric
    assert run.data.metrics[mlflow_metric(first)] == pytest.approx(written[first])
    files = {Path(a.path).name for a in client.list_artifacts(run_id, "final")}
    assert {"metrics.json", "metrics-seed0.json", "model-seed0.pt"} <= files
    trials = {t.number: t for t in optuna_trials(workdir, "u")}
    assert len(trials) == 3
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials.values())
    assert trials[number].values[0] == pytest.approx(written[first])  # told to Optuna
    assert trial_id not in _ray_trials(workdir, "u")
