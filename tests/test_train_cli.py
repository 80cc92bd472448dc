"""End to end: `moonsweep train` writes a loadable checkpoint, same seed = same metrics,
bad input exits 2 naming the field with nothing written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from engine.checkpoint import load_checkpoint
from engine.train import train
from sweep.cli import app

SMALL = ["epochs=10", "voting.epochs=2", "moon.warmup_epochs=2"]


def _set(items: list[str]) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def test_train_command_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "sweep.cli", "train", "--out", str(out), *_set(SMALL)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    stdout_metrics = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "epoch  10/10" in proc.stderr  # progress per epoch on stderr
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == stdout_metrics
    for name in ("accuracy", "known_accuracy", "ece", "nll", "brier", "density"):
        assert name in saved
    for group in ("near", "far"):
        for metric in ("auroc", "fpr95", "aupr_in", "aupr_out"):
            assert 0.0 <= saved[f"{metric}_{group}"] <= 1.0
    assert saved["accuracy"] > 0.85  # digits 0-5 are easy: a broken loop would not get here
    ckpt = load_checkpoint(out / "checkpoint.pt")  # weights_only=True inside
    assert ckpt["config"]["epochs"] == 10
    assert ckpt["metrics"] == pytest.approx(saved)
    assert set(ckpt["masks"]) == {"features.1.weight", "features.3.weight", "head.weight"}
    assert ckpt["models"][0]["head.weight"].shape[0] == 7  # 6 known classes + unknown
    assert len(ckpt["history"]) == 10
    assert (out / "config.yaml").exists()


def test_same_seed_same_metrics_and_seed_matters(small) -> None:
    first = train(small("seed=3"))
    second = train(small("seed=3"))
    other = train(small("seed=4"))
    assert first.metrics == second.metrics
    assert first.metrics != other.metrics


def test_moon_off_has_k_outputs(small) -> None:
    result = train(small("moon.enabled=false", "voting.mode=off"))
    assert result.models[0].head.out_features == result.suite.num_classes
    assert result.metrics["accuracy"] == result.metrics["known_accuracy"]
    assert not any(k.startswith("unknown/") for k in result.metrics)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--set", "sparsity.density=1.5"], "sparsity.density: 1.5"),
        (["--set", "sparsity.method=prune"], "sparsity.method: 'prune'"),
        (["--set", "moon.warmup_epochs=500"], "moon.warmup_epochs"),
        (["--set", "nope=1"], "nope: unknown setting"),
        (["--config", "no-such-preset"], "no-such-preset"),
        (["--set", "data.suite=imagefolder"], "data.root"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(tmp_path: Path, args: list[str], needle: str) -> None:
    out = tmp_path / "never"
    result = CliRunner().invoke(app, ["train", "--out", str(out), *args])
    assert result.exit_code == 2, result.output
    assert needle in result.output
    assert "Traceback" not in result.output
    assert not out.exists()


def test_existing_run_is_not_overwritten(tmp_path: Path) -> None:
    (tmp_path / "checkpoint.pt").write_bytes(b"precious")
    result = CliRunner().invoke(app, ["train", "--out", str(tmp_path), "--set", "epochs=10"])
    assert result.exit_code == 2
    assert "already holds a run" in result.output
    assert (tmp_path / "checkpoint.pt").read_bytes() == b"precious"


@pytest.mark.parametrize("voting", ["weights", "predictions"])
def test_resumed_run_equals_uninterrupted(tmp_path: Path, small, voting: str) -> None:
    from engine.checkpoint import save_checkpoint
    from engine.train import Run

    cfg = small(f"voting.mode={voting}", "sparsity.method=set")
    whole = train(cfg)
    first = Run(cfg)
    for _ in range(cfg.epochs - 2):  # stop inside the averaging window
        first.train_epoch()
    save_checkpoint(tmp_path / "state.pt", first.state_dict())
    second = Run(cfg)
    second.load_state_dict(load_checkpoint(tmp_path / "state.pt"))
    while not second.done:
        second.train_epoch()
    resumed = second.finish()
    assert resumed.metrics == whole.metrics
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in whole.history]
