"""Real-image OOD suites after OpenOOD: CIFAR-10 / CIFAR-100 against six OOD sets.

Two suites are registered in `engine.data.suites` when `engine.data` is imported; their
datasets are read by `engine.data.datasets`:

* ``cifar10-ood``:  ID CIFAR-10 (K=10);  near CIFAR-100, TinyImageNet;
  far MNIST, SVHN, Textures (DTD), Places365.
* ``cifar100-ood``: ID CIFAR-100 (K=100); near CIFAR-10, TinyImageNet; far the same four.

Every image is (3, 32, 32); ``data.image_size``, ``data.channels``, ``data.known_classes``,
``data.test_fraction`` and ``data.far_ood_size`` do not apply. The official train part is
split into train/val by ``data.val_fraction`` (stratified, ``data.split_seed``); the official
test part is the ID test split as is. Each OOD set is used whole up to `OOD_CAP` images (a
seeded subsample beyond, to bound memory) and split into val/test by ``data.ood_val_fraction``.
Everything is normalised with the ID-train channel mean/std. OpenOOD's removal of images
that overlap ID classes (e.g. in TinyImageNet) is not done.

Layout under the data root (``data.root``, else the environment variable ``MOONSWEEP_DATA``)
is what torchvision writes itself, so ``download=True`` and hand-placed files agree::

    cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}   CIFAR10(root)
    cifar-100-python/{train,test,meta}                              CIFAR100(root)
    svhn/test_32x32.mat                                             SVHN(root/svhn)
    MNIST/raw/t10k-{images-idx3,labels-idx1}-ubyte                  MNIST(root)
    dtd/dtd/{images/<class>/*.jpg,labels/{train,val,test}1.txt}     DTD(root), all 3 splits
    places365/{categories_places365.txt,places365_val.txt,val_256/} Places365(root/places365)
    tiny-imagenet-200/val/ (else test/): any images below            (no torchvision class)

Downloads (``MOONSWEEP_DOWNLOAD=1``) and md5 checks (``MOONSWEEP_VERIFY_MD5``) are as in
`engine.data.datasets`. An absent ID dataset is a `ConfigError`; an absent OOD set is skipped
with a `MissingOODWarning`, as long as at least one OOD set is left.

Example:
    >>> import os
    >>> from engine.data import DataConfig, load_suite
    >>> os.environ["MOONSWEEP_DATA"] = "/data"  # doctest: +SKIP
    >>> suite = load_suite(DataConfig(suite="cifar10-ood"))  # doctest: +SKIP
    >>> suite.num_classes, suite.input_shape, [o.name for o in suite.ood]  # doctest: +SKIP
    (10, (3, 32, 32), ['cifar100', 'tinyimagenet', 'mnist', 'svhn', 'textures', 'places365'])
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch

from engine.data.datasets import (
    ENV_DOWNLOAD,
    ENV_VERIFY_MD5,
    SIZE,
    DatasetNotFound,
    RawDataset,
    data_root,
    datasets,
    env_flag,
    name_key,
)
from engine.data.suite import (
    STREAM_OOD_SPLIT,
    DataConfig,
    OODGroup,
    OODSet,
    Split,
    Suite,
    channel_stats,
    ood_val_test,
    split_rng,
    suites,
    train_val_indices,
)
from engine.errors import ConfigError

__all__ = ["OOD_CAP", "PROTOCOLS", "MissingOODWarning"]

OOD_CAP = 10_000  # per OOD set: Places365 val alone is 36,500 images


class MissingOODWarning(UserWarning):
    """An OOD set of a suite is absent on disk and left out of the run."""


FAR = ("mnist", "svhn", "textures", "places365")
PROTOCOLS: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    # suite: (ID dataset, near-OOD sets, far-OOD sets), as in OpenOOD v1.5
    "cifar10-ood": ("cifar10", ("cifar100", "tinyimagenet"), FAR),
    "cifar100-ood": ("cifar100", ("cifar10", "tinyimagenet"), FAR),
}


def _build(suite: str, cfg: DataConfig) -> Suite:
    id_name, near, far = PROTOCOLS[suite]
    root = data_root(cfg)
    download = env_flag(ENV_DOWNLOAD, False)
    verify = env_flag(ENV_VERIFY_MD5, True)
    opts: dict[str, Any] = {"root": root, "download": download, "verify": verify}

    train_raw = datasets.build(id_name, part="train", **opts)
    test_raw = datasets.build(id_name, part="test", **opts)
    assert train_raw.labels is not None and test_raw.labels is not None  # CIFAR is labelled
    classes = train_raw.classes or []
    source = f"data.root: {train_raw.path}"
    train_idx, val_idx = train_val_indices(train_raw.labels, cfg, source)

    t = torch.from_numpy(train_idx)
    train_x = train_raw.images[t].float().div_(255.0)
    mean, std = channel_stats(train_x)
    train_x.sub_(mean).div_(std)

    def norm(u8: torch.Tensor) -> torch.Tensor:
        return u8.float().div_(255.0).sub_(mean).div_(std).contiguous()  # one float copy

    v = torch.from_numpy(val_idx)
    train = Split(train_x, train_raw.labels[t].contiguous())
    val = Split(norm(train_raw.images[v]), train_raw.labels[v].contiguous())
    del train_raw  # the uint8 train part is no longer needed: free it before the OOD sets
    test = Split(norm(test_raw.images), test_raw.labels.contiguous())

    ood: list[OODSet] = []
    skipped: list[str] = []
    group: OODGroup
    for group, names in (("near", near), ("far", far)):
        for name in names:
            try:
                # Loaders reading files one by one decode only the `limit` images they keep.
                raw = datasets.build(name, part="test", limit=OOD_CAP, seed=cfg.split_seed, **opts)
            except DatasetNotFound as exc:
                skipped.append(str(exc))
                warnings.warn(
                    f"{suite}: OOD set {name!r} skipped: {exc}", MissingOODWarning, stacklevel=3
                )
                continue
            ood.append(_ood_set(name, group, raw, cfg, norm))
    if not ood:
        raise ConfigError(
            f"data.root: {suite} needs at least one OOD set, found none: " + "; ".join(skipped)
        )
    return Suite(
        name=suite,
        num_classes=len(classes),
        input_shape=(3, SIZE, SIZE),
        class_names=classes,
        train=train,
        val=val,
        test=test,
        ood=ood,
        norm_mean=mean,
        norm_std=std,
    )


def _ood_set(
    name: str,
    group: OODGroup,
    raw: RawDataset,
    cfg: DataConfig,
    norm: Callable[[torch.Tensor], torch.Tensor],
) -> OODSet:
    n = len(raw)
    if n < 2:
        raise ConfigError(f"data.root: OOD set {name!r} in {raw.path} needs at least 2 images")
    rng = split_rng(cfg, STREAM_OOD_SPLIT, name_key(name))
    val_idx, test_idx = ood_val_test(n, cfg, rng)
    return OODSet(name, group, norm(raw.images[val_idx]), norm(raw.images[test_idx]))


@suites.register("cifar10-ood")
def cifar10_ood(*, cfg: DataConfig) -> Suite:
    """OpenOOD CIFAR-10 benchmark: see the module docstring for layout and rules."""
    return _build("cifar10-ood", cfg)


@suites.register("cifar100-ood")
def cifar100_ood(*, cfg: DataConfig) -> Suite:
    """OpenOOD CIFAR-100 benchmark: see the module docstring for layout and rules."""
    return _build("cifar100-ood", cfg)
