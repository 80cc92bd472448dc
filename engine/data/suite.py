"""Suite assembly: the data section of a config, the suite types, the registry, shared helpers.

A *suite* is everything one run needs: ID train/val/test splits and a list of OOD
sets (each with its own val/test part), all normalised with the ID-train statistics.
Suites are registered builders in `suites`; each source module of this package
(`digits`, `imagefolder`, `openood`) registers its own. A new one is a decorated
function that loads raw tensors in [0, 1] and hands them to `assemble`, which does the
splitting and normalisation for every suite in the same way.

`DataConfig`, the `data:` section of a training config, lives here rather than in
`engine.config` because every builder reads it and `engine.config` validates against
`suites`: this way imports run one way (config -> data).

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
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field
from sklearn.model_selection import train_test_split

from engine.errors import ConfigError
from engine.pipeline import augments
from engine.registry import Registry, registered_name

__all__ = [
    "IMAGE_EXTENSIONS",
    "STREAM_OOD_SPLIT",
    "DataConfig",
    "OODGroup",
    "OODSet",
    "Split",
    "Suite",
    "assemble",
    "channel_stats",
    "image_files",
    "load_images",
    "load_suite",
    "ood_val_test",
    "split_error",
    "split_rng",
    "stratified_split",
    "suites",
    "train_val_indices",
]

OODGroup = Literal["near", "far"]
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")

# Independent random streams per purpose, so e.g. changing far_ood_size never moves the
# ID split and adding an OOD set never reshuffles the others. 1 and 2 are the digits
# suite's far-OOD sets (engine.data.digits); other modules pick numbers of their own.
STREAM_OOD_SPLIT = 3


class DataConfig(BaseModel):
    """The `data:` section of a training config: which suite, and how it is split."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    suite: str = "digits"
    root: str | None = None
    known_classes: list[int] | None = None
    val_fraction: float = Field(0.2, gt=0, lt=0.5)
    test_fraction: float = Field(0.2, gt=0, lt=0.5)
    ood_val_fraction: float = Field(0.5, gt=0, lt=1)
    split_seed: int = Field(0, ge=0)
    image_size: int = Field(32, ge=4, le=1024)
    channels: Literal[1, 3] = 3
    far_ood_size: int = Field(360, ge=10)
    # Training-time augmentation, on the device (engine/pipeline.py): a name registered in
    # `engine.pipeline.augments` (none, or crop_flip: a random crop from the image
    # zero-padded by 4 pixels plus a random horizontal flip).
    augment: registered_name(augments) = "none"  # type: ignore[valid-type]


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


def split_rng(cfg: DataConfig, *stream: int) -> np.random.Generator:
    """The generator of one purpose (`stream`, see STREAM_OOD_SPLIT), seeded by split_seed."""
    return np.random.default_rng([cfg.split_seed, *stream])


def split_error(source: str, labels: np.ndarray, what: str, exc: Exception) -> ConfigError:
    """The message for a stratified split that the class counts do not allow."""
    # Plain ints: numpy 2 would print `np.int64(0): np.int64(5)` for each class.
    counts = {int(k): int(v) for k, v in zip(*np.unique(labels, return_counts=True), strict=True)}
    return ConfigError(
        f"{source}: cannot split {len(labels)} images of {len(counts)} classes into {what} "
        f"stratified by class; every class needs a few images per split. "
        f"Images per class: {counts}. ({exc})"
    )


def stratified_split(
    x: torch.Tensor, y: torch.Tensor, cfg: DataConfig, source: str
) -> tuple[Split, Split, Split]:
    """Train/val/test splits stratified by class, sized by cfg's val and test fractions."""
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


def train_val_indices(
    y: torch.Tensor, cfg: DataConfig, source: str
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted train and val indices of `y`, stratified by class, val sized by cfg.val_fraction.

    For suites whose test part is given (an official test split): only train/val is drawn.
    """
    n = len(y)
    n_val = max(1, round(cfg.val_fraction * n))
    labels = y.numpy()
    try:
        train, val = train_test_split(
            np.arange(n), test_size=n_val, stratify=labels, random_state=cfg.split_seed
        )
    except ValueError as exc:
        what = f"train/val (val_fraction={cfg.val_fraction})"
        raise split_error(source, labels, what, exc) from None
    return np.sort(train), np.sort(val)  # sorted: split content, not order, is random


def channel_stats(train_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (1, C, 1, 1) mean and std of the ID training images, to normalise with.

    From ID train only, so nothing about val/test/OOD leaks into the inputs.
    """
    mean = train_x.mean(dim=(0, 2, 3), keepdim=True)
    std = train_x.std(dim=(0, 2, 3), keepdim=True)
    std = torch.where(std > 1e-8, std, torch.ones_like(std))  # constant channel: centre only
    return mean, std


def ood_val_test(
    n: int, cfg: DataConfig, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted val and test indices of an OOD set of `n` images (n >= 2), val by ood_val_fraction."""
    perm = torch.from_numpy(rng.permutation(n))
    n_val = min(max(round(cfg.ood_val_fraction * n), 1), n - 1)
    return perm[:n_val].sort().values, perm[n_val:].sort().values


def assemble(
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
    train, val, test = stratified_split(x, y, cfg, source)
    mean, std = channel_stats(train.x)

    def norm(t: torch.Tensor) -> torch.Tensor:
        return ((t - mean) / std).contiguous()

    rng = split_rng(cfg, STREAM_OOD_SPLIT)
    ood = []
    for set_name, group, images in ood_raw:
        n = len(images)
        if n < 2:
            raise ConfigError(f"{source}: OOD set {set_name!r} needs at least 2 images, has {n}")
        ood_val, ood_test = ood_val_test(n, cfg, rng)
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


# --------------------------------------------------------------------------- image files


def image_files(folder: Path) -> list[Path]:
    """Every image file below `folder` (any depth, hidden files left out), sorted."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() and not p.name.startswith(".")
    )


def load_images(files: list[Path], image_size: int, channels: int) -> torch.Tensor:
    """Image files as float32 (N, channels, size, size) in [0, 1], resized bilinearly."""
    mode = "L" if channels == 1 else "RGB"
    size = (image_size, image_size)
    out = np.empty((len(files), image_size, image_size, channels), np.float32)
    for i, path in enumerate(files):
        try:
            with Image.open(path) as img:
                arr = np.asarray(img.convert(mode).resize(size, Image.BILINEAR), np.float32)
        except (UnidentifiedImageError, OSError) as exc:
            raise ConfigError(f"data.root: cannot read image {path}: {exc}") from None
        out[i] = arr.reshape(*size, channels) / 255.0
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()
