"""Helpers shared by the bench scripts: where they ran, arm order, ratio summaries, JSON.

Example:
    >>> from bench._common import rotated, ratio_summary
    >>> rotated(["a", "b", "c"], 1)
    ['b', 'c', 'a']
    >>> ratio_summary({"dense": [2.0, 4.0], "x": [3.0, 4.0]}, "dense")["x"]["ratio_median"]
    1.25
"""

from __future__ import annotations

import json
import platform
import statistics
from pathlib import Path
from typing import Any

import torch


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (Linux), else whatever platform reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    """The GPU's name for a CUDA device, else the CPU model and thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()} ({torch.get_num_threads()} thread(s))"


def rotated(arms: list[str], rep: int) -> list[str]:
    """The arms in the order of repetition `rep`: rotated, so noise falls on all alike."""
    k = rep % len(arms)
    return arms[k:] + arms[:k]


def ratio_summary(seconds: dict[str, list[float]], base: str) -> dict[str, dict[str, float]]:
    """Per arm: median seconds and the median (min, max) of time / base time per repetition."""
    out = {}
    for arm, secs in seconds.items():
        ratios = [a / b for a, b in zip(secs, seconds[base], strict=True)]
        out[arm] = {
            "seconds_median": statistics.median(secs),
            "ratio_median": statistics.median(ratios),
            "ratio_min": min(ratios),
            "ratio_max": max(ratios),
        }
    return out


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
