"""Tests for engine.data: real scikit-learn digits and a real image folder written with PIL."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from engine.config import ConfigError, DataConfig
from engine.data import Suite, load_suite, suites

RAW = load_digits()


@pytest.fixture(scope="module")
def default_suite() -> Suite:
    return load_suite(DataConfig())


def _rows(t: torch.Tensor) -> set[bytes]:
    return {r.numpy().tobytes() for r in t.reshape(len(t), -1)}


def test_registry_has_both_suites() -> None:
    assert {"digits", "imagefolder"} <= set(suites.names())


def test_digits_default_shapes_and_split_sizes(default_suite: Suite) -> None:
    s = default_suite
    cfg = DataConfig()
    assert s.name == "digits"
    assert s.num_classes == 6
    assert s.input_shape == (1, 8, 8)
    assert s.class_names == ["0", "1", "2", "3", "4", "5"]

    n_id = int(np.isin(RAW.target, range(6)).sum())
    sizes = [len(s.train.y), len(s.val.y), len(s.test.y)]
    assert sum(sizes) == n_id
    assert abs(sizes[1] - cfg.val_fraction * n_id) <= 2
    assert abs(sizes[2] - cfg.test_fraction * n_id) <= 2
    for split in (s.train, s.val, s.test):
        assert split.x.dtype == torch.float32 and split.y.dtype == torch.int64
        assert split.x.shape == (len(split.y), 1, 8, 8)
        assert sorted(split.y.unique().tolist()) == [0, 1, 2, 3, 4, 5]  # stratified
    # ID splits are disjoint (digits has no duplicate images within 0..5 that would mask this).
    train, val, test = _rows(s.train.x), _rows(s.val.x), _rows(s.test.x)
    assert not (train & val) and not (train & test) and not (val & test)


def test_digits_split_is_stratified_in_proportion(default_suite: Suite) -> None:
    s = default_suite
    for k in range(6):
        n_k = int((RAW.target == k).sum())
        assert abs(int((s.test.y == k).sum()) - 0.2 * n_k) <= 2
        assert abs(int((s.val.y == k).sum()) - 0.2 * n_k) <= 2


def test_digits_ood_sets(default_suite: Suite) -> None:
    s = default_suite
    assert [(o.name, o.group) for o in s.ood] == [
        ("digits_6-9", "near"),
        ("photos", "far"),
        ("noise", "far"),
    ]
    near = s.ood_group("near")
    assert len(near) == 1
    n_near = int(np.isin(RAW.target, [6, 7, 8, 9]).sum())
    assert len(near[0].val) + len(near[0].test) == n_near
    assert abs(len(near[0].val) - 0.5 * n_near) <= 1
    assert not (_rows(near[0].val) & _rows(near[0].test))

    far = {o.name: o for o in s.ood_group("far")}
    assert set(far) == {"photos", "noise"}
    for o in far.values():
        assert len(o.val) + len(o.test) == DataConfig().far_ood_size
        assert o.val.shape[1:] == (1, 8, 8) and o.val.dtype == torch.float32
    with pytest.raises(ValueError):
        s.ood_group("middle")


def test_digits_normalised_with_train_statistics(default_suite: Suite) -> None:
    s = default_suite
    x = s.train.x
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(1), atol=1e-4)
    assert torch.allclose(x.std(dim=(0, 2, 3)), torch.ones(1), atol=1e-3)
    # Train holds raw pixels 0 and 1, so its min/max recover the shared affine map.
    lo, hi = x.min(), x.max()

    def raw(t: torch.Tensor) -> torch.Tensor:
        return (t - lo) / (hi - lo)

    for o in s.ood:
        r = raw(torch.cat([o.val, o.test]))
        assert r.min() >= -1e-5 and r.max() <= 1 + 1e-5, o.name
    noise = raw(torch.cat([s.ood[2].val, s.ood[2].test]))
    assert abs(noise.mean().item() - 0.5) < 0.02  # uniform [0, 1]
    assert abs(noise.std().item() - (1 / 12) ** 0.5) < 0.02
    # Val/test use the train statistics, so they are only roughly standardised.
    assert abs(s.test.x.mean().item()) < 0.1 and s.test.x.mean().item() != 0


def test_same_seed_same_tensors_different_seed_different_split() -> None:
    a = load_suite(DataConfig(split_seed=3, far_ood_size=20))
    b = load_suite(DataConfig(split_seed=3, far_ood_size=20))
    c = load_suite(DataConfig(split_seed=4, far_ood_size=20))
    for sa, sb in ((a.train, b.train), (a.val, b.val), (a.test, b.test)):
        assert torch.equal(sa.x, sb.x) and torch.equal(sa.y, sb.y)
    for oa, ob in zip(a.ood, b.ood, strict=True):
        assert torch.equal(oa.val, ob.val) and torch.equal(oa.test, ob.test)
    assert len(c.train.y) == len(a.train.y)
    assert _rows(c.train.x) != _rows(a.train.x)
    assert not torch.equal(a.ood[1].val, c.ood[1].val)  # photos crops follow split_seed too


def test_custom_known_classes_relabelled_in_sorted_order() -> None:
    s = load_suite(DataConfig(known_classes=[7, 1, 5, 3], far_ood_size=20))
    assert s.num_classes == 4
    assert s.class_names == ["1", "3", "5", "7"]
    near = s.ood_group("near")
    assert [o.name for o in near] == ["digits_0,2,4,6,8,9"]
    n_near = int(np.isin(RAW.target, [0, 2, 4, 6, 8, 9]).sum())
    assert len(near[0].val) + len(near[0].test) == n_near

    # Map normalised images back to raw digits: raw image bytes -> original digit.
    x = torch.cat([s.train.x, s.val.x, s.test.x])
    y = torch.cat([s.train.y, s.val.y, s.test.y])
    raw = torch.from_numpy(RAW.images[np.isin(RAW.target, [1, 3, 5, 7])] / 16.0).float()
    raw_y = RAW.target[np.isin(RAW.target, [1, 3, 5, 7])]
    # Undo normalisation: the min pixel maps to raw 0 and the affine map is shared.
    lo, hi = x.min(), x.max()
    restored = ((x - lo) / (hi - lo) * 16).round().to(torch.uint8)
    lookup: dict[bytes, set[int]] = {}
    for img, d in zip((raw * 16).round().to(torch.uint8), raw_y, strict=True):
        lookup.setdefault(img.numpy().tobytes(), set()).add(int(d))
    expected = {1: 0, 3: 1, 5: 2, 7: 3}
    checked = 0
    for img, label in zip(restored, y.tolist(), strict=True):
        digits = lookup[img[0].numpy().tobytes()]
        if len(digits) == 1:
            assert expected[digits.pop()] == label
            checked += 1
    assert checked > 0.95 * len(y)
    assert int((y == 1).sum()) == int((RAW.target == 3).sum())


@pytest.mark.parametrize("known", [[0], [0, 11], [0, 0, 1], list(range(10)), [-1, 2]])
def test_bad_known_classes(known: list[int]) -> None:
    with pytest.raises(ConfigError, match="data.known_classes"):
        load_suite(DataConfig(known_classes=known))


def test_unknown_suite() -> None:
    with pytest.raises(ConfigError, match="data.suite"):
        load_suite(DataConfig(suite="nope"))


def test_to_moves_and_copies(default_suite: Suite) -> None:
    moved = default_suite.to("cpu")
    assert moved is not default_suite
    assert torch.equal(moved.train.x, default_suite.train.x)
    assert [o.name for o in moved.ood] == [o.name for o in default_suite.ood]
    assert moved.ood[0].test.device.type == "cpu"


# --------------------------------------------------------------------------- imagefolder

COLOURS = {"cat": (200, 30, 30), "ant": (30, 200, 30), "bee": (30, 30, 200)}


def _write(folder: Path, n: int, colour: tuple[int, int, int], size: int = 12) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        arr = np.full((size, size, 3), colour, np.uint8)
        arr[i % size, :, :] = 255  # a stripe so images within a class differ
        Image.fromarray(arr).save(folder / f"img{i}.png")


@pytest.fixture
def image_root(tmp_path: Path) -> Path:
    for name, colour in COLOURS.items():
        _write(tmp_path / "id" / name, 10, colour)
    _write(tmp_path / "ood" / "near" / "wasps", 8, (120, 120, 30))
    _write(tmp_path / "ood" / "far" / "sky" / "nested", 8, (10, 10, 10), size=20)
    return tmp_path


def test_imagefolder_rgb(image_root: Path) -> None:
    cfg = DataConfig(suite="imagefolder", root=str(image_root), image_size=8, channels=3)
    s = load_suite(cfg)
    assert s.name == "imagefolder"
    assert s.num_classes == 3
    assert s.class_names == ["ant", "bee", "cat"]
    assert s.input_shape == (3, 8, 8)
    assert len(s.train.y) + len(s.val.y) + len(s.test.y) == 30
    assert (len(s.val.y), len(s.test.y)) == (6, 6)
    for split in (s.train, s.val, s.test):
        assert split.x.shape == (len(split.y), 3, 8, 8)
        assert sorted(split.y.unique().tolist()) == [0, 1, 2]
    assert [(o.name, o.group) for o in s.ood] == [("wasps", "near"), ("sky", "far")]
    for o in s.ood:
        assert len(o.val) + len(o.test) == 8 and len(o.val) == 4
        assert o.val.shape[1:] == (3, 8, 8)
    # Labels follow sorted class names: "cat" (label 2) is the reddest class.
    red_minus_blue = (s.train.x[:, 0] - s.train.x[:, 2]).mean(dim=(1, 2))
    assert int(s.train.y[red_minus_blue.argmax()]) == 2
    x = s.train.x
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(x.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-3)


def test_imagefolder_grayscale(image_root: Path) -> None:
    s = load_suite(DataConfig(suite="imagefolder", root=str(image_root), image_size=8, channels=1))
    assert s.input_shape == (1, 8, 8)
    assert s.train.x.shape[1:] == (1, 8, 8)
    assert s.ood_group("far")[0].test.shape[1:] == (1, 8, 8)


def test_imagefolder_errors(tmp_path: Path, image_root: Path) -> None:
    with pytest.raises(ConfigError, match="data.root: required"):
        load_suite(DataConfig(suite="imagefolder"))
    with pytest.raises(ConfigError, match="data.root: .*does not exist"):
        load_suite(DataConfig(suite="imagefolder", root=str(tmp_path / "missing")))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="data.root: .*id/"):
        load_suite(DataConfig(suite="imagefolder", root=str(empty)))
    one = tmp_path / "one"
    _write(one / "id" / "only", 10, (1, 2, 3))
    with pytest.raises(ConfigError, match="at least 2 class"):
        load_suite(DataConfig(suite="imagefolder", root=str(one)))
    few = tmp_path / "few"
    _write(few / "id" / "a", 10, (1, 2, 3))
    _write(few / "id" / "b", 1, (3, 2, 1))
    with pytest.raises(ConfigError, match="data.root: .*stratified"):
        load_suite(DataConfig(suite="imagefolder", root=str(few), image_size=8))
    (image_root / "id" / "dog").mkdir()
    with pytest.raises(ConfigError, match="data.root: .*dog holds no images"):
        load_suite(DataConfig(suite="imagefolder", root=str(image_root), image_size=8))
