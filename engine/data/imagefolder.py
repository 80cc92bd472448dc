"""The `imagefolder` suite: images on disk, root/id/<class>/ and root/ood/{near,far}/<set>/.

Images are resized to `data.image_size` and read as `data.channels` channels; any depth of
folders below a class or set folder is read.
"""

from __future__ import annotations

from pathlib import Path

import torch

from engine.data.suite import (
    IMAGE_EXTENSIONS,
    DataConfig,
    OODGroup,
    Suite,
    assemble,
    image_files,
    load_images,
    suites,
)
from engine.errors import ConfigError


def _subdirs(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


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
        found = image_files(class_dir)
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
            found = image_files(set_dir)
            if not found:
                raise ConfigError(f"data.root: OOD folder {set_dir} holds no images")
            if any(name == set_dir.name for name, _, _ in ood_raw):
                raise ConfigError(
                    f"data.root: OOD set name {set_dir.name!r} is used in both near and far"
                )
            ood_raw.append((set_dir.name, group, load_images(found, cfg.image_size, cfg.channels)))

    return assemble(
        "imagefolder",
        load_images(files, cfg.image_size, cfg.channels),
        torch.tensor(labels, dtype=torch.long),
        [d.name for d in class_dirs],
        ood_raw,
        cfg,
        source=f"data.root: {id_dir}",
    )
