"""Reading a trial's final results back from storage (sweep.trial), as a resume does for a
trial whose end a killed driver never handled (sweep.adoption)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from engine.checkpoint import save_checkpoint, save_json
from sweep.naming import FINAL_DIR
from sweep.trial import final_checkpoint, final_results


def _final(checkpoint: Path, seeds: list[int], test_time: bool = False) -> dict:
    """A final folder laid out as `run_trial` writes it."""
    folder = checkpoint / FINAL_DIR
    metrics = {"val/accuracy": 0.5, "seed_values": json.dumps({s: {} for s in seeds})}
    if test_time:
        metrics["test_time_pick"] = "mode=weights"
        save_json(folder / "variants.json", [])
        for seed in seeds:
            save_json(folder / f"variants-seed{seed}.json", {"weights/msp": {"accuracy": 0.5}})
    save_json(folder / "metrics.json", metrics)
    for seed in seeds:
        save_json(folder / f"metrics-seed{seed}.json", {"val/accuracy": 0.5})
        save_checkpoint(folder / f"model-seed{seed}.pt", {"w": torch.ones(3)})
    return metrics


def test_final_results_need_every_file_whole(tmp_path: Path) -> None:
    written = _final(tmp_path, [0, 1], test_time=True)
    assert final_results(tmp_path) == written
    model = tmp_path / FINAL_DIR / "model-seed1.pt"
    data = model.read_bytes()
    model.write_bytes(data[: len(data) // 2])  # a copy cut short
    assert final_results(tmp_path) is None
    model.write_bytes(data)
    seed_variants = tmp_path / FINAL_DIR / "variants-seed1.json"
    seed_variants.write_text('{"weights/msp": ')  # cut short
    assert final_results(tmp_path) is None
    seed_variants.write_text("{}")
    assert final_results(tmp_path) == written
    (tmp_path / FINAL_DIR / "variants.json").unlink()
    assert final_results(tmp_path) is None
    (tmp_path / FINAL_DIR / "metrics.json").write_text('{"val/acc')
    assert final_results(tmp_path) is None


def test_final_checkpoint_is_the_newest_and_only_if_final(tmp_path: Path) -> None:
    trial = tmp_path / "search-abc123"
    assert final_checkpoint(str(tmp_path), "search", "abc123") is None  # no folder at all
    (trial / "checkpoint_000000").mkdir(parents=True)
    assert final_checkpoint(str(tmp_path), "search", "abc123") is None  # an epoch's state
    _final(trial / "checkpoint_000001", [0])
    found = final_checkpoint(str(tmp_path), "search", "abc123")
    assert found is not None and Path(found.path).name == "checkpoint_000001"
    assert final_checkpoint(str(tmp_path), "dense", "abc123") is None  # another arm's folder
    (trial / "checkpoint_000002").mkdir()  # trained again after: its newest is not final
    assert final_checkpoint(str(tmp_path), "search", "abc123") is None
