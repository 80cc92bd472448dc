"""Open-set dataset suites: in-distribution splits plus near- and far-OOD sets.

A *suite* is everything one run needs: ID train/val/test splits and a list of OOD
sets (each with its own val/test part), all normalised with the ID-train statistics.
Suites are registered builders, so a new one is a decorated function that loads raw
tensors in [0, 1] and hands them to `_assemble`, which does the splitting and
normalisation for every suite in the same way.

Example:
    >>> from engine.config import DataConfig
    >>> from engine.data import load_suite
    >>> suite = load_suite(DataConfig(suite="digits", known_classes=[0, 1, 2, 3, 4, 5]))
    >>> suite.num_classes, suite.input_shape
    (6, (1, 8, 8))
    >>> [(s.name, s.group) for s in suite.ood]
    [('digits_6-9', 'near'), ('photos', 'far'), ('noise', 'far')]
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from sklearn.datasets import load_digits, load_sample_images
from sklearn.model_selection import train_test_split

from engine.config import ConfigError, DataConfig
from engine.registry import Registry

__all__ = ["IMAGE_EXTENSIONS", "OODSet", "Split", "Suite", "load_suite", "suites"]

OODGroup = Literal["near", "far"]
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")

# Independent random streams per purpose, so e.g. changing far_ood_size never moves the
# ID split and adding an OOD set never reshuffles the others.
_STREAM_PHOTOS, _STREAM_NOISE, _STREAM_OOD_SPLIT = 1, 2, 3


@dataclass
class Split:
    """One labelled ID split: images (N, C, H, W) float32 and labels (N,) int64."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class OODSet:
    """One unlabelled OOD set, split into a val part (for tuning) and a test part."""

    name: str
    group: OODGroup
    val: torch.Tensor
    test: torch.Tensor


@dataclass
class Suite:
    """ID splits and OOD sets of one open-set benchmark, normalised alike."""

    name: str
    num_classes: int
    input_shape: tuple[int, int, int]
    class_names: list[str]
    train: Split
    val: Split
    test: Split
    ood: list[OODSet]
    # Per-channel (1, C, 1, 1) ID-train statistics the images were normalised with, so raw
    # inputs in [0, 1] can be prepared the same way at prediction time.
    norm_mean: torch.Tensor | None = None
    norm_std: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> Suite:
        """Return a new Suite with every tensor moved to `device`."""

        def move(s: Split) -> Split:
            return Split(s.x.to(device), s.y.to(device))

        ood = [
            dataclasses.replace(o, val=o.val.to(device), test=o.test.to(device)) for o in self.ood
        ]
        return dataclasses.replace(
            self, train=move(self.train), val=move(self.val), test=move(self.test), ood=ood
        )

    def ood_group(self, group: str) -> list[OODSet]:
        """The OOD sets of one group ("near" or "far"), in suite order."""
        if group not in ("near", "far"):
            raise ValueError(f"OOD group must be 'near' or 'far', got {group!r}")
        return [o for o in self.ood if o.group == group]


suites: Registry[Suite] = Registry("dataset suite")


def load_suite(cfg: DataConfig) -> Suite:
    """Build the suite named by `cfg.suite`; data problems become ConfigError."""
    if cfg.suite not in suites:
        raise ConfigError(
            f"data.suite: {cfg.suite!r} is not allowed; available: {', '.join(suites.names())}"
        )
    return suites.build(cfg.suite, cfg=cfg)


# --------------------------------------------------------------------------- shared logic


def _rng(cfg: DataConfig, stream: int) -> np.random.Generator:
    return np.random.default_rng([cfg.split_seed, stream])


def split_error(source: str, labels: np.ndarray, what: str, exc: Exception) -> ConfigError:
    """The message for a stratified split that the class counts do not allow."""
    # Plain ints: numpy 2 would print `np.int64(0): np.int64(5)` for each class.
    counts = {int(k): int(v) for k, v in zip(*np.unique(labels, return_counts=True), strict=True)}
    return ConfigError(
        f"{source}: cannot split {len(labels)} images of {len(counts)} classes into {what} "
        f"stratified by class; every class needs a few images per split. "
        f"Images per class: {counts}. ({exc})"
    )


def _stratified_split(
    x: torch.Tensor, y: torch.Tensor, cfg: DataConfig, source: str
) -> tuple[Split, Split, Split]:
    n = len(y)
    # Integer sizes, so val/test hold exactly round(fraction * N) samples.
    n_test = max(1, round(cfg.test_fraction * n))
    n_val = max(1, round(cfg.val_fraction * n))
    idx = np.arange(n)
    labels = y.numpy()
    try:
        rest, test = train_test_split(
            idx, test_size=n_test, stratify=labels, random_state=cfg.split_seed
        )
        train, val = train_test_split(
            rest, test_size=n_val, stratify=labels[rest], random_state=cfg.split_seed
        )
    except ValueError as exc:
        what = (
            f"train/val/test (val_fraction={cfg.val_fraction}, test_fraction={cfg.test_fraction})"
        )
        raise split_error(source, labels, what, exc) from None

    def take(i: np.ndarray) -> Split:
        t = torch.from_numpy(np.sort(i))  # sorted indices: split content, not order, is random
        return Split(x[t].contiguous(), y[t].contiguous())

    return take(train), take(val), take(test)


def _assemble(
    name: str,
    x: torch.Tensor,
    y: torch.Tensor,
    class_names: list[str],
    ood_raw: list[tuple[str, OODGroup, torch.Tensor]],
    cfg: DataConfig,
    source: str,
) -> Suite:
    """Split raw [0, 1] images into a normalised Suite; shared by every builder.

    `y` holds labels 0..K-1, `ood_raw` (name, group, images) triples, `source` names the
    setting or path to blame in error messages.
    """
    x, y = x.float(), y.long()
    train, val, test = _stratified_split(x, y, cfg, source)

    # Statistics from ID train only, so nothing about val/test/OOD leaks into inputs.
    mean = train.x.mean(dim=(0, 2, 3), keepdim=True)
    std = train.x.std(dim=(0, 2, 3), keepdim=True)
    std = torch.where(std > 1e-8, std, torch.ones_like(std))  # constant channel: centre only

    def norm(t: torch.Tensor) -> torch.Tensor:
        return ((t - mean) / std).contiguous()

    rng = _rng(cfg, _STREAM_OOD_SPLIT)
    ood = []
    for set_name, group, images in ood_raw:
        n = len(images)
        if n < 2:
            raise ConfigError(f"{source}: OOD set {set_name!r} needs at least 2 images, has {n}")
        perm = torch.from_numpy(rng.permutation(n))
        n_val = min(max(round(cfg.ood_val_fraction * n), 1), n - 1)
        ood_val, ood_test = perm[:n_val].sort().values, perm[n_val:].sort().values
        images = images.float()
        ood.append(OODSet(set_name, group, norm(images[ood_val]), norm(images[ood_test])))

    return Suite(
        name=name,
        num_classes=len(class_names),
        input_shape=tuple(x.shape[1:]),
        class_names=list(class_names),
        train=Split(norm(train.x), train.y),
        val=Split(norm(val.x), val.y),
        test=Split(norm(test.x), test.y),
        ood=ood,
        norm_mean=mean,
        norm_std=std,
    )


# --------------------------------------------------------------------------- digits


def _compact(digits: list[int]) -> str:
    """[6, 7, 8, 9] -> "6-9"; [1, 3, 4] -> "1,3,4": runs of 3+ become ranges."""
    parts: list[str] = []
    run = [digits[0]]
    for d in [*digits[1:], None]:
        if d is not None and d == run[-1] + 1:
            run.append(d)
            continue
        parts.append(f"{run[0]}-{run[-1]}" if len(run) >= 3 else ",".join(map(str, run)))
        if d is not None:
            run = [d]
    return ",".join(parts)


def _check_known_classes(known: list[int] | None, num_all: int) -> list[int]:
    known = [0, 1, 2, 3, 4, 5] if known is None else list(known)
    problem = None
    if len(known) < 2:
        problem = "needs at least 2 classes"
    elif any(not 0 <= k < num_all for k in known):
        problem = f"every class must be in 0..{num_all - 1}"
    elif len(set(known)) != len(known):
        problem = "must not repeat a class"
    elif len(known) == num_all:
        problem = "must leave at least one class out to serve as near-OOD"
    if problem:
        raise ConfigError(f"data.known_classes: {known} is not allowed: {problem}")
    return sorted(known)


def _photo_crops(n: int, size: int, rng: np.random.Generator) -> torch.Tensor:
    """`n` random grayscale square crops (16..64 px) of sklearn's sample photos, (n,1,s,s)."""
    photos = [
        torch.from_numpy(np.asarray(Image.fromarray(img).convert("L"), dtype=np.float32) / 255.0)
        for img in load_sample_images().images
    ]
    out = torch.empty(n, 1, size, size)
    for i in range(n):
        photo = photos[rng.integers(len(photos))]
        side = int(rng.integers(16, 65))
        top = int(rng.integers(photo.shape[0] - side + 1))
        left = int(rng.integers(photo.shape[1] - side + 1))
        crop = photo[top : top + side, left : left + side]
        # Area averaging, so downsampling does not alias fine texture into noise.
        out[i] = F.adaptive_avg_pool2d(crop[None, None], size)[0]
    return out


@suites.register("digits")
def digits(*, cfg: DataConfig) -> Suite:
    """scikit-learn's 8x8 digits: known digits are ID, the rest near-OOD; photos/noise far.

    Always (1, 8, 8): `cfg.image_size` and `cfg.channels` apply to image folders only.
    """
    raw = load_digits()
    images = torch.from_numpy(raw.images.astype(np.float32) / 16.0)[:, None]
    target = torch.from_numpy(raw.target.astype(np.int64))
    known = _check_known_classes(cfg.known_classes, 10)
    held_out = [d for d in range(10) if d not in known]

    is_id = torch.isin(target, torch.tensor(known))
    relabel = torch.full((10,), -1, dtype=torch.long)
    relabel[torch.tensor(known)] = torch.arange(len(known))

    n_far = cfg.far_ood_size
    ood_raw: list[tuple[str, OODGroup, torch.Tensor]] = [
        (f"digits_{_compact(held_out)}", "near", images[~is_id]),
        ("photos", "far", _photo_crops(n_far, 8, _rng(cfg, _STREAM_PHOTOS))),
        (
            "noise",
            "far",
            torch.from_numpy(_rng(cfg, _STREAM_NOISE).random((n_far, 1, 8, 8))).float(),
        ),
    ]
    return _assemble(
        "digits",
        images[is_id],
        relabel[target[is_id]],
        [str(k) for k in known],
        ood_raw,
        cfg,
        source="data.known_classes",
    )


# --------------------------------------------------------------------------- imagefolder


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() and not p.name.startswith(".")
    )


def _subdirs(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _load_images(files: list[Path], cfg: DataConfig) -> torch.Tensor:
    mode = "L" if cfg.channels == 1 else "RGB"
    size = (cfg.image_size, cfg.image_size)
    out = np.empty((len(files), cfg.image_size, cfg.image_size, cfg.channels), np.float32)
    for i, path in enumerate(files):
        try:
            with Image.open(path) as img:
                arr = np.asarray(img.convert(mode).resize(size, Image.BILINEAR), np.float32)
        except (UnidentifiedImageError, OSError) as exc:
            raise ConfigError(f"data.root: cannot read image {path}: {exc}") from None
        out[i] = arr.reshape(*size, cfg.channels) / 255.0
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


@suites.register("imagefolder")
def imagefolder(*, cfg: DataConfig) -> Suite:
    """Images on disk: root/id/<class>/, root/ood/{near,far}/<set>/ (any depth below)."""
    if cfg.root is None:
        raise ConfigError("data.root: required for suite imagefolder")
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise ConfigError(f"data.root: {root} does not exist (or is not a folder)")
    id_dir = root / "id"
    layout = "expected root/id/<class_name>/*.png and optionally root/ood/{near,far}/<set>/"
    if not id_dir.is_dir():
        raise ConfigError(f"data.root: {root} has no id/ folder; {layout}")

    class_dirs = _subdirs(id_dir)
    if len(class_dirs) < 2:
        raise ConfigError(
            f"data.root: {id_dir} needs at least 2 class folders, found {len(class_dirs)}; {layout}"
        )
    files, labels = [], []
    for label, class_dir in enumerate(class_dirs):
        found = _image_files(class_dir)
        if not found:
            raise ConfigError(
                f"data.root: class folder {class_dir} holds no images "
                f"({', '.join(IMAGE_EXTENSIONS)})"
            )
        files += found
        labels += [label] * len(found)

    ood_raw: list[tuple[str, OODGroup, torch.Tensor]] = []
    group: OODGroup
    for group in ("near", "far"):
        for set_dir in _subdirs(root / "ood" / group):
            found = _image_files(set_dir)
            if not found:
                raise ConfigError(f"data.root: OOD folder {set_dir} holds no images")
            if any(name == set_dir.name for name, _, _ in ood_raw):
                raise ConfigError(
                    f"data.root: OOD set name {set_dir.name!r} is used in both near and far"
                )
            ood_raw.append((set_dir.name, group, _load_images(found, cfg)))

    return _assemble(
        "imagefolder",
        _load_images(files, cfg),
        torch.tensor(labels, dtype=torch.long),
        [d.name for d in class_dirs],
        ood_raw,
        cfg,
        source=f"data.root: {id_dir}",
    )


from engine import vision as _vision  # noqa: E402,F401  (adds CIFAR suites; last: imports us)
