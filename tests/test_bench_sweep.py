"""bench/sweep.py: `--old-code` checks out the commit asked for, and the temporary
worktree is gone afterwards (a sweep on it is the benchmark itself, minutes); `phases`
splits a sweep's wall where its trials start and end."""

from __future__ import annotations

import subprocess
from pathlib import Path
from types import SimpleNamespace

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


def test_phases_split_the_wall_at_the_first_start_and_the_last_result() -> None:
    # Ray's record of two trials (clock times), the sweep started at 100 s and took 20 s.
    trial = lambda start, end: SimpleNamespace(  # noqa: E731
        run_metadata=SimpleNamespace(start_time=start, last_result_time=end)
    )
    got = bench_sweep.phases([trial(106.0, 118.5), trial(105.0, 110.0)], 100.0, 20.0)
    assert got == {"to_first_trial_s": 5.0, "in_flight_s": 13.5, "after_last_s": 1.5}
    unknown = bench_sweep.phases([trial(None, None)], 100.0, 20.0)
    assert all(v != v for v in unknown.values())  # NaN: nothing recorded
