"""The device-resident input pipeline, its augmentation, and training under bf16 autocast."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, RandomSampler, SubsetRandomSampler, TensorDataset
from torchvision.transforms.v2 import functional as TF

from engine.config import ConfigError, load_config
from engine.moon import P_UNKNOWN_MAX, moon_loss
from engine.pipeline import DeviceLoader, crop_flip
from engine.sparsity import nonzero_within_mask
from engine.train import Run

ROOT = Path(__file__).resolve().parent.parent


def _data(n: int = 37, shape: tuple[int, ...] = (3, 6, 6)) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, *shape, generator=g), torch.arange(n)


def test_batches_equal_a_dataloader_over_the_same_generator() -> None:
    x, y = _data()
    ours = DeviceLoader(x, y, batch_size=8, generator=torch.Generator().manual_seed(5))
    # SubsetRandomSampler draws one randperm(n) per epoch, as the loader does.
    sampler = SubsetRandomSampler(range(len(y)), generator=torch.Generator().manual_seed(5))
    reference = DataLoader(TensorDataset(x, y), batch_size=8, sampler=sampler)
    for _ in range(3):
        got, want = list(ours.epoch()), list(reference)
        assert len(got) == len(want) == len(ours) == 5
        for (xb, yb), (xr, yr) in zip(got, want, strict=True):
            assert torch.equal(xb, xr) and torch.equal(yb, yr)
        # Every sample exactly once per epoch.
        assert sorted(torch.cat([yb for _, yb in got]).tolist()) == list(range(len(y)))

    # RandomSampler with the generator in the same state gives the same first epoch.
    g = torch.Generator().manual_seed(9)
    state = g.get_state()
    got = list(DeviceLoader(x, y, 8, g).epoch())
    want = list(DataLoader(TensorDataset(x, y), batch_size=8,
                           sampler=RandomSampler(x, generator=torch.Generator().set_state(state))))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(got, want, strict=True))


def test_crop_flip_by_hand() -> None:
    image = torch.tensor([[1.0, 2, 3], [4, 5, 6], [7, 8, 9]])[None, None]
    # Padded by 1, corner (row 0, column 2): rows -1..1 and columns 1..3 of the image.
    out = crop_flip(image, torch.tensor([[0, 2]]), torch.tensor([False]), pad=1)
    assert out[0, 0].tolist() == [[0, 0, 0], [2, 3, 0], [5, 6, 0]]
    out = crop_flip(image, torch.tensor([[0, 2]]), torch.tensor([True]), pad=1)
    assert out[0, 0].tolist() == [[0, 0, 0], [0, 3, 2], [0, 6, 5]]
    out = crop_flip(image, torch.tensor([[1, 1]]), torch.tensor([True]), pad=1)
    assert out[0, 0].tolist() == [[3, 2, 1], [6, 5, 4], [9, 8, 7]]


def test_crop_flip_equals_torchvision_on_every_offset() -> None:
    x, _ = _data(n=2 * 81, shape=(2, 5, 7))
    pad = 4
    corners = list(itertools.product(range(2 * pad + 1), repeat=2))
    offsets = torch.tensor(corners * 2)
    flips = torch.tensor([False] * 81 + [True] * 81)
    out = crop_flip(x, offsets, flips, pad)
    for i in range(len(x)):
        r, s = offsets[i].tolist()
        want = TF.crop(TF.pad(x[i], [pad]), r, s, 5, 7)
        if flips[i]:
            want = TF.horizontal_flip(want)
        assert torch.equal(out[i], want)


def test_loader_augments_each_image_with_one_of_its_crops() -> None:
    x, y = _data(n=20, shape=(1, 4, 4))
    loader = DeviceLoader(x, y, 6, torch.Generator().manual_seed(0), augment="crop_flip", pad=2)
    seen_flips = set()
    for xb, yb in loader.epoch():
        for img, label in zip(xb, yb, strict=True):
            padded = F.pad(x[label], (2, 2, 2, 2))
            matches = [
                flip
                for r, s in itertools.product(range(5), repeat=2)
                for flip in (False, True)
                if torch.equal(img, padded[:, r : r + 4, s : s + 4].flip(-1) if flip
                               else padded[:, r : r + 4, s : s + 4])
            ]
            assert matches, f"image {int(label)} is no crop/flip of its source"
            seen_flips.update(matches)
    assert seen_flips == {False, True}


def test_runtime_settings_are_validated() -> None:
    with pytest.raises(ConfigError, match=r"runtime.autocast: 'fp16' is not allowed.*'none'"):
        load_config("default", ["runtime.autocast=fp16"])
    with pytest.raises(ConfigError, match=r"data.augment: 'cutout' is not allowed.*crop_flip"):
        load_config("default", ["data.augment=cutout"])
    cfg = load_config("paper-cifar10")
    assert cfg.data.augment == "crop_flip"
    assert (cfg.runtime.channels_last, cfg.runtime.autocast, cfg.runtime.compile) == (
        True, "bf16", True)


def test_compile_on_a_cpu_without_a_compiler_is_refused(small, monkeypatch) -> None:
    monkeypatch.setenv("PATH", "")
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(ConfigError, match=r"runtime.compile: true on the CPU needs a C\+\+"):
        Run(small("runtime.compile=true"))


def test_moon_loss_under_bf16_autocast_is_the_float32_formula() -> None:
    torch.manual_seed(0)
    net = torch.nn.Linear(16, 5)
    x, y = torch.randn(64, 16), torch.randint(0, 4, (64,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = net(x)
        assert logits.dtype == torch.bfloat16  # autocast is really on
        loss, _ = moon_loss(logits, y, alpha=0.7)
        warm, stat = moon_loss(logits, y, None, warmup_stat=True)
    z = logits.double()
    p = z.softmax(1)
    h = -p.log().gather(1, y[:, None]).squeeze(1)
    p_u = p[:, -1].clamp(max=P_UNKNOWN_MAX)
    c = (z.argmax(1) == y).double()
    assert c.mean() < 0.9  # the up-weighting is exercised
    w = c + (1 - c) * (1 + 0.7 / (1 + 0.7 * p_u))
    formulas = ((loss, (h * w).mean()), (warm, h.mean()), (stat, ((1 - p_u) * h).mean()))
    for value, formula in formulas:
        assert value.dtype == torch.float32
        assert abs(value.item() - formula.item()) < 1e-6


def test_bf16_channels_last_training_keeps_masked_weights_exactly_zero(small) -> None:
    common = ("model.name=cnn", "model.width=16", "epochs=6", "voting.epochs=1",
              "moon.warmup_epochs=1", "sparsity.update_interval=2", "sparsity.end_fraction=1.0")
    run = Run(small(*common, "runtime.autocast=bf16", "runtime.channels_last=true"))
    conv = run.model.features[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    with run.autocast():
        assert run.model(run.suite.val.x[:4]).dtype == torch.bfloat16
    moved = 0
    while not run.done:
        record = run.train_epoch()
        moved += record["mask_moved"]
        # Exactly zero outside the mask after every epoch's steps (and RigL's updates).
        assert nonzero_within_mask(run.model.named_parameters(), run.masks)
        assert record["density"] == pytest.approx(0.1, abs=0.01)
    assert moved > 0
    result = run.finish()
    assert nonzero_within_mask(result.models[0].named_parameters(), run.masks)
    # It learns as well as in float32 (6 classes: chance is 1/6).
    reference = Run(small(*common))
    while not reference.done:
        reference.train_epoch()
    float32_accuracy = reference.finish().metrics["accuracy"]
    assert result.metrics["accuracy"] > 0.8
    assert abs(result.metrics["accuracy"] - float32_accuracy) < 0.05


def test_fused_sgd_is_the_per_tensor_update_up_to_rounding(small) -> None:
    """The fused SGD kernel (the default on CPU) against PyTorch's per-tensor loop: the same
    RigL masks after every epoch, masked weights exactly zero, weights equal to rounding."""
    common = ("epochs=4", "voting.epochs=1", "moon.warmup_epochs=1",
              "sparsity.update_interval=2", "sparsity.end_fraction=1.0")
    fused = Run(small(*common))
    loop = Run(small(*common, "runtime.fused_optimizer=false"))
    assert fused.optimizer.defaults["fused"] and not loop.optimizer.defaults["fused"]
    moved = 0
    while not fused.done:
        moved += fused.train_epoch()["mask_moved"]
        loop.train_epoch()
        assert nonzero_within_mask(fused.model.named_parameters(), fused.masks)
        for name, mask in fused.masks.state_dict().items():
            assert torch.equal(mask, loop.masks.state_dict()[name]), name
    assert moved > 0
    for (name, a), (_, b) in zip(fused.model.state_dict().items(),
                                 loop.model.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


def test_resume_with_augmentation_equals_an_uninterrupted_run(small) -> None:
    overrides = ("model.name=cnn", "model.width=8", "epochs=4", "voting.epochs=1",
                 "moon.warmup_epochs=1", "data.augment=crop_flip")
    whole = Run(small(*overrides))
    while not whole.done:
        whole.train_epoch()
    first = Run(small(*overrides))
    first.train_epoch()
    first.train_epoch()
    resumed = Run(small(*overrides))
    resumed.load_state_dict(first.state_dict())
    while not resumed.done:
        resumed.train_epoch()
    for (name, a), (_, b) in zip(whole.model.state_dict().items(),
                                 resumed.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_bench_gpu_runs_tiny(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu.py"), "--tiny", "--concurrency", "2",
         "--json", str(out)],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(out.read_text())
    assert set(res["training"]["summary"]) == {"dense", "rigl+moon+voting"}
    assert all(m["images_per_s"] > 0 for m in res["training"]["summary"].values())
    assert res["pipeline"]["device_loader"] > 0 and res["pipeline"]["torchvision_dataloader"] > 0
    assert set(res["trials"]) == {"2"}
    for n, t in res["trials"].items():
        assert len(t["trial_s"]) == int(n)
        assert t["trials_per_hour"] == pytest.approx(int(n) * 3600 / t["wall_s"])
    assert "| rigl+moon+voting |" in proc.stdout
