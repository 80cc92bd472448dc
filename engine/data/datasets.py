"""Single real-image datasets for the OpenOOD suites, read (or downloaded) via torchvision.

The registry `datasets` maps a name to a loader returning a `RawDataset` (uint8 images
(N, 3, 32, 32), kept small until a suite normalises them); `load_dataset` returns float32.
The suites built from them are in `engine.data.openood`, which documents the layout
under the data root.

Nothing is downloaded unless the environment variable ``MOONSWEEP_DOWNLOAD=1`` is set (the
config has no such field). torchvision's md5 checks of the CIFAR pickles, the SVHN .mat and
the Places365 file lists run by default; ``MOONSWEEP_VERIFY_MD5=0`` reduces them to "the file
exists" (for re-packed copies, and for test fixtures, which cannot match the official md5).
A dataset absent on disk raises `DatasetNotFound` (a `ConfigError`).

torchvision.datasets is imported inside each loader: it takes ~2 s to import and only the
OpenOOD suites need it.

Example:
    >>> from engine.data.datasets import load_dataset
    >>> x, y = load_dataset("svhn", "/data")  # float32 in [0, 1], (N, 3, 32, 32)  # doctest: +SKIP
"""

from __future__ import annotations

import os
import pickle
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from engine.data.suite import DataConfig, image_files
from engine.errors import ConfigError
from engine.registry import Registry

__all__ = [
    "ENV_DATA",
    "ENV_DOWNLOAD",
    "ENV_VERIFY_MD5",
    "SIZE",
    "DatasetNotFound",
    "RawDataset",
    "data_root",
    "datasets",
    "env_flag",
    "load_dataset",
    "name_key",
]

ENV_DATA = "MOONSWEEP_DATA"
ENV_DOWNLOAD = "MOONSWEEP_DOWNLOAD"
ENV_VERIFY_MD5 = "MOONSWEEP_VERIFY_MD5"
SIZE = 32
Part = Literal["train", "test"]

# A seed stream of our own (engine.data.suite and .digits use 1..3); it is also keyed by
# the set's name, so a skipped or added OOD set never changes which images another set gets.
_STREAM_CAP = 11
_T = TypeVar("_T")


class DatasetNotFound(ConfigError):
    """A dataset's files are not on disk (an OOD set is then skipped, an ID set is fatal)."""


@dataclass
class RawDataset:
    """Images as uint8 (N, 3, 32, 32) (a quarter of float32's memory) and labels if any."""

    images: torch.Tensor
    labels: torch.Tensor | None
    classes: list[str] | None
    path: Path

    def __len__(self) -> int:
        return len(self.images)

    def as_float(self) -> torch.Tensor:
        """The images as float32 in [0, 1]."""
        return self.images.float().div_(255.0)


datasets: Registry[RawDataset] = Registry("dataset")


# --------------------------------------------------------------------------- settings


def env_flag(name: str, default: bool) -> bool:
    """An on/off environment variable (1/0, true/false, yes/no, on/off); unset: `default`."""
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"environment variable {name}={value!r}: use 1 or 0")


def data_root(cfg: DataConfig | None = None) -> Path:
    """`cfg.root`, else $MOONSWEEP_DATA, else a ConfigError saying how to set one."""
    if cfg is not None and cfg.root is not None:
        return Path(cfg.root).expanduser()
    env = os.environ.get(ENV_DATA, "").strip()
    if env:
        return Path(env).expanduser()
    suite = f" for suite {cfg.suite}" if cfg is not None else ""
    raise ConfigError(
        f"data.root: required{suite}; set data.root or the environment variable {ENV_DATA} "
        "to the folder that holds the datasets"
    )


# --------------------------------------------------------------------------- shared helpers


def name_key(name: str) -> int:
    """A stable integer for a dataset name, to key its own random stream by."""
    return zlib.crc32(name.encode())


def _pick(n: int, limit: int | None, seed: int, name: str) -> np.ndarray | None:
    """Sorted indices of a seeded subsample of `limit` out of `n`, or None to keep all."""
    if limit is None or n <= limit:
        return None
    rng = np.random.default_rng([seed, _STREAM_CAP, name_key(name)])
    return np.sort(rng.choice(n, size=limit, replace=False))


def _not_found(what: str, path: Path, hint: str) -> DatasetNotFound:
    return DatasetNotFound(
        f"data.root: {what} not found in {path} (download it once with {ENV_DOWNLOAD}=1 or {hint})"
    )


def _open(what: str, path: Path, make: Callable[[], _T], *, md5: bool, download: bool) -> _T:
    """Build a torchvision dataset, turning its errors into ConfigErrors naming `path`.

    `md5`: torchvision checks md5 sums here, so (the files being known to exist) its
    RuntimeError means a mismatch.
    """
    doing = "download or read" if download else "read"
    try:
        return make()
    except ConfigError:
        raise
    except RuntimeError as exc:
        if md5 and not download:
            raise ConfigError(
                f"data.root: {what} in {path} fails torchvision's md5 check: the files are "
                "corrupted or not the official release; re-download them, or set "
                f"{ENV_VERIFY_MD5}=0 to check only that they exist"
            ) from None
        raise ConfigError(f"data.root: cannot {doing} {what} in {path}: {exc}") from None
    except ModuleNotFoundError as exc:
        raise ConfigError(f"{what} needs the package {exc.name!r}: pip install it") from None
    except (OSError, ValueError, KeyError, TypeError, EOFError, AssertionError) as exc:
        raise ConfigError(f"data.root: cannot {doing} {what} in {path}: {exc!r}") from None
    except pickle.UnpicklingError as exc:
        raise ConfigError(f"data.root: cannot {doing} {what} in {path}: {exc}") from None


def _read_small(path: str | Path) -> np.ndarray:
    """One image file as uint8 (32, 32, 3); a torchvision `loader`."""
    try:
        with Image.open(path) as img:
            # JPEG only: decode at 1/2..1/8 scale (still >= 32 px), far faster for 256 px Places.
            img.draft("RGB", (SIZE, SIZE))
            small = img.convert("RGB").resize((SIZE, SIZE), Image.Resampling.BILINEAR)
            return np.asarray(small, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as exc:
        raise ConfigError(f"data.root: cannot read image {path}: {exc}") from None


def _parallel(fn: Callable[[Any], _T], items: Sequence[Any]) -> list[_T]:
    """`fn` over `items` in threads, results in order: PIL decodes outside the GIL."""
    workers = min(8, os.cpu_count() or 1)
    if workers == 1 or len(items) < 64:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, items))


def _stack(arrays: list[np.ndarray]) -> torch.Tensor:
    out = np.stack(arrays) if arrays else np.empty((0, SIZE, SIZE, 3), np.uint8)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def _resize_u8(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) -> uint8 (N, C, 32, 32), in chunks so float copies stay small."""
    if images.shape[-2:] == (SIZE, SIZE):
        return images
    out = torch.empty((*images.shape[:2], SIZE, SIZE), dtype=torch.uint8)
    for start in range(0, len(images), 4096):
        chunk = images[start : start + 4096].float()
        chunk = F.interpolate(chunk, size=(SIZE, SIZE), mode="bilinear", antialias=True)
        out[start : start + 4096] = chunk.round_().clamp_(0, 255).to(torch.uint8)
    return out


def _subset(raw: RawDataset, keep: np.ndarray | None) -> RawDataset:
    if keep is None:
        return raw
    t = torch.from_numpy(keep)
    labels = None if raw.labels is None else raw.labels[t].contiguous()
    return RawDataset(raw.images[t].contiguous(), labels, raw.classes, raw.path)


def _only_test(name: str, part: str) -> None:
    if part != "test":
        raise ValueError(f"dataset {name!r} is an OOD set: only part='test' is available")


# --------------------------------------------------------------------------- loaders


@dataclass(frozen=True)
class Request:
    """What a dataset loader is asked for; `datasets.build(name, root=..., part=...)` makes
    one from its keywords, so every loader has the same options in one place."""

    root: Path
    part: Part = "test"
    download: bool = False
    verify: bool = True  # md5-check the files where torchvision knows their sums
    limit: int | None = None  # keep a seeded subsample of at most this many images
    seed: int = 0

    def pick(self, n: int, name: str) -> np.ndarray | None:
        """The indices of the seeded subsample of `n` images (None: keep all)."""
        return _pick(n, self.limit, self.seed, name)


Loader = Callable[[Request], RawDataset]


def dataset(name: str) -> Callable[[Loader], Loader]:
    """Register `loader(request) -> RawDataset` in `datasets` under `name`:

        @dataset("ones")
        def ones(req: Request) -> RawDataset:
            return RawDataset(torch.ones(2, 3, 32, 32, dtype=torch.uint8), None, None, req.root)

    then `datasets.build("ones", root="/data", part="test")` calls it with a Request.
    """

    def add(loader: Loader) -> Loader:
        def build(root: str | Path, **options: Any) -> RawDataset:
            return loader(Request(Path(root), **options))

        build.__doc__ = loader.__doc__
        datasets.register(name)(build)
        return loader

    return add


def _cifar(
    base: Any, what: str, root: Path, part: Part, download: bool, verify: bool
) -> RawDataset:
    folder = root / base.base_folder
    files = [f for f, _ in base.train_list + base.test_list] + [base.meta["filename"]]
    missing = [f for f in files if not (folder / f).is_file()]
    if missing and not download:
        raise _not_found(
            what, folder, f"place the python pickles there; missing: {', '.join(missing)}"
        )
    cls = base
    if not verify:
        # md5 None makes torchvision's check_integrity test only that each file exists.
        no_md5 = {
            "train_list": [[f, None] for f, _ in base.train_list],
            "test_list": [[f, None] for f, _ in base.test_list],
            "meta": {**base.meta, "md5": None},
        }
        cls = type(base.__name__, (base,), no_md5)
    ds = _open(
        what,
        folder,
        lambda: cls(str(root), train=part == "train", download=download),
        md5=verify,
        download=download,
    )
    # torchvision holds (N, 3, 32, 32) memory seen as NHWC: permuting back copies nothing.
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
    labels = torch.as_tensor(ds.targets, dtype=torch.int64)
    classes = [str(c) for c in ds.classes]
    if len(labels) != len(images) or (len(labels) and not 0 <= int(labels.min())):
        raise ConfigError(f"data.root: {what} in {folder} has malformed labels")
    if len(labels) and int(labels.max()) >= len(classes):
        raise ConfigError(
            f"data.root: {what} in {folder} has label {int(labels.max())} but only "
            f"{len(classes)} class names in {base.meta['filename']}"
        )
    return RawDataset(images, labels, classes, folder)


@dataset("cifar10")
def cifar10(req: Request) -> RawDataset:
    """CIFAR-10 via torchvision.datasets.CIFAR10: train 50,000 or test 10,000 images."""
    from torchvision.datasets import CIFAR10  # lazy: see the module docstring

    raw = _cifar(CIFAR10, "CIFAR-10", req.root, req.part, req.download, req.verify)
    return _subset(raw, req.pick(len(raw), "cifar10"))


@dataset("cifar100")
def cifar100(req: Request) -> RawDataset:
    """CIFAR-100 (fine labels) via torchvision.datasets.CIFAR100."""
    from torchvision.datasets import CIFAR100  # lazy: see the module docstring

    raw = _cifar(CIFAR100, "CIFAR-100", req.root, req.part, req.download, req.verify)
    return _subset(raw, req.pick(len(raw), "cifar100"))


@dataset("svhn")
def svhn(req: Request) -> RawDataset:
    """SVHN cropped digits (<root>/svhn/<part>_32x32.mat) via torchvision.datasets.SVHN."""
    from torchvision.datasets import SVHN  # lazy: see the module docstring

    folder = req.root / "svhn"
    _, filename, _ = SVHN.split_list[req.part]
    if not (folder / filename).is_file() and not req.download:
        raise _not_found("SVHN", folder, f"place {filename} there")
    cls = SVHN
    if not req.verify:
        split_list = {k: [u, f, None] for k, (u, f, _) in SVHN.split_list.items()}
        cls = type("SVHN", (SVHN,), {"split_list": split_list})
    ds = _open(
        "SVHN",
        folder,
        lambda: cls(str(folder), split=req.part, download=req.download),
        md5=req.verify,
        download=req.download,
    )
    images = torch.from_numpy(np.ascontiguousarray(ds.data))  # torchvision made it (N, 3, H, W)
    if images.ndim != 4 or images.shape[1] != 3:
        raise ConfigError(f"data.root: SVHN {folder / filename}: X must be (H, W, 3, N)")
    labels = torch.from_numpy(np.asarray(ds.labels, dtype=np.int64).reshape(-1))
    raw = RawDataset(images, labels, [str(d) for d in range(10)], folder)
    return _subset(raw, req.pick(len(raw), "svhn"))


@dataset("mnist")
def mnist(req: Request) -> RawDataset:
    """MNIST idx files via torchvision.datasets.MNIST, resized to 32x32, grey -> 3 channels.

    `verify` does not apply: torchvision checks MNIST's raw files for existence only.
    """
    from torchvision.datasets import MNIST  # lazy: see the module docstring

    prefix = "train" if req.part == "train" else "t10k"
    needed = [f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"]

    # Named MNIST because torchvision derives the folder from the class name; checks only
    # the part asked for, where torchvision wants train and test files both on disk.
    def check_exists(self: Any) -> bool:
        return all(os.path.isfile(os.path.join(self.raw_folder, f)) for f in needed)

    cls = type("MNIST", (MNIST,), {"_check_exists": check_exists})
    folder = req.root / "MNIST" / "raw"
    # torchvision still reads the old processed/{training,test}.pt when both exist.
    legacy = all((folder.parent / "processed" / f).is_file() for f in ("training.pt", "test.pt"))
    missing = [f for f in needed if not (folder / f).is_file()]
    if missing and not legacy and not req.download:
        hint = f"place the idx files there; missing: {', '.join(missing)}"
        raise _not_found("MNIST", folder, hint)
    ds = _open(
        "MNIST",
        folder,
        lambda: cls(str(req.root), train=req.part == "train", download=req.download),
        md5=False,  # torchvision has no md5 for the extracted MNIST files
        download=req.download,
    )
    data = torch.as_tensor(ds.data, dtype=torch.uint8)
    if data.ndim != 3:
        raise ConfigError(f"data.root: MNIST in {folder}: images must be (N, H, W)")
    keep = req.pick(len(data), "mnist")
    labels = torch.as_tensor(ds.targets, dtype=torch.int64)
    if keep is not None:  # before resizing: only kept images are resized
        data, labels = data[torch.from_numpy(keep)], labels[torch.from_numpy(keep)]
    images = _resize_u8(data[:, None]).expand(-1, 3, -1, -1).contiguous()
    return RawDataset(images, labels, [str(d) for d in range(10)], folder)


@dataset("textures")
def textures(req: Request) -> RawDataset:
    """DTD via torchvision.datasets.DTD: train+val+test of partition 1, i.e. every image."""
    from torchvision.datasets import DTD  # lazy: see the module docstring

    _only_test("textures", req.part)
    folder = req.root / "dtd" / "dtd"
    lists = [folder / "labels" / f"{s}1.txt" for s in ("train", "val", "test")]
    if not (folder / "images").is_dir() or not all(p.is_file() for p in lists):
        if not req.download:
            raise _not_found("Textures (DTD)", folder, "place images/ and labels/ there")
    splits = [
        _open(
            "Textures (DTD)",
            folder,
            lambda s=s: DTD(str(req.root), split=s, download=req.download, loader=_read_small),
            md5=False,  # torchvision has no md5 for the extracted DTD files
            download=req.download,
        )
        for s in ("train", "val", "test")
    ]
    classes = sorted({c for ds in splits for c in ds.classes})
    items = [(ds, i) for ds in splits for i in range(len(ds))]
    keep = req.pick(len(items), "textures")
    if keep is not None:
        items = [items[i] for i in keep]
    # Decoding only the kept images is what makes `limit` save time.
    loaded = _parallel(lambda item: item[0][item[1]], items)
    labels = [classes.index(ds.classes[y]) for (ds, _), (_, y) in zip(items, loaded, strict=True)]
    images = _stack([image for image, _ in loaded])
    return RawDataset(images, torch.tensor(labels, dtype=torch.int64), classes, folder)


@dataset("places365")
def places365(req: Request) -> RawDataset:
    """Places365 small (256 px) val images via torchvision.datasets.Places365."""
    from torchvision.datasets import Places365  # lazy: see the module docstring

    _only_test("places365", req.part)
    folder = req.root / "places365"
    needed = [Places365._CATEGORIES_META[0], Places365._FILE_LIST_META["val"][0], "val_256"]
    missing = [f for f in needed if not (folder / f).exists()]
    if missing and not req.download:
        hint = f"place the small (256 px) val images there; missing: {', '.join(missing)}"
        raise _not_found("Places365", folder, hint)
    cls = Places365
    if not req.verify:
        # torchvision md5-checks the two devkit text files; None checks that they exist.
        no_md5 = {
            "_CATEGORIES_META": (Places365._CATEGORIES_META[0], None),
            "_FILE_LIST_META": {k: (f, None) for k, (f, _) in Places365._FILE_LIST_META.items()},
        }
        cls = type("Places365", (Places365,), no_md5)
    ds = _open(
        "Places365",
        folder,
        lambda: cls(
            str(folder), split="val", small=True, download=req.download, loader=_read_small
        ),
        md5=req.verify,
        download=req.download,
    )
    keep = req.pick(len(ds), "places365")
    indices = list(range(len(ds))) if keep is None else keep.tolist()
    loaded = _parallel(ds.__getitem__, indices)
    labels = torch.tensor([-1 if y is None else y for _, y in loaded], dtype=torch.int64)
    return RawDataset(_stack([image for image, _ in loaded]), labels, ds.classes, folder)


@dataset("tinyimagenet")
def tinyimagenet(req: Request) -> RawDataset:
    """TinyImageNet val (else test) images, any layout below; torchvision has no class for it.

    Unlabelled here: only ever an OOD set. `download` and `verify` do not apply.
    """
    _only_test("tinyimagenet", req.part)
    base = req.root / "tiny-imagenet-200"
    folders = [base / "val", base / "test"]
    found = next(((d, f) for d in folders if d.is_dir() and (f := image_files(d))), None)
    if found is None:
        raise DatasetNotFound(
            f"data.root: TinyImageNet not found in {folders[0]} (nor {folders[1].name}/): "
            "place tiny-imagenet-200 there, any images below val/ or test/ (it cannot be "
            "downloaded through torchvision)"
        )
    folder, files = found
    keep = req.pick(len(files), "tinyimagenet")
    if keep is not None:
        files = [files[i] for i in keep]
    return RawDataset(_stack(_parallel(_read_small, files)), None, None, folder)


def load_dataset(
    name: str,
    root: str | Path | None = None,
    *,
    part: Part = "test",
    download: bool | None = None,
    verify: bool | None = None,
    limit: int | None = None,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One dataset as float32 (N, 3, 32, 32) in [0, 1] and int64 labels (None if unlabelled).

    `root` None means $MOONSWEEP_DATA; `download`/`verify` None mean the environment's
    MOONSWEEP_DOWNLOAD (off) and MOONSWEEP_VERIFY_MD5 (on); `limit` keeps a seeded subsample.
    """
    raw = datasets.build(
        name,
        root=Path(root).expanduser() if root is not None else data_root(),
        part=part,
        download=env_flag(ENV_DOWNLOAD, False) if download is None else download,
        verify=env_flag(ENV_VERIFY_MD5, True) if verify is None else verify,
        limit=limit,
        seed=seed,
    )
    return raw.as_float(), raw.labels
