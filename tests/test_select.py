"""Choosing, registering and serving a model from one small real sweep (real Ray, MLflow,
Optuna and training): Pareto front against brute force, constraints, paired confirmation
seeds, the MLflow Model Registry (alias champion) and predictions with OOD flags."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from runner import SMALL_SET, moonsweep
from typer.testing import CliRunner

from engine.config import ConfigError, validate_config
from engine.predict import Predictor, load_inputs, tpr_threshold
from engine.train import train
from sweep.champion import CHAMPION, load_predictor, model_uri, register
from sweep.cli import app
from sweep.constraints import Constraint
from sweep.selection import (
    direction_of,
    pareto_front,
    parse_constraint,
    select,
    selectable_metrics,
)
from sweep.state import load_state, trial_rows

pytestmark = pytest.mark.slow

SPACE = SMALL_SET + """parameters:
  sparsity.density: {distribution: log_uniform, low: 0.05, high: 0.5}
  moon.alpha_final: {distribution: log_uniform, low: 0.1, high: 10}
objectives:
  - {metric: val/auroc_near, direction: maximize}
  - {metric: val/accuracy, direction: maximize}
  - {metric: val/ece, direction: minimize}
sampler: {name: random, seed: 3}
seeds: [0, 1]
budget: {trials: 5, max_concurrent: 2}
early_stopping: null
report_every: 3
"""
OBJECTIVES = [("val/auroc_near", "maximize"), ("val/accuracy", "maximize"), ("val/ece", "minimize")]


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("select")
    (root / "space.yaml").write_text(SPACE)
    workdir = root / "w"
    proc = moonsweep(
        "run", "--space", str(root / "space.yaml"), "--workdir", str(workdir), "--name", "s"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    state, _ = load_state("s", workdir)
    rows = [r for r in trial_rows(state, all_metrics=True) if r["state"] == "done"]
    return workdir, state, rows


def dominates(a: dict, b: dict) -> bool:
    signs = [1 if d == "maximize" else -1 for _, d in OBJECTIVES]
    pa = [s * a[m] for (m, _), s in zip(OBJECTIVES, signs, strict=True)]
    pb = [s * b[m] for (m, _), s in zip(OBJECTIVES, signs, strict=True)]
    return all(x >= y for x, y in zip(pa, pb, strict=True)) and pa != pb


def brute_pareto(rows: list[dict]) -> set[str]:
    return {r["mlflow_run_id"] for r in rows if not any(dominates(o, r) for o in rows)}


# ------------------------------------------------------------------ without a sweep


def test_pareto_front_hand_cases() -> None:
    rows = [
        {"id": "a", "x": 1.0, "y": 5.0},
        {"id": "b", "x": 2.0, "y": 4.0},
        {"id": "c", "x": 2.0, "y": 4.0},  # equal to b: neither dominates the other
        {"id": "d", "x": 1.5, "y": 3.0},  # dominated by b
        {"id": "e", "x": 9.0, "y": float("nan")},  # NaN objective: left out
        {"id": "f", "x": 9.0},  # missing objective: left out
        {"id": "g", "x": 3.0, "y": 1.0},
    ]
    front = pareto_front(rows, [("x", "maximize"), ("y", "maximize")])
    assert [r["id"] for r in front] == ["a", "b", "c", "g"]
    # Maximising x and minimising y: g (largest x, smallest y) dominates every other row.
    front = pareto_front(rows, [("x", "maximize"), ("y", "minimize")])
    assert [r["id"] for r in front] == ["g"]
    assert pareto_front([], [("x", "maximize")]) == []


def test_pareto_front_random_against_brute_force() -> None:
    rng = np.random.default_rng(0)
    for trial in range(30):
        # Few distinct values, so ties and duplicates are common.
        values = rng.integers(0, 4, size=(12, 3)).astype(float)
        rows = [
            {"mlflow_run_id": str(i), **dict(zip([m for m, _ in OBJECTIVES], v, strict=True))}
            for i, v in enumerate(values)
        ]
        got = {r["mlflow_run_id"] for r in pareto_front(rows, OBJECTIVES)}
        assert got == brute_pareto(rows), trial


def test_parse_constraint_accepts_and_rejects() -> None:
    metrics = ["val/accuracy", "val/ece", "density", "val/auroc_near"]
    assert parse_constraint("accuracy>=0.95", metrics) == Constraint("val/accuracy", ">=", 0.95)
    assert parse_constraint(" density <= 1e-1 ", metrics) == Constraint("density", "<=", 0.1)
    assert parse_constraint("val/ece<0.05", metrics).holds({"val/ece": 0.04})
    assert not parse_constraint("val/ece<0.05", metrics).holds({"val/ece": 0.05})
    assert parse_constraint("val/ece==0.05", metrics).holds({"val/ece": 0.05})
    assert not parse_constraint("accuracy>0.5", metrics).holds({"val/accuracy": None})
    bad = {
        "accuracy>>0.9": "not METRIC OP VALUE",
        "accuracy 0.9": "not METRIC OP VALUE",
        "accuracy>=high": "not a finite number",
        "accuracy>=nan": "not a finite number",
        "accuracy>=inf": "not a finite number",
        "auroc>=0.9": "unknown metric 'auroc'",
        "": "not METRIC OP VALUE",
    }
    for expr, message in bad.items():
        with pytest.raises(ConfigError, match=message) as info:
            parse_constraint(expr, metrics)
        if "unknown metric" in message:
            assert "allowed: density, val/accuracy" in str(info.value)


def test_direction_of() -> None:
    assert direction_of("val/accuracy") == "maximize"
    assert direction_of("val/energy/fpr95_near") == "minimize"
    assert direction_of("val/ece") == "minimize"
    assert direction_of("density") == "minimize"
    assert direction_of("std/val/accuracy") == "minimize"
    assert direction_of("val/accuracy", [("val/accuracy", "minimize")]) == "minimize"


def test_tpr_threshold_is_the_largest_keeping_95_percent() -> None:
    rng = np.random.default_rng(1)
    for n in (1, 7, 20, 101, 1000):
        scores = rng.normal(size=n).round(1)  # ties
        t = tpr_threshold(scores)
        assert np.mean(scores >= t) >= 0.95
        higher = scores[scores > t]
        if higher.size:
            assert np.mean(scores >= higher.min()) < 0.95


# ------------------------------------------------------------------ on the real sweep


def test_selectable_metrics_are_validation_only(swept) -> None:
    _, _, rows = swept
    metrics = selectable_metrics(rows)
    assert "val/accuracy" in metrics and "density" in metrics
    assert "accuracy" not in metrics and "auroc_near" not in metrics  # test figures
    assert all(m.startswith(("val/", "std/val/", "density")) for m in metrics)


def test_pareto_set_equals_brute_force(swept) -> None:
    _, state, rows = swept
    searched = [r for r in rows if r["arm"] == "search"]
    assert len(searched) == 5 and len(rows) == 9  # and the four default arms
    selection = select(state, sweep_constraints_too=False)
    assert {r["mlflow_run_id"] for r in selection.pareto} == brute_pareto(searched)
    assert selection.objectives == OBJECTIVES
    assert selection.prefer == "val/auroc_near"  # the first objective by default
    best = max(r["val/auroc_near"] for r in selection.pareto)
    assert selection.chosen["val/auroc_near"] == best
    arms = {r["arm"] for r in selection.baselines}
    assert arms == {"dense", "moon_auto", "sparse", "sparse+voting"}
    assert any("against baseline dense" in line for line in selection.reasons)


def test_constraints_filter_as_stated(swept) -> None:
    _, state, rows = swept
    searched = [r for r in rows if r["arm"] == "search"]
    # Thresholds between recorded values, so each constraint keeps some and drops some.
    accuracies = sorted(r["val/accuracy"] for r in searched)
    acc = (accuracies[0] + accuracies[1]) / 2
    densities = sorted(r["density"] for r in searched)
    dens = (densities[-1] + densities[-2]) / 2
    cons = [f"accuracy>={acc}", f"density<={dens}"]
    selection = select(state, cons, prefer="ece", sweep_constraints_too=False)
    expected = {
        r["mlflow_run_id"] for r in searched if r["val/accuracy"] >= acc and r["density"] <= dens
    }
    assert 0 < len(expected) < len(searched)
    assert {r["mlflow_run_id"] for r in selection.feasible} == expected
    feasible = [r for r in searched if r["mlflow_run_id"] in expected]
    assert {r["mlflow_run_id"] for r in selection.candidates} == brute_pareto(feasible)
    # prefer ece: lowest validation ECE among the candidates.
    assert selection.direction == "minimize"
    assert selection.chosen["val/ece"] == min(r["val/ece"] for r in selection.candidates)
    assert [str(c) for c in selection.constraints] == [
        str(Constraint("val/accuracy", ">=", acc)),
        str(Constraint("density", "<=", dens)),
    ]
    with pytest.raises(ConfigError, match="no finished searched trial"):
        select(state, ["accuracy>=1.01"], sweep_constraints_too=False)


def test_cli_select_bad_input_exits_2(swept) -> None:
    workdir, _, _ = swept
    for constraint, message in (
        ("accuracy=>0.9", "error: constraint 'accuracy=>0.9' is not METRIC OP VALUE"),
        ("auroc>=0.9", "error: unknown metric 'auroc'"),
    ):
        result = CliRunner().invoke(
            app, ["select", "s", "--workdir", str(workdir), "-c", constraint]
        )
        assert result.exit_code == 2, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(message), result.stderr
    result = CliRunner().invoke(app, ["select", "s", "--workdir", str(workdir), "--prefer", "x"])
    assert result.exit_code == 2 and "error: unknown metric 'x'" in result.stderr


def test_cli_select_prints_the_choice_and_why(swept) -> None:
    workdir, state, _ = swept
    result = CliRunner().invoke(
        app, ["select", "s", "--workdir", str(workdir), "-c", "density<=1", "--prefer", "accuracy"]
    )
    assert result.exit_code == 0, result.output
    expected = select(state, ["density<=1"], prefer="accuracy")
    assert f"chosen: {expected.chosen['trial']}" in result.stdout
    for line in expected.reasons:
        assert line in result.stdout
    assert "against baseline dense" in result.stdout


def test_confirmation_uses_the_same_new_seeds_for_all(swept) -> None:
    _, state, _ = swept
    progress: list[str] = []
    selection = select(
        state,
        prefer="auroc_near",
        confirm_seeds=1,
        confirm_top=2,
        sweep_constraints_too=False,
        on_progress=progress.append,
    )
    assert selection.confirm_seeds == [2]  # the space's seeds are 0 and 1
    confirmed_ids = set(selection.confirmed)
    top2 = {r["mlflow_run_id"] for r in selection.candidates[:2]}
    base_ids = {r["mlflow_run_id"] for r in selection.baselines}
    assert confirmed_ids == top2 | base_ids
    assert all(len(v) == 1 for v in selection.confirmed.values())
    assert len(progress) == len(confirmed_ids)
    # Paired: a baseline's confirmation metrics are exactly its config trained on seed 2.
    client = MlflowClient(state.tracking_uri)
    dense = next(r for r in selection.baselines if r["arm"] == "dense")
    with_seed = _trial_config(client, dense["mlflow_run_id"]).model_copy(update={"seed": 2})
    direct = train(with_seed).metrics
    again = selection.confirmed[dense["mlflow_run_id"]][0]
    assert again["val/auroc_near"] == pytest.approx(direct["val/auroc_near"], abs=1e-9)
    assert again["val/accuracy"] == pytest.approx(direct["val/accuracy"], abs=1e-9)
    # The chosen trial has the best mean over the recorded (2) and new (1) seeds.
    means = {
        i: (r["val/auroc_near"] * 2 + selection.confirmed[i][0]["val/auroc_near"]) / 3
        for r in selection.candidates[:2]
        for i in [r["mlflow_run_id"]]
    }
    assert means[selection.chosen["mlflow_run_id"]] == pytest.approx(max(means.values()))
    # Paired differences over the recorded seeds and the new one, by hand for dense.
    chosen_id = selection.chosen["mlflow_run_id"]
    deltas = [
        _seed_file(client, chosen_id, s)["val/auroc_near"]
        - _seed_file(client, dense["mlflow_run_id"], s)["val/auroc_near"]
        for s in (0, 1)
    ]
    deltas.append(selection.confirmed[chosen_id][0]["val/auroc_near"] - again["val/auroc_near"])
    paired = selection.paired["dense"]
    assert paired["seeds"] == [0, 1, 2] and paired["n"] == 3
    assert paired["mean"] == pytest.approx(np.mean(deltas), abs=1e-12)
    assert paired["wins"] == sum(d > 0 for d in deltas)
    assert paired["low"] <= paired["mean"] <= paired["high"]
    assert any("paired over seeds 0, 1, 2" in line for line in selection.reasons)


def _seed_file(client: MlflowClient, run_id: str, seed: int) -> dict:
    path = client.download_artifacts(run_id, f"final/metrics-seed{seed}.json")
    return json.loads(Path(path).read_text())


def _trial_config(client: MlflowClient, run_id: str):
    record = json.loads(Path(client.download_artifacts(run_id, "trial.json")).read_text())
    return validate_config(record["configs"][0])


@pytest.fixture(scope="module")
def champion(swept):
    workdir, state, _ = swept
    selection = select(state, ["accuracy>=0.5"], prefer="auroc_near", sweep_constraints_too=False)
    version = register(state, selection, "digits-test")
    return workdir, state, selection, version


def test_registry_holds_the_champion(champion) -> None:
    _, state, selection, version = champion
    client = MlflowClient(state.tracking_uri)
    by_alias = client.get_model_version_by_alias("digits-test", CHAMPION)
    assert by_alias.version == version.version
    assert by_alias.run_id == selection.chosen["mlflow_run_id"]
    tags = by_alias.tags
    assert tags["moonsweep.sweep"] == "s"
    assert float(tags["mean/density"]) == pytest.approx(selection.chosen["density"], rel=1e-5)
    assert float(tags["mean/val/auroc_near"]) == pytest.approx(
        selection.chosen["val/auroc_near"], rel=1e-5
    )
    assert tags["moonsweep.seed"] in ("0", "1")
    assert model_uri("digits-test") == "models:/digits-test@champion"


def test_predictor_reproduces_the_recorded_test_accuracy(champion) -> None:
    _, state, _, version = champion
    predictor = load_predictor(f"digits-test/{version.version}", state.tracking_uri)
    bundled = predictor.bundled_inputs()
    suite_labels = _labels(predictor)
    predictions = predictor.predict(bundled["id"])
    accuracy = np.mean([p.class_index == y for p, y in zip(predictions, suite_labels, strict=True)])
    # The registered seed's test accuracy, recorded by the sweep (tag, 6 significant digits).
    assert accuracy == pytest.approx(float(version.tags["accuracy"]), abs=1e-5)
    # The threshold keeps at least 95% of the validation ID data in.
    assert float(version.tags["moonsweep.ood_threshold"]) == pytest.approx(
        predictor.threshold, rel=1e-5
    )


def _labels(predictor: Predictor) -> list[int]:
    from engine.data import load_suite

    return load_suite(predictor.config.data).test.y.tolist()


def test_predict_flags_ood_more_often_than_id(champion, tmp_path: Path) -> None:
    workdir, state, selection, _ = champion
    predictor = load_predictor("digits-test@champion", state.tracking_uri)
    bundled = predictor.bundled_inputs()
    np.save(tmp_path / "id.npy", bundled["id"].numpy())
    np.save(tmp_path / "near.npy", bundled["digits_6-9"].numpy())
    torch.save(torch.cat([bundled["photos"], bundled["noise"]]), tmp_path / "far.pt")
    result = CliRunner().invoke(
        app,
        [
            "predict",
            "digits-test@champion",
            str(tmp_path / "id.npy"),
            str(tmp_path / "near.npy"),
            str(tmp_path / "far.pt"),
            "--workdir",
            str(workdir),
        ],
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == sum(len(v) for v in bundled.values())
    assert set(rows[0]) == {
        "input",
        "label",
        "class_index",
        "confidence",
        "ood_score",
        "in_distribution",
    }
    flagged = {}
    for part in ("id", "near", "far"):
        mine = [r for r in rows if Path(r["input"].split("[")[0]).stem == part]
        flagged[part] = np.mean([not r["in_distribution"] for r in mine])
    assert flagged["id"] < 0.2
    assert flagged["near"] > flagged["id"] and flagged["far"] > flagged["id"]
    # The same flags through the pyfunc model and through a run URI.
    import mlflow.pyfunc

    mlflow.set_tracking_uri(state.tracking_uri)
    frame = mlflow.pyfunc.load_model(model_uri("digits-test@champion")).predict(
        bundled["id"].numpy()
    )
    id_rows = [r for r in rows if r["input"].startswith(str(tmp_path / "id.npy"))]
    assert frame["in_distribution"].tolist() == [r["in_distribution"] for r in id_rows]
    by_run = load_predictor(f"runs:/{selection.chosen['mlflow_run_id']}/model", state.tracking_uri)
    assert by_run.threshold == predictor.threshold


def test_predict_bad_input_is_a_config_error(champion, tmp_path: Path) -> None:
    _, state, _, _ = champion
    with pytest.raises(ConfigError, match="cannot load model"):
        load_predictor("no-such-model@champion", state.tracking_uri)
    with pytest.raises(ConfigError, match="does not exist"):
        load_inputs([tmp_path / "missing.npy"], (1, 8, 8))
    np.save(tmp_path / "wrong.npy", np.zeros((2, 1, 4, 4), np.float32))
    with pytest.raises(ConfigError, match="expected"):
        load_inputs([tmp_path / "wrong.npy"], (1, 8, 8))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ConfigError, match="unknown kind"):
        load_inputs([tmp_path / "notes.txt"], (1, 8, 8))


def test_predictor_round_trip_and_image_files(champion, tmp_path: Path) -> None:
    from PIL import Image

    _, state, _, _ = champion
    predictor = load_predictor("digits-test@champion", state.tracking_uri)
    predictor.save(tmp_path / "p.pt")
    again = Predictor.load(tmp_path / "p.pt")
    images = predictor.bundled_inputs()["id"][:20]
    assert [p.as_dict() for p in again.predict(images)] == [
        p.as_dict() for p in predictor.predict(images)
    ]
    # Image files: 8-bit PNGs of the same images, read back to within quantisation.
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i, image in enumerate(images[:5]):
        pixels = (image[0].clamp(0, 1).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.png")
    names, loaded = load_inputs([folder], predictor.input_shape)
    assert len(names) == 5
    assert torch.allclose(loaded, images[:5].clamp(0, 1), atol=1 / 255)
    assert math.isfinite(predictor.predict(loaded)[0].ood_score)
