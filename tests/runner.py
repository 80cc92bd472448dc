"""Running `moonsweep` as a user would, for the tests: a subprocess with a clean environment.

    proc = moonsweep("run", "--space", str(space), "--workdir", str(workdir), "--name", "t")
    assert proc.returncode == 0, proc.stderr

`SMALL_SET` is the head of a search space whose trials take seconds (the default preset cut to
6 epochs and a narrow MLP); a test appends its parameters, objectives and budget.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import IO

SMALL_SET = """
base: default
set:
  epochs: 6
  voting.epochs: 2
  moon.warmup_epochs: 2
  model.width: 64
  sparsity.update_interval: 5
"""

# Settings a developer's shell may hold that would send a test's sweep elsewhere.
_AMBIENT = (
    "MOONSWEEP_WORKDIR",
    "MOONSWEEP_RESULTS",
    "MOONSWEEP_STORAGE",
    "MLFLOW_TRACKING_URI",
    "RAY_ADDRESS",
)


def moonsweep(
    *args: str,
    timeout: int = 400,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    stdout: IO[bytes] | int = subprocess.PIPE,
) -> subprocess.CompletedProcess:
    """`python -m sweep.cli ARGS` with one thread per process; `env` adds variables;
    `stdout` is where its output goes (default: captured, as its stderr always is)."""
    full = {k: v for k, v in os.environ.items() if k not in _AMBIENT}
    full.update(OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "sweep.cli", *args],
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        timeout=timeout,
        env=full,
        cwd=cwd,
    )
