"""Reading datasets for scoring: batches of (images, labels, ...) and the checks that refuse
what would be scored as garbage, or fail deep inside, without a word.

Everything that scores a dataset (evaluation, panoptic quality, Fisher estimates, the
qualitative grids) reads it through :func:`batches`, so bad input is refused in one place,
with one line that names the dataset and what is wrong with it.
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, TensorDataset, default_collate

from lwmm_lab.data import labels as L
from lwmm_lab.errors import LwmmError
from lwmm_lab.progress import progress_bar


def check_batch(images: Tensor, labels: Tensor, source: str = "the dataset") -> None:
    """Refuse a batch that would be scored as garbage, or fail deep inside, without a word:
    images as :func:`check_images` refuses them, labels not ``(N, H, W)`` at the images' size,
    label values neither a trainId (0..18) nor 255 (ignore)."""
    check_images(images, source)
    if labels.shape != (images.shape[0], *images.shape[2:]):
        raise LwmmError(
            f"{source}: labels of shape {tuple(labels.shape)} for images of shape "
            f"{tuple(images.shape)}; give one (H, W) label per image"
        )
    check_labels(labels, source)


def check_images(images: Tensor, source: str = "the images") -> None:
    """Refuse images that are not ``(N, 3, H, W)`` floats in [0, 1] (uint8, 0..255 floats,
    channels last, images normalised already: the lab normalises them itself)."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise LwmmError(
            f"{source}: images of shape {tuple(images.shape)}; give (N, 3, H, W), channels first"
        )
    if not images.is_floating_point():
        raise LwmmError(
            f"{source}: images are {str(images.dtype).removeprefix('torch.')}; give floats in "
            "[0, 1] (divide 0..255 values by 255)"
        )
    if images.numel():
        low, high = (float(v) for v in torch.aminmax(images))
        if low < -IMAGE_SLACK or high > 1 + IMAGE_SLACK:
            raise LwmmError(
                f"{source}: image values span {low:.3g}..{high:.3g}; give floats in [0, 1] "
                "(0..255 values divided by 255, not normalised: the lab normalises them)"
            )


#: How far outside [0, 1] an image value may stray (rounding in a resize) and still be taken.
IMAGE_SLACK = 0.01


def check_labels(labels: Tensor, source: str = "the dataset") -> None:
    """Refuse label values that are neither a trainId (0..18) nor 255 (ignore): Cityscapes
    label ids (7 road, 26 car) taken for trainIds would be scored as other classes without a
    word, and -1 (another ignore convention) failed deep inside the confusion."""
    bad = labels[((labels < 0) | (labels >= len(L.CLASSES))) & (labels != L.IGNORE)]
    if bad.numel():
        raise LwmmError(
            f"{source}: label {int(bad[0])} is neither a trainId (0..18) nor 255 (ignore); "
            "map Cityscapes label ids with lwmm_lab.data.labels.CITYSCAPES_TO_TRAIN, and an "
            "ignore of -1 to 255"
        )


#: TensorDatasets whose labels were checked whole (a sweep scores one val set in every cell).
_CHECKED: weakref.WeakSet[TensorDataset] = weakref.WeakSet()


def batches(
    dataset: Dataset, batch_size: int, progress: str | None = None
) -> Iterator[tuple[Tensor, ...]]:
    """Batches of (images, labels, ...); a TensorDataset is sliced where it lies (no copies).
    Batches are checked (:func:`check_batch`): a TensorDataset's once, whole, any other
    dataset's batch by batch, on the CPU. ``progress`` labels a bar that counts the images,
    shown once a pass has taken a second (scoring a real dataset on a CPU takes minutes)."""
    source = check_dataset(dataset)
    if isinstance(dataset, TensorDataset) and dataset not in _CHECKED:
        check_batch(*dataset.tensors[:2], source)
        _CHECKED.add(dataset)
    bar = progress_bar(
        total=len(dataset),
        desc=progress,
        unit="image",
        disable=progress is None,
        delay=1.0,
        leave=False,
    )
    with bar:
        for batch in _batches(dataset, batch_size, source):
            if not isinstance(dataset, TensorDataset):
                check_batch(batch[0], batch[1], source)
            yield batch
            bar.update(len(batch[0]))


def check_dataset(dataset: Dataset) -> str:
    """The dataset's name for messages, once it is one that can be scored: not a DataLoader,
    not empty, and (a TensorDataset, whose samples cost nothing to look at) of pairs. Other
    datasets' samples are checked as they are read (:func:`check_sample`), not read twice."""
    if isinstance(dataset, DataLoader):
        raise LwmmError("give the dataset itself, not a DataLoader: evaluation batches it")
    source = getattr(dataset, "domain", "") or type(dataset).__name__
    if len(dataset) == 0:
        raise LwmmError(f"{source}: the dataset is empty, so there is nothing to score")
    if isinstance(dataset, TensorDataset):
        check_sample(dataset[0], source)
    return source


def check_sample(sample: Any, source: str) -> None:
    """Refuse a sample that is not ``(image, label[, instances])``: a tuple of tensors given
    as the dataset failed deep inside with an IndexError."""
    if not isinstance(sample, tuple | list) or len(sample) < 2:
        raise LwmmError(
            f"{source}: a sample is a {type(sample).__name__}, not (image, label); give a "
            "dataset of pairs, e.g. TensorDataset(images, labels)"
        )


def _batches(dataset: Dataset, batch_size: int, source: str) -> Iterator[tuple[Tensor, ...]]:
    if isinstance(dataset, TensorDataset):
        n = len(dataset.tensors[0])
        for k in range(0, n, batch_size):
            yield tuple(t[k : k + batch_size] for t in dataset.tensors)
        return
    for samples in DataLoader(dataset, batch_size=batch_size, collate_fn=list):
        for sample in samples:
            check_sample(sample, source)
        # Real datasets may mix image sizes (kept without --size): each run of one size is
        # stacked on its own.
        for _, run in itertools.groupby(samples, key=lambda sample: sample[0].shape):
            yield default_collate(list(run))


def read_samples(dataset: Dataset, images: int, label: str) -> tuple[Tensor, ...]:
    """The first ``images`` samples of ``dataset`` (all of them when it has fewer), stacked
    field by field (images, labels, ...), with a bar labelled ``label`` past two seconds."""
    read = progress_bar(range(min(images, len(dataset))), f"reading {label}", delay=2, leave=False)
    return tuple(torch.stack(t) for t in zip(*(dataset[i] for i in read), strict=True))
