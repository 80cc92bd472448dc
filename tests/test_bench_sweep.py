"""bench/sweep.py's `--old-code`: the commit it checks out is the one asked for, and the
temporary worktree is gone afterwards (a sweep on it is the benchmark itself, minutes)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bench import sweep as bench_sweep

ROOT = Path(__file__).resolve().parent.parent


def _git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(
        ["git", "-C", str(cwd), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def test_old_code_is_a_worktree_at_that_commit_removed_after() -> None:
    commit = _git("rev-parse", "HEAD")
    with bench_sweep.worktree(commit[:10]) as folder:
        assert _git("rev-parse", "HEAD", cwd=folder) == commit
        assert (folder / "sweep" / "orchestrator.py").is_file()
        assert str(folder) in _git("worktree", "list")
    assert not folder.exists()
    assert str(folder) not in _git("worktree", "list")


def test_old_code_needs_two_different_spaces(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        bench_sweep.main(["--compare", "default", "default", "--old-code", "HEAD"])
    assert exit_info.value.code == 2
    assert "--old-code needs --compare OLD NEW with two different spaces" in capsys.readouterr().err
