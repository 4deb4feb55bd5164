"""Datasets with one interface: the synthetic domains, and Cityscapes, GTA5, SYNTHIA on disk.

Every dataset returns ``(image, label)``, or ``(image, label, instances)`` when built with
``instances=True``: ``image`` a float32 ``(3, H, W)`` tensor in [0, 1], ``label`` a long
``(H, W)`` tensor of Cityscapes trainIds with 255 = ignore, ``instances`` a long ``(H, W)``
tensor (0: no instance). All are plain picklable objects, so ``DataLoader`` workers work.

:func:`open_dataset` takes the names the CLI uses: a synthetic domain (``real``), or
``cityscapes:PATH``, ``gta5:PATH``, ``synthia:PATH``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from lwmm_lab.data import labels as L
from lwmm_lab.data.domains import DOMAIN_CLASSES, DOMAINS, check_domain, generate
from lwmm_lab.errors import (
    LwmmError,
    check_count,
    check_image_size,
    check_name,
    check_seed,
    did_you_mean,
    name_list,
)
from lwmm_lab.files import sha256, stand_in

#: Default number of images per split of a synthetic domain.
DEFAULT_SIZES = {"train": 2000, "val": 100, "test": 100}

Sample = tuple[torch.Tensor, ...]

#: How far (a fraction of each side) a label may be from its image's size and still be read:
#: some GTA5 labels are a few pixels off their image.
SIZE_TOLERANCE = 0.05


def _to_tensors(image: np.ndarray, label: np.ndarray, instances: np.ndarray | None) -> Sample:
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255)
    y = torch.from_numpy(label.astype(np.int64))
    if instances is None:
        return x, y
    return x, y, torch.from_numpy(instances.astype(np.int64))


class SyntheticScenes(Dataset):
    """The procedural street scenes of one domain and split, generated on the fly.

    ``size`` images (default :data:`DEFAULT_SIZES`), at ``resolution`` = (height, width);
    image ``i`` is the same on every machine for a given ``seed``.
    """

    def __init__(
        self,
        domain: str,
        split: str = "train",
        size: int | None = None,
        resolution: tuple[int, int] = (128, 256),
        seed: int = 0,
        instances: bool = False,
    ) -> None:
        check_domain(domain)
        check_name(split, DEFAULT_SIZES, "split")
        self.domain, self.split, self.seed = domain, split, check_seed(seed)
        self.size = DEFAULT_SIZES[split] if size is None else check_count("images", size)
        self.resolution = check_image_size(resolution)
        self.instances = instances
        self.classes = DOMAIN_CLASSES[domain]

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < self.size:  # an IndexError: iteration by index stops on it
            raise IndexError(f"scene {index} is outside 0..{self.size - 1} of {self!r}")
        scene = generate(self.domain, self.split, index, self.seed, self.resolution)
        return _to_tensors(scene.image, scene.label, scene.instances if self.instances else None)

    def __repr__(self) -> str:
        return (
            f"SyntheticScenes({self.domain!r}, {self.split!r}, size={self.size}, "
            f"resolution={self.resolution})"
        )


class FolderDataset(Dataset):
    """Image/label file pairs read from disk; ``read_label`` gives a label file's trainIds.

    With ``resolution`` images are resized (area) and labels (nearest) to (height, width).
    """

    def __init__(
        self,
        pairs: list[tuple[Path, Path]],
        read_label: Callable[[Path], np.ndarray],
        classes: tuple[int, ...],
        resolution: tuple[int, int] | None = None,
        instance_files: list[Path] | None = None,
    ) -> None:
        self.pairs = pairs
        self.read_label = read_label
        self.classes = classes
        self.resolution = None if resolution is None else check_image_size(resolution)
        self.instance_files = instance_files
        self.instances = instance_files is not None

    def __len__(self) -> int:
        return len(self.pairs)

    def files(self, count: int) -> list[Path]:
        """The files the first ``count`` samples are read from: image, label (, instances)."""
        files = [f for pair in self.pairs[:count] for f in pair]
        return files + (self.instance_files or [])[:count]

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < len(self.pairs):  # an IndexError, as iteration by index expects
            raise IndexError(f"image {index} is outside 0..{len(self.pairs) - 1} of the dataset")
        image_path, label_path = self.pairs[index]
        image = _read_image(image_path)
        label = _fit_to_image(self.read_label(label_path), image, label_path, "label")
        instances = None
        if self.instance_files is not None:
            path = self.instance_files[index]
            instances = _fit_to_image(_cityscapes_instances(path), image, path, "instance map")
        if self.resolution is not None:
            h, w = self.resolution
            image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
            label = cv2.resize(label, (w, h), interpolation=cv2.INTER_NEAREST)
            if instances is not None:
                instances = cv2.resize(instances, (w, h), interpolation=cv2.INTER_NEAREST)
        return _to_tensors(image, label, instances)


def cityscapes(
    root: str | os.PathLike,
    split: str = "val",
    resolution: tuple[int, int] | None = None,
    instances: bool = False,
) -> FolderDataset:
    """Cityscapes: ``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` with ``gtFine`` labelIds."""
    root = _root(root, "Cityscapes")
    images_dir = _subdir(
        root, f"leftImg8bit/{split}", "leftImg8bit/<split>/<city>/*_leftImg8bit.png"
    )
    labels_dir = _subdir(root, f"gtFine/{split}", "gtFine/<split>/<city>/*_gtFine_labelIds.png")
    images = sorted(images_dir.glob("*/*_leftImg8bit.png"))
    pairs, instance_files = [], []
    for image in images:
        stem = image.name.removesuffix("_leftImg8bit.png")
        label = labels_dir / image.parent.name / f"{stem}_gtFine_labelIds.png"
        pairs.append((image, _required(label, image)))
        if instances:
            instance_files.append(
                _required(label.with_name(f"{stem}_gtFine_instanceIds.png"), image)
            )
    _nonempty(pairs, images_dir, "*/*_leftImg8bit.png")
    return FolderDataset(
        pairs,
        _TableLabel(L.CITYSCAPES_TO_TRAIN),
        L.CLASS_SETS["cityscapes-19"],
        resolution,
        instance_files if instances else None,
    )


def gta5(root: str | os.PathLike, resolution: tuple[int, int] | None = None) -> FolderDataset:
    """GTA5: ``images/*.png`` with ``labels/*.png`` holding Cityscapes label ids."""
    root = _root(root, "GTA5")
    images_dir = _subdir(root, "images", "images/*.png")
    labels_dir = _subdir(root, "labels", "labels/*.png")
    pairs = [(p, _required(labels_dir / p.name, p)) for p in sorted(images_dir.glob("*.png"))]
    _nonempty(pairs, images_dir, "*.png")
    return FolderDataset(
        pairs, _TableLabel(L.CITYSCAPES_TO_TRAIN), L.CLASS_SETS["cityscapes-19"], resolution
    )


def synthia(root: str | os.PathLike, resolution: tuple[int, int] | None = None) -> FolderDataset:
    """SYNTHIA-RAND-CITYSCAPES: ``RGB/*.png`` with ``GT/LABELS/*.png`` (16-bit, class in R)."""
    root = _root(root, "SYNTHIA")
    images_dir = _subdir(root, "RGB", "RGB/*.png")
    labels_dir = _subdir(
        root, "GT/LABELS", "GT/LABELS/*.png (16-bit, class id in the first channel)"
    )
    pairs = [(p, _required(labels_dir / p.name, p)) for p in sorted(images_dir.glob("*.png"))]
    _nonempty(pairs, images_dir, "*.png")
    return FolderDataset(pairs, _synthia_label, L.CLASS_SETS["synthia-16"], resolution)


_READERS = {"cityscapes": cityscapes, "gta5": gta5, "synthia": synthia}
_TITLES = {"cityscapes": "Cityscapes", "gta5": "GTA5", "synthia": "SYNTHIA"}
#: How the names of datasets on disk are written, for messages and help texts.
ON_DISK = "cityscapes:PATH, gta5:PATH or synthia:PATH"


def on_disk(name: str) -> bool:
    """Whether ``name`` names a dataset on disk (``cityscapes:PATH`` ...), not a synthetic
    domain."""
    kind, _, path = name.partition(":")
    return bool(path) and kind in _READERS


def check_dataset_name(name: str) -> str:
    """``name`` when :func:`open_dataset` can open it: a synthetic domain, or ``cityscapes:``,
    ``gta5:`` or ``synthia:PATH`` of a folder that is there; else one line naming it, before
    any work (a sweep checks its domains when its cells are made, not in a worker)."""
    if not isinstance(name, str):
        raise LwmmError(f"dataset {name!r}: give a domain's name or {ON_DISK}")
    if on_disk(name):
        kind, _, path = name.partition(":")
        _root(path, _TITLES[kind])
        return name
    if name in DOMAINS:
        return name
    close = did_you_mean(name, DOMAINS)
    hint = f" (did you mean '{close}'?)" if close else ""
    raise LwmmError(
        f"dataset '{name}' is not a synthetic domain ({', '.join(DOMAINS)}) nor {ON_DISK}{hint}"
    )


def check_dataset_names(names: str | Sequence[str]) -> list[str]:
    """One dataset name or a list of them, each checked by :func:`check_dataset_name`."""
    choices = f"{', '.join(DOMAINS)}, {ON_DISK}"
    return [check_dataset_name(n) for n in name_list(names, "domain", choices)]


def data_key(name: str, images: int, split: str = "val", instances: bool = False) -> str:
    """What a cache keys the first ``images`` samples of a dataset by: a synthetic domain's
    name (its scenes are a function of the name, seed and code), or for a dataset on disk the
    sha256 of its files' names and contents, so that a changed label is scored again."""
    if not on_disk(check_dataset_name(name)):
        return name
    dataset = open_dataset(name, split, None, instances=instances)
    text = "".join(f"{f.name}:{sha256(f)}\n" for f in dataset.files(images))
    return hashlib.sha256(text.encode()).hexdigest()


def dataset_label(name: str) -> str:
    """A short name for a dataset in titles and buttons: the domain, or the kind of a dataset
    on disk and its folder's name (``cityscapes (val_2024)``)."""
    if not on_disk(name):
        return name
    kind, _, path = name.partition(":")
    return f"{kind} ({Path(path).name or path})"


def open_dataset(
    name: str,
    split: str = "val",
    resolution: tuple[int, int] | None = (128, 256),
    size: int | None = None,
    seed: int = 0,
    instances: bool = False,
) -> Dataset:
    """A dataset by name: a synthetic domain, or ``cityscapes:``/``gta5:``/``synthia:PATH``.

    Real datasets are resized to ``resolution`` when given (None keeps their size); ``size``
    and ``seed`` apply to synthetic domains only.
    """
    kind, _, path = name.partition(":") if isinstance(name, str) else ("", "", "")
    if instances and kind in ("gta5", "synthia"):
        raise LwmmError(
            f"dataset '{name}': {kind} labels have no instance ids; a panoptic task needs "
            "cityscapes:PATH (its gtFine instanceIds) or a synthetic domain"
        )
    if not on_disk(check_dataset_name(name)):
        return SyntheticScenes(name, split, size, resolution or (128, 256), seed, instances)
    if kind == "cityscapes":
        return cityscapes(path, split, resolution, instances)
    return _READERS[kind](path, resolution)


def _read_image(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise _unreadable(path, "image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _unreadable(path: Path, what: str, detail: str | None = None) -> LwmmError:
    """The one line for an image file no reader could decode: what the file holds instead
    when its first bytes say (a Git LFS pointer, a web page, text), else ``detail``."""
    reason = stand_in(path, "an image") or detail
    return LwmmError(f"{path}: not a readable {what}" + (f" ({reason})" if reason else ""))


class _TableLabel:
    """Reads a label PNG of ids and maps them through a lookup table (picklable).

    Read with Pillow, not OpenCV: GTA5's labels are palette PNGs whose pixels are the ids, and
    OpenCV expands a palette into its colours. Grey PNGs (Cityscapes' labelIds) read the same.
    """

    def __init__(self, table: np.ndarray) -> None:
        self.table = table

    def __call__(self, path: Path) -> np.ndarray:
        try:
            with Image.open(path) as image:
                mode = image.mode
                ids = np.asarray(image) if mode in ("L", "P", "I;16", "I") else None
        except (OSError, ValueError) as error:
            raise _unreadable(path, "label image", str(error)) from None
        if ids is None:
            raise LwmmError(
                f"{path}: an image of mode {mode}; a label holds one id per pixel (a grey or "
                "palette PNG such as *_labelIds.png, not the colour rendering)"
            )
        outside = ids[(ids < 0) | (ids >= len(self.table))]
        if outside.size:
            raise LwmmError(f"{path}: label id {int(outside[0])} is not a Cityscapes label id")
        return self.table[ids]


def _synthia_label(path: Path) -> np.ndarray:
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise _unreadable(path, "SYNTHIA label")
    if raw.ndim != 3:
        raise LwmmError(f"{path}: not a SYNTHIA label (a 16-bit RGB PNG with the class in red)")
    return L.SYNTHIA_TO_TRAIN[raw[..., 2]]  # OpenCV reads BGR: red, the first channel, is last


def _fit_to_image(ids: np.ndarray, image: np.ndarray, path: Path, what: str) -> np.ndarray:
    """``ids`` (a label or instance map) at ``image``'s size. Some GTA5 pairs are a few pixels
    apart: a map within :data:`SIZE_TOLERANCE` of each side is resized to the image (nearest
    neighbour, as every training pipeline does when it resizes both). One further off is the
    map of another picture, and is refused naming the file."""
    (h, w), (mh, mw) = image.shape[:2], ids.shape[:2]
    if (mh, mw) == (h, w):
        return ids
    if abs(mh - h) > SIZE_TOLERANCE * h or abs(mw - w) > SIZE_TOLERANCE * w:
        raise LwmmError(
            f"{path}: {what} is {mh} x {mw}, its image {h} x {w} (more than "
            f"{SIZE_TOLERANCE:.0%} off: the {what} of another picture?)"
        )
    return cv2.resize(ids, (w, h), interpolation=cv2.INTER_NEAREST)


def _cityscapes_instances(path: Path) -> np.ndarray:
    ids = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if ids is None:
        raise _unreadable(path, "instance image")
    ids = ids.astype(np.int32)
    return np.where(ids >= 1000, ids, 0)  # Cityscapes: class_id * 1000 + index for instances


def _root(root: str | os.PathLike, name: str) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise LwmmError(f"{name} root '{root}' is not a directory")
    return root


def _subdir(root: Path, sub: str, layout: str) -> Path:
    """``root / sub``, a folder; else an error naming it and, for a split's folder, the
    splits there are (a misspelt ``vla``, or a ``train`` split not downloaded)."""
    path = root / sub
    if not path.is_dir():
        splits = ""
        if path.parent != root and path.parent.is_dir():  # a split's folder: name those there
            there = sorted(p.name for p in path.parent.iterdir() if p.is_dir())
            splits = f"; its splits: {', '.join(there)}" if there else ""
        raise LwmmError(f"'{path}' is missing (expected {layout} under {root}{splits})")
    return path


def _required(path: Path, image: Path) -> Path:
    if not path.is_file():
        raise LwmmError(f"no label for '{image}': expected '{path}'")
    return path


def _nonempty(pairs: list, folder: Path, pattern: str) -> None:
    if not pairs:
        raise LwmmError(f"no images matching {pattern} in '{folder}'")
