"""Tiny datasets written in their real on-disk formats, for the tests.

CIFAR pickles as Python 2 wrote them, SVHN .mat, MNIST idx files, DTD / Places365 /
TinyImageNet folders of JPEGs: the layouts torchvision reads (engine/data/datasets.py). They cannot
match the official md5 sums: readers need MOONSWEEP_VERIFY_MD5=0.

    written = write_all(root)          # every dataset of the cifar10-ood / cifar100-ood suites
    env = {"MOONSWEEP_DATA": str(root), "MOONSWEEP_VERIFY_MD5": "0"}
"""

from __future__ import annotations

import io
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io
from PIL import Image

CIFAR10_NAMES = "airplane automobile bird cat deer dog frog horse ship truck".split()
DTD_CLASSES = ("banded", "dotted", "striped")
N = {"svhn": 12, "mnist": 12, "textures": 9, "places365": 8, "tinyimagenet": 10}


# --------------------------------------------------------------------------- writers


class _Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes bytes as Python 2 `str` (BINSTRING), as the official CIFAR pickles hold them.

    Loaded with encoding="latin1" (as torchvision does) they become str, like the real files.
    """

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def _dump_py2(obj: Any, path: Path) -> None:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    path.write_bytes(buf.getvalue())


def _labels(num_classes: int, per_class: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.repeat(np.arange(num_classes), per_class))


def write_cifar10(root: Path, per_class: int = 5, n_test: int = 20) -> dict[str, np.ndarray]:
    """cifar-10-batches-py/: 5 train batches, test_batch, batches.meta; returns what it wrote.

    Each class's images are one random picture plus noise, so a small network learns them
    in a few epochs: a cut sweep on these files has trials that train (pure noise would
    leave every one at chance)."""
    rng = np.random.default_rng(10)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    templates = rng.integers(0, 256, (10, 3072))

    def images(labels: np.ndarray) -> np.ndarray:
        noisy = templates[labels] + rng.normal(0, 32, (len(labels), 3072))
        return np.clip(noisy, 0, 255).astype(np.uint8)

    y_train = _labels(10, per_class, rng)
    x_train = images(y_train)
    for b, (xb, yb) in enumerate(zip(np.split(x_train, 5), np.split(y_train, 5), strict=True)):
        batch = {
            b"batch_label": f"training batch {b + 1} of 5".encode(),
            b"labels": [int(v) for v in yb],
            b"data": xb,
            b"filenames": [f"img_{b}_{i}.png".encode() for i in range(len(yb))],
        }
        _dump_py2(batch, folder / f"data_batch_{b + 1}")
    y_test = rng.integers(0, 10, n_test)
    x_test = images(y_test)
    test = {b"batch_label": b"testing batch 1 of 1", b"labels": [int(v) for v in y_test]}
    _dump_py2({**test, b"data": x_test, b"filenames": [b"t.png"] * n_test}, folder / "test_batch")
    meta = {b"label_names": [n.encode() for n in CIFAR10_NAMES], b"num_vis": 3072}
    _dump_py2({**meta, b"num_cases_per_batch": len(y_train) // 5}, folder / "batches.meta")
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def write_cifar100(root: Path, per_class: int = 3, n_test: int = 30) -> dict[str, np.ndarray]:
    """cifar-100-python/: train, test, meta with fine and coarse labels."""
    rng = np.random.default_rng(100)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    out = {}
    for part, y in (
        ("train", _labels(100, per_class, rng)),
        ("test", rng.integers(0, 100, n_test)),
    ):
        x = rng.integers(0, 256, (len(y), 3072), dtype=np.uint8)
        entry = {
            b"filenames": [b"f.png"] * len(y),
            b"batch_label": part.encode(),
            b"fine_labels": [int(v) for v in y],
            b"coarse_labels": [int(v) // 5 for v in y],
            b"data": x,
        }
        _dump_py2(entry, folder / part)
        out[f"x_{part}"], out[f"y_{part}"] = x, y
    meta = {
        b"fine_label_names": [f"fine{k:02d}".encode() for k in range(100)],
        b"coarse_label_names": [f"coarse{k:02d}".encode() for k in range(20)],
    }
    _dump_py2(meta, folder / "meta")
    return out


def write_svhn(root: Path, n: int = N["svhn"]) -> dict[str, np.ndarray]:
    """svhn/test_32x32.mat: X (32, 32, 3, N) uint8, y (N, 1) in 1..10 (10 is digit 0)."""
    rng = np.random.default_rng(7)
    x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
    y = (np.arange(n) % 10 + 1).astype(np.uint8)[:, None]
    (root / "svhn").mkdir(parents=True)
    scipy.io.savemat(root / "svhn" / "test_32x32.mat", {"X": x, "y": y})
    return {"x": x, "y": y}


def write_mnist(root: Path, n: int = N["mnist"]) -> dict[str, np.ndarray]:
    """MNIST/raw/t10k-{images-idx3,labels-idx1}-ubyte with big-endian idx headers."""
    x = np.zeros((n, 28, 28), np.uint8)
    x[:] = (np.arange(n) * 20)[:, None, None]  # constant images: resizing keeps the value
    y = (np.arange(n) % 10).astype(np.uint8)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "t10k-images-idx3-ubyte").write_bytes(
        struct.pack(">iiii", 2051, n, 28, 28) + x.tobytes()
    )
    (raw / "t10k-labels-idx1-ubyte").write_bytes(struct.pack(">ii", 2049, n) + y.tobytes())
    return {"x": x, "y": y}


def _jpeg(path: Path, size: tuple[int, int], value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, 255 - value, 128)).save(path, quality=95)


def write_dtd(root: Path) -> None:
    """dtd/dtd/images/<class>/<class>_NNNN.jpg and labels/{train,val,test}1.txt."""
    base = root / "dtd" / "dtd"
    (base / "labels").mkdir(parents=True)
    for s, split in enumerate(("train", "val", "test")):
        lines = []
        for c, cls in enumerate(DTD_CLASSES):
            name = f"{cls}_{s:04d}.jpg"
            _jpeg(base / "images" / cls / name, (40 + 8 * c, 48), 30 * c + 10 * s)
            lines.append(f"{cls}/{name}\n")
        (base / "labels" / f"{split}1.txt").write_text("".join(lines))


def write_places365(root: Path, n: int = N["places365"]) -> None:
    """places365/: categories_places365.txt, places365_val.txt, val_256/*.jpg."""
    base = root / "places365"
    (base / "val_256").mkdir(parents=True)
    cats = ["/a/airfield", "/b/beach", "/c/canyon"]
    (base / "categories_places365.txt").write_text(
        "".join(f"{c} {i}\n" for i, c in enumerate(cats))
    )
    lines = []
    for i in range(n):
        name = f"Places365_val_{i + 1:08d}.jpg"
        _jpeg(base / "val_256" / name, (256, 256), 20 * i)
        lines.append(f"{name} {i % 3}\n")
    (base / "places365_val.txt").write_text("".join(lines))


def write_tinyimagenet(root: Path, n: int = N["tinyimagenet"], part: str = "val") -> None:
    """tiny-imagenet-200/<part>/images/<part>_<i>.JPEG (+ val_annotations.txt, unused)."""
    base = root / "tiny-imagenet-200" / part
    for i in range(n):
        _jpeg(base / "images" / f"{part}_{i}.JPEG", (64, 64), 25 * i)
    (base / "val_annotations.txt").write_text("val_0.JPEG\tn01443537\t0\t0\t63\t63\n")


def write_all(root: Path, cifar10_per_class: int = 5) -> dict[str, dict[str, np.ndarray]]:
    """Every dataset; `cifar10_per_class` 20 gives a val split of 2 per class at 0.1."""
    written = {
        "cifar10": write_cifar10(root, per_class=cifar10_per_class),
        "cifar100": write_cifar100(root),
    }
    written["svhn"], written["mnist"] = write_svhn(root), write_mnist(root)
    write_dtd(root)
    write_places365(root)
    write_tinyimagenet(root)
    return written
