"""The command line's two ways of failing, as a user meets them (subprocesses, no sweep runs):
a user mistake is one `error:` line, exit 2, nothing written; an internal error is one line
naming a crash report that holds the traceback, exit 1."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from runner import moonsweep


def _written(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--epochs", "1"], "the smallest it allows is --epochs 2"),
        (["--set", "model.widht=64"], "--set model.widht: unknown setting; allowed: "),
        (["--set", "model.width=wide"], "--set model.width=wide: invalid config: model.width"),
        (["--set", "sparsity.density=0.1"], "the space searches this setting"),
    ],
)
def test_run_mistakes_exit_2_and_write_nothing(tmp_path: Path, args: list[str], needle: str):
    proc = moonsweep("run", "--workdir", str(tmp_path / "w"), "--name", "e", *args)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1
    assert needle in proc.stderr
    assert _written(tmp_path / "w") == []


# A space that runs, but for the entry a test changes (searched trials' objectives, ...).
SPACE = """
parameters:
  sparsity.density: {distribution: log_uniform, low: 0.05, high: 0.5}
objectives:
  - {metric: val/auroc_near, direction: maximize}
"""


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (("val/auroc_near", "auroc_near"), "objectives.0.metric: 'auroc_near' is not allowed: "),
        ("constraints: [{metric: accuracy, op: '>=', value: 0.5}]", "constraints.0.metric: "),
        ("early_stopping: {metric: accuracy, mode: max}", "early_stopping.metric: 'accuracy'"),
        ("test_time: {pick: {metric: auroc_near}}", "test_time.pick.metric: 'auroc_near'"),
    ],
    ids=["objective", "constraint", "early-stopping", "pick"],
)
def test_test_split_choices_exit_2_and_write_nothing(
    tmp_path: Path, change: str | tuple[str, str], needle: str
) -> None:
    """The test split never steers a sweep: a space deciding on a test figure is refused
    before anything starts, naming the entry, the validation figure to use and what is
    allowed."""
    text = SPACE.replace(*change) if isinstance(change, tuple) else SPACE + change + "\n"
    space = tmp_path / "space.yaml"
    space.write_text(text)
    workdir = tmp_path / "w"
    proc = moonsweep("run", "--space", str(space), "--workdir", str(workdir), "--name", "e")
    assert proc.returncode == 2, proc.stderr[-2000:]
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("error: search space space.yaml: ") and needle in line
    assert "a test-split figure" in line and "Traceback" not in proc.stderr + proc.stdout
    assert ("val_accuracy" if "early" in needle else "use val/") in line
    assert _written(workdir) == [] and not (workdir / "e").exists()


def test_internal_error_without_a_sweep_folder_goes_to_the_workdir(tmp_path: Path) -> None:
    workdir = tmp_path / "w"
    env = {"MOONSWEEP_FAILPOINT": "crash@0"}
    proc = moonsweep("resume", "nope", "--workdir", str(workdir), env=env)
    assert proc.returncode == 1
    [line] = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr + proc.stdout
    found = re.search(r"the full traceback is in (\S+)$", line)
    assert found and line.startswith("error: internal error (RuntimeError: simulated")
    report = Path(found[1])
    assert report.parent == workdir.resolve() and report.name.startswith("crash-")
    text = report.read_text()
    assert "command: moonsweep resume nope --workdir" in text
    assert "Traceback (most recent call last)" in text and "RuntimeError: simulated" in text
