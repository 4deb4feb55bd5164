"""Qualitative results (the paper's Figs. 4 and 6): what a merge changes, pixel by pixel.

For chosen images: the image, its ground truth, the anchor's and the merged model's
predictions, and a change map that shows where the merge fixed the anchor (right now, wrong
before), broke it (wrong now, right before), and where both are right or both wrong.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from lwmm_lab.analysis.evaluation import Scores, predict
from lwmm_lab.analysis.panoptic import panoptic_predict
from lwmm_lab.data import labels as L
from lwmm_lab.data.batches import check_batch, check_dataset, check_sample
from lwmm_lab.errors import LwmmError, check_whole

#: Change-map codes and their colours.
CHANGES = {
    "both right": (60, 60, 60),
    "fixed": (40, 200, 70),
    "broken": (230, 40, 40),
    "both wrong": (240, 170, 30),
    "ignored": (0, 0, 0),
}
_CODE = {name: k for k, name in enumerate(CHANGES)}
#: The change codes' colours, one RGB row per code (the palette of a change map).
CHANGE_PALETTE = np.array(list(CHANGES.values()), dtype=np.uint8)


@dataclass
class Example:
    """One image's arrays: RGB image, trainId ground truth and predictions, change codes.

    A panoptic example also has ``instances``: the instance ids of the ground truth, the
    anchor's and the merged model's predictions (0 for stuff), its ``anchor`` and ``merged``
    being the panoptic categories (void where no segment).
    """

    index: int
    image: np.ndarray
    label: np.ndarray
    anchor: np.ndarray
    merged: np.ndarray
    changes: np.ndarray
    instances: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def counts(self) -> dict[str, int]:
        return {name: int((self.changes == k).sum()) for name, k in _CODE.items()}


def examples(
    anchor: nn.Module, merged: nn.Module, dataset: Dataset, indices: Sequence[int] | int
) -> list[Example]:
    """The anchor's and the merged model's predictions on ``dataset[indices]`` (a list of
    indices, or one)."""

    def show(images: Tensor, labels: Tensor, *_: Tensor, shown: list[int]) -> list[Example]:
        a, m = predict(anchor, images), predict(merged, images)
        return examples_from_predictions(images, labels, a, m, shown)

    return _by_size(dataset, indices, show)


def panoptic_examples(
    anchor: nn.Module, merged: nn.Module, dataset: Dataset, indices: Sequence[int] | int
) -> list[Example]:
    """The anchor's and the merged model's panoptic outputs on ``dataset[indices]`` (samples
    with instance ids), beside the panoptic ground truth (the paper's Fig. 6)."""

    def show(images: Tensor, labels: Tensor, *ids: Tensor, shown: list[int]) -> list[Example]:
        if not ids:
            raise LwmmError("a panoptic example needs samples with instance ids")
        a_category, a_instance = panoptic_predict(anchor, images)
        m_category, m_instance = panoptic_predict(merged, images)
        instances = (ids[0], a_instance, m_instance)
        return examples_from_predictions(images, labels, a_category, m_category, shown, instances)

    return _by_size(dataset, indices, show)


def _by_size(
    dataset: Dataset, indices: Sequence[int] | int, show: Callable[..., list[Example]]
) -> list[Example]:
    """``show(images, labels, *more, shown=indices)`` of the samples ``indices`` picks, each
    size of image stacked on its own (a real dataset at its own size mixes them: torch.stack
    failed), the examples in the order asked. Samples are checked as :func:`evaluate` checks
    them (uint8 images were shown as garbage)."""
    source = check_dataset(dataset)
    indices, items = _items(dataset, indices)
    sizes: dict[tuple[int, ...], list[int]] = {}
    for k, item in enumerate(items):
        check_sample(item, source)
        sizes.setdefault(tuple(item[0].shape), []).append(k)
    made: dict[int, Example] = {}
    for ks in sizes.values():
        tensors = [torch.stack([items[k][j] for k in ks]) for j in range(len(items[ks[0]]))]
        check_batch(tensors[0], tensors[1], source)
        made.update(zip(ks, show(*tensors, shown=[indices[k] for k in ks]), strict=True))
    return [made[k] for k in range(len(items))]


def _items(dataset: Dataset, indices: Sequence[int] | int) -> tuple[list[int], list[Any]]:
    """The indices as a list and the samples they pick, once each is a whole number in
    0..len - 1 and there is one at least (-1 was shown as "image -1", an empty list failed
    inside torch.stack)."""
    indices = [indices] if isinstance(indices, numbers.Integral) else list(indices)
    if not indices:
        raise LwmmError("give at least one image index to show")
    for i in indices:
        if not 0 <= check_whole("index", i) < len(dataset):
            raise LwmmError(f"index {i} is outside 0..{len(dataset) - 1}, the dataset's images")
    return [int(i) for i in indices], [dataset[int(i)] for i in indices]


def examples_from_predictions(
    images: torch.Tensor,
    labels: torch.Tensor,
    anchor: torch.Tensor,
    merged: torch.Tensor,
    indices: Sequence[int],
    instances: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> list[Example]:
    """Examples from images (N, 3, H, W) in [0, 1], labels and the two models' trainIds (or,
    with ``instances`` of the labels, the anchor and the merged model, their panoptic
    categories)."""
    rgb = (images.permute(0, 2, 3, 1).clamp(0, 1) * 255).round().byte().cpu().numpy()
    result = []
    for k, index in enumerate(indices):
        label = labels[k].cpu().numpy().astype(np.uint8)
        a, m = anchor[k].cpu().numpy().astype(np.uint8), merged[k].cpu().numpy().astype(np.uint8)
        ids = None if instances is None else tuple(t[k].cpu().numpy() for t in instances)
        result.append(Example(index, rgb[k], label, a, m, change_map(label, a, m), ids))
    return result


def change_map(label: np.ndarray, anchor: np.ndarray, merged: np.ndarray) -> np.ndarray:
    """Per pixel, the change code (see :data:`CHANGES`)."""
    a_ok, m_ok = anchor == label, merged == label
    codes = np.full(label.shape, _CODE["both wrong"], dtype=np.uint8)
    codes[a_ok & m_ok] = _CODE["both right"]
    codes[~a_ok & m_ok] = _CODE["fixed"]
    codes[a_ok & ~m_ok] = _CODE["broken"]
    codes[label == L.IGNORE] = _CODE["ignored"]
    return codes


def iou_delta(anchor: Scores, merged: Scores) -> dict[str, float | None]:
    """Per class, the merged model's IoU minus the anchor's (None where either has none)."""
    delta: dict[str, float | None] = {}
    for name, a in anchor.per_class_iou.items():
        m = merged.per_class_iou.get(name)
        delta[name] = None if a is None or m is None else m - a
    return delta
