"""Tests for engine.data.datasets and .openood: each dataset in its real on-disk format.

The fixtures (tests/datafiles.py) are tiny but byte-for-byte in the official layouts: CIFAR
pickles as Python 2 wrote them, SVHN .mat, MNIST idx files, DTD / Places365 / TinyImageNet
folders of JPEGs.
They cannot match the official md5 sums, so most tests set MOONSWEEP_VERIFY_MD5=0; one test
shows the md5 check is live by default.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from datafiles import (
    CIFAR10_NAMES,
    DTD_CLASSES,
    N,
    write_all,
    write_cifar10,
    write_tinyimagenet,
)

from engine.config import ConfigError, DataConfig, load_config
from engine.data import Suite, load_suite, openood, suites
from engine.data.datasets import DatasetNotFound, datasets, load_dataset
from engine.data.openood import MissingOODWarning
from engine.data.suite import train_val_indices

ALL_OOD = ["cifar100", "tinyimagenet", "mnist", "svhn", "textures", "places365"]


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MOONSWEEP_DATA", raising=False)
    monkeypatch.delenv("MOONSWEEP_DOWNLOAD", raising=False)
    monkeypatch.setenv("MOONSWEEP_VERIFY_MD5", "0")  # fixtures cannot match the official md5


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    root = tmp_path_factory.mktemp("data")
    return root, write_all(root)


@pytest.fixture
def root_copy(full: tuple[Path, Any], tmp_path: Path) -> Path:
    """A private copy of the full data root, for tests that delete parts of it."""
    return Path(shutil.copytree(full[0], tmp_path / "data"))


def _cfg(root: Path | None, **kw: Any) -> DataConfig:
    return DataConfig(
        suite=kw.pop("suite", "cifar10-ood"), root=None if root is None else str(root), **kw
    )


# --------------------------------------------------------------------------- loaders


def test_registries() -> None:
    assert datasets.names() == sorted(ALL_OOD + ["cifar10"])
    assert {"cifar10-ood", "cifar100-ood", "digits", "imagefolder"} <= set(suites.names())
    assert load_config("default", ["data.suite=cifar100-ood"]).data.suite == "cifar100-ood"


def test_cifar10_pickles(full: tuple[Path, Any]) -> None:
    root, w = full
    train = datasets.build("cifar10", root=root, part="train", verify=False)
    test = datasets.build("cifar10", root=root, part="test", verify=False)
    assert train.images.shape == (50, 3, 32, 32) and train.images.dtype == torch.uint8
    # CIFAR rows are 1024 red, then green, then blue values, each row-major 32x32.
    assert np.array_equal(train.images.numpy(), w["cifar10"]["x_train"].reshape(-1, 3, 32, 32))
    assert train.labels.tolist() == w["cifar10"]["y_train"].tolist()
    assert train.classes == CIFAR10_NAMES and train.path == root / "cifar-10-batches-py"
    assert len(test) == 20 and test.labels.tolist() == w["cifar10"]["y_test"].tolist()

    x, y = load_dataset("cifar10", root, part="test", verify=False)
    assert x.dtype == torch.float32 and x.shape == (20, 3, 32, 32)
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert torch.equal(x, test.images.float() / 255) and torch.equal(y, test.labels)


def test_cifar100_fine_labels(full: tuple[Path, Any]) -> None:
    root, w = full
    train = datasets.build("cifar100", root=root, part="train", verify=False)
    assert train.images.shape == (300, 3, 32, 32)
    assert train.labels.tolist() == w["cifar100"]["y_train"].tolist()  # fine, not coarse
    assert train.classes == [f"fine{k:02d}" for k in range(100)]
    test = datasets.build("cifar100", root=root, part="test", verify=False)
    assert np.array_equal(test.images.numpy(), w["cifar100"]["x_test"].reshape(-1, 3, 32, 32))


def test_svhn_mat(full: tuple[Path, Any]) -> None:
    root, w = full
    raw = datasets.build("svhn", root=root, verify=False)
    assert raw.images.shape == (N["svhn"], 3, 32, 32) and raw.images.dtype == torch.uint8
    assert np.array_equal(raw.images.numpy(), w["svhn"]["x"].transpose(3, 2, 0, 1))
    assert raw.labels.tolist() == [(k + 1) % 10 for k in range(N["svhn"])]  # 10 -> digit 0


def test_mnist_idx_resized_to_three_channels(full: tuple[Path, Any]) -> None:
    root, w = full
    raw = datasets.build("mnist", root=root)  # only the t10k files exist: enough for the test part
    assert raw.images.shape == (N["mnist"], 3, 32, 32) and raw.images.dtype == torch.uint8
    expected = torch.from_numpy(w["mnist"]["x"][:, 0, 0].astype(np.uint8))
    assert torch.equal(raw.images, expected[:, None, None, None].expand(-1, 3, 32, 32))
    assert raw.labels.tolist() == w["mnist"]["y"].tolist()
    with pytest.raises(DatasetNotFound, match=r"MNIST.*raw.*train-images-idx3-ubyte"):
        datasets.build("mnist", root=root, part="train")


def test_textures_dtd_all_three_splits(full: tuple[Path, Any]) -> None:
    root, _ = full
    raw = datasets.build("textures", root=root)
    assert raw.images.shape == (N["textures"], 3, 32, 32)  # train1 + val1 + test1
    assert raw.classes == sorted(DTD_CLASSES)
    assert sorted(raw.labels.tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    # First image: banded_0000.jpg, colour (10*0, 255, 128) up to JPEG error.
    assert (raw.images[0, :, 5, 5].int() - torch.tensor([0, 255, 128])).abs().max() <= 4


def test_places365_small_val(full: tuple[Path, Any]) -> None:
    root, _ = full
    raw = datasets.build("places365", root=root, verify=False)
    assert raw.images.shape == (N["places365"], 3, 32, 32)
    assert raw.labels.tolist() == [i % 3 for i in range(N["places365"])]
    assert raw.classes == ["/a/airfield", "/b/beach", "/c/canyon"]
    assert abs(int(raw.images[3, 0].float().mean()) - 60) <= 4  # 4th image is red 60


def test_tinyimagenet_val_then_test(full: tuple[Path, Any], tmp_path: Path) -> None:
    raw = datasets.build("tinyimagenet", root=full[0])
    assert raw.images.shape == (N["tinyimagenet"], 3, 32, 32) and raw.labels is None
    write_tinyimagenet(tmp_path, n=3, part="test")  # no val/: the test images are used
    raw = datasets.build("tinyimagenet", root=tmp_path)
    assert len(raw) == 3 and raw.path == tmp_path / "tiny-imagenet-200" / "test"


def test_limit_is_a_seeded_subsample(full: tuple[Path, Any]) -> None:
    root, _ = full
    all_x = datasets.build("svhn", root=root, verify=False).images
    a = datasets.build("svhn", root=root, verify=False, limit=5, seed=0).images
    b = datasets.build("svhn", root=root, verify=False, limit=5, seed=0).images
    c = datasets.build("svhn", root=root, verify=False, limit=5, seed=1).images
    assert len(a) == 5 and torch.equal(a, b) and not torch.equal(a, c)
    rows = {r.numpy().tobytes() for r in all_x}
    assert all(r.numpy().tobytes() in rows for r in a)  # a subset, no duplicates
    assert len({r.numpy().tobytes() for r in a}) == 5
    assert len(datasets.build("textures", root=root, limit=4)) == 4  # decodes only those


def test_unreadable_image_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "tiny-imagenet-200" / "val" / "images" / "val_0.JPEG"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(ConfigError, match=r"cannot read image .*val_0\.JPEG"):
        datasets.build("tinyimagenet", root=tmp_path)


# --------------------------------------------------------------------------- suites


@pytest.fixture(scope="module")
def cifar10_suite(full: tuple[Path, Any]) -> Suite:
    with pytest.MonkeyPatch.context() as mp:  # module scope: the autouse env is not active
        mp.setenv("MOONSWEEP_VERIFY_MD5", "0")
        mp.delenv("MOONSWEEP_DOWNLOAD", raising=False)
        return load_suite(_cfg(full[0]))


def test_cifar10_ood_suite(cifar10_suite: Suite, full: tuple[Path, Any]) -> None:
    s, w = cifar10_suite, full[1]["cifar10"]
    assert s.name == "cifar10-ood" and s.num_classes == 10 and s.input_shape == (3, 32, 32)
    assert s.class_names == CIFAR10_NAMES
    # Official train part (50) -> 40/10 by val_fraction 0.2, stratified; official test as is.
    assert (len(s.train), len(s.val), len(s.test)) == (40, 10, 20)
    assert sorted(s.val.y.tolist()) == list(range(10))
    assert torch.bincount(s.train.y).tolist() == [4] * 10
    assert s.test.y.tolist() == w["y_test"].tolist()
    for split in (s.train, s.val, s.test):
        assert split.x.dtype == torch.float32 and split.y.dtype == torch.int64
        assert split.x.shape == (len(split), 3, 32, 32)

    # Normalised with ID-train statistics: train is standardised per channel ...
    assert torch.allclose(s.train.x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(s.train.x.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-4)
    # ... with the statistics of exactly those train images, applied to the official test part.
    raw_train = torch.from_numpy(w["x_train"].reshape(-1, 3, 32, 32)).float() / 255
    raw_test = torch.from_numpy(w["x_test"].reshape(-1, 3, 32, 32)).float() / 255
    train_idx, _ = train_val_indices(torch.from_numpy(w["y_train"]), DataConfig(), "test")
    picked = raw_train[torch.from_numpy(train_idx)]
    mean = picked.mean(dim=(0, 2, 3), keepdim=True)
    std = picked.std(dim=(0, 2, 3), keepdim=True)
    assert torch.allclose(s.train.x, (picked - mean) / std, atol=1e-5)
    assert torch.allclose(s.test.x, (raw_test - mean) / std, atol=1e-5)

    assert [(o.name, o.group) for o in s.ood] == [
        ("cifar100", "near"),
        ("tinyimagenet", "near"),
        ("mnist", "far"),
        ("svhn", "far"),
        ("textures", "far"),
        ("places365", "far"),
    ]
    sizes = {o.name: (len(o.val), len(o.test)) for o in s.ood}
    assert sizes["cifar100"] == (15, 15)  # the 30 test images, ood_val_fraction 0.5
    for name, n in N.items():
        assert sum(sizes[name]) == n and sizes[name][0] == round(0.5 * n)
    for o in s.ood:
        assert o.val.dtype == torch.float32 and o.val.shape[1:] == (3, 32, 32)
    # OOD images get the same ID-train map: undoing it gives back SVHN's pixels exactly.
    svhn = next(o for o in s.ood if o.name == "svhn")
    back = (torch.cat([svhn.val, svhn.test]) * std + mean) * 255
    got = {r.numpy().tobytes() for r in back.round().to(torch.uint8)}
    written = full[1]["svhn"]["x"].transpose(3, 2, 0, 1)
    assert got == {r.tobytes() for r in written}


def test_cifar100_ood_suite(full: tuple[Path, Any]) -> None:
    s = load_suite(_cfg(full[0], suite="cifar100-ood", val_fraction=0.34))
    assert s.num_classes == 100 and len(s.class_names) == 100
    assert (len(s.train), len(s.val), len(s.test)) == (198, 102, 30)
    assert len(set(s.val.y.tolist())) == 100  # every class in val
    assert [o.name for o in s.ood_group("near")] == ["cifar10", "tinyimagenet"]
    assert sum(map(len, (s.ood[0].val, s.ood[0].test))) == 20  # CIFAR-10's test batch


def test_split_seed_moves_the_val_split(full: tuple[Path, Any]) -> None:
    a = load_suite(_cfg(full[0], split_seed=0))
    b = load_suite(_cfg(full[0], split_seed=1))
    assert not torch.equal(a.val.x, b.val.x)
    assert torch.equal(a.test.y, b.test.y)  # the official test part does not move


def test_ood_sets_capped(full: tuple[Path, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(openood, "OOD_CAP", 5)
    s = load_suite(_cfg(full[0]))
    assert all(len(o.val) + len(o.test) == 5 for o in s.ood)
    assert len(s.test) == 20  # the ID test part is never capped


def test_absent_ood_sets_are_skipped_with_a_warning(root_copy: Path) -> None:
    shutil.rmtree(root_copy / "places365")
    shutil.rmtree(root_copy / "tiny-imagenet-200")
    with pytest.warns(MissingOODWarning) as record:
        s = load_suite(_cfg(root_copy))
    messages = [str(r.message) for r in record]
    assert any("'places365'" in m and str(root_copy / "places365") in m for m in messages)
    assert any("'tinyimagenet'" in m and "tiny-imagenet-200" in m for m in messages)
    assert [o.name for o in s.ood] == ["cifar100", "mnist", "svhn", "textures"]


def test_absent_id_dataset_is_an_error(root_copy: Path) -> None:
    (root_copy / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(
        ConfigError, match=r"CIFAR-10 not found in .*cifar-10-batches-py.*test_batch"
    ):
        load_suite(_cfg(root_copy))
    shutil.rmtree(root_copy / "cifar-100-python")
    with pytest.raises(ConfigError, match=str(root_copy / "cifar-100-python")):
        load_suite(_cfg(root_copy, suite="cifar100-ood"))


def test_no_ood_set_at_all_is_an_error(full: tuple[Path, Any], tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    with pytest.warns(MissingOODWarning), pytest.raises(ConfigError, match="at least one OOD"):
        load_suite(_cfg(tmp_path))


def test_data_root_from_environment(
    full: tuple[Path, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError, match="MOONSWEEP_DATA"):
        load_suite(_cfg(None))
    with pytest.raises(ConfigError, match="MOONSWEEP_DATA"):
        load_dataset("svhn")
    monkeypatch.setenv("MOONSWEEP_DATA", str(full[0]))
    assert len(load_suite(_cfg(None)).ood) == 6
    assert load_dataset("mnist")[0].shape == (N["mnist"], 3, 32, 32)
    # An explicit data.root wins over the environment.
    with pytest.raises(ConfigError, match=str(tmp_path)):
        load_suite(_cfg(tmp_path))


def test_md5_check_is_on_by_default(
    full: tuple[Path, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MOONSWEEP_VERIFY_MD5")
    for name in ("cifar10", "cifar100", "svhn", "places365"):
        with pytest.raises(ConfigError, match="md5 check.*MOONSWEEP_VERIFY_MD5=0"):
            load_dataset(name, full[0])
    assert len(load_dataset("mnist", full[0])[0]) == N["mnist"]  # torchvision has no md5 here
    monkeypatch.setenv("MOONSWEEP_VERIFY_MD5", "maybe")
    with pytest.raises(ConfigError, match="MOONSWEEP_VERIFY_MD5"):
        load_dataset("svhn", full[0])


def test_download_only_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets

    calls = []

    def fake_download(self: Any) -> None:  # stands in for the network
        calls.append(type(self).__name__)
        raise RuntimeError("offline")

    monkeypatch.setattr(torchvision.datasets.CIFAR10, "download", fake_download)
    with pytest.raises(DatasetNotFound, match="MOONSWEEP_DOWNLOAD=1"):
        load_dataset("cifar10", tmp_path)
    assert calls == []
    monkeypatch.setenv("MOONSWEEP_DOWNLOAD", "1")
    with pytest.raises(ConfigError, match="cannot download or read CIFAR-10.*offline"):
        load_dataset("cifar10", tmp_path)
    assert calls == ["CIFAR10"]


def test_importing_vision_first_has_no_import_cycle() -> None:
    code = (
        "import engine.data.openood, engine.data; "
        "assert {'cifar10-ood', 'cifar100-ood'} <= set(engine.data.suites.names())"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
