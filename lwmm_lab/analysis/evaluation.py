"""Evaluation by the Cityscapes convention: one confusion matrix over the split, then IoU.

IoU per class is ``diag / (row + col - diag)`` of the confusion accumulated over every image
(255 ignored); a class absent from both predictions and labels has no IoU (``None``) and is
left out of the mean. A model trained on a subset of the classes (SYNTHIA-16) is scored on its
own classes: labels of the others are ignored. ``ensemble=True`` averages the models' softmax
outputs, the output-ensemble baseline that costs M forward passes.
"""

from __future__ import annotations

import math
import os
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import Dataset, Subset, TensorDataset

from lwmm_lab.data import labels as L
from lwmm_lab.data.batches import batches, read_samples
from lwmm_lab.data.datasets import SyntheticScenes, data_key, dataset_label, open_dataset
from lwmm_lab.data.domains import DOMAINS
from lwmm_lab.engine.checkpoints import check_submodel, load_checkpoint
from lwmm_lab.engine.model import load_model
from lwmm_lab.engine.pool import path_list, resolve_device
from lwmm_lab.errors import LwmmError, check_count, check_image_size
from lwmm_lab.heap import keep_freed_memory

#: Inputs are normalised with the ImageNet statistics, as most segmentation checkpoints expect.
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def normalize(images: Tensor) -> Tensor:
    """Images in [0, 1], (N, 3, H, W) -> the model's input (``channels_last``, like the models)."""
    x = (images - MEAN.to(images.device)) / STD.to(images.device)
    return x.contiguous(memory_format=torch.channels_last)


def forward(model: nn.Module, x: Tensor, call: Callable[[Tensor], Any] | None = None) -> Any:
    """The model's logits on normalised inputs of any size (or what ``call``, one of its
    methods, returns: a tensor or a tuple of maps). An smp architecture whose encoder and
    decoder need sides divisible by its output stride (FPN, DeepLabV3+: 32 or 16; GTA5's
    1052 x 1914 is neither) gets its inputs padded at the bottom and right with zeros (the mean
    colour once normalised, as mmseg pads) and its outputs cropped back; others run as they are.
    """
    call = call or model
    stride = _input_stride(model)
    h, w = x.shape[-2:]
    pad = (0, -w % stride, 0, -h % stride)
    if not any(pad):
        return call(x)
    out = call(F.pad(x, pad).contiguous(memory_format=torch.channels_last))
    if isinstance(out, tuple):
        return tuple(t[..., :h, :w] for t in out)
    return out[..., :h, :w]


def _input_stride(model: nn.Module) -> int:
    """What an input's sides must divide by: smp's ``requires_divisible_input_shape`` and
    ``encoder.output_stride``, 1 for a model that takes any size."""
    if not getattr(model, "requires_divisible_input_shape", False):
        return 1
    return int(getattr(getattr(model, "encoder", None), "output_stride", 1))


def model_classes(model: nn.Module) -> tuple[int, ...]:
    """The trainIds of a model's output channels: 19 -> all, 16 -> SYNTHIA-16, else the first n."""
    n = _out_channels(model)
    for subset in L.CLASS_SETS.values():
        if len(subset) == n:
            return subset
    return tuple(range(n))


def class_probabilities(models: Sequence[nn.Module], images: Tensor) -> Tensor:
    """Mean softmax over ``models``, scattered into the 19 trainId channels: (N, 19, H, W)."""
    x = normalize(images)
    total = torch.zeros(x.shape[0], len(L.CLASSES), *x.shape[2:], device=x.device)
    for model in models:
        total[:, list(model_classes(model))] += forward(model, x).softmax(1)
    return total / len(models)


def top_class(scores: Tensor) -> Tensor:
    """The index of each pixel's highest score over dim 1 (the first one on a tie, as
    ``argmax``): ``max(1)`` gives the same indices, and on a CPU 1.7x to 4x faster than
    ``argmax(1)`` (channels-last and contiguous logits), a tenth of a sweep cell's time."""
    return scores.max(1).indices


def model_list(models: nn.Module | Sequence[nn.Module]) -> list[nn.Module]:
    """A model, or several (an ensemble), as a list of modules; a path, a checkpoint or a
    state dict where a model goes is refused in one line that says how to load one (an
    AttributeError on ``parameters`` before), as is an empty list."""
    listed = [models] if isinstance(models, nn.Module) else models
    if isinstance(listed, str | os.PathLike | dict) or not isinstance(listed, Iterable):
        listed = [listed]
    listed = list(listed)
    for m in listed:
        if not isinstance(m, nn.Module):
            raise LwmmError(
                f"a {type(m).__name__} is given where a model (an nn.Module) goes; "
                "load_model(checkpoint) builds one from a file or a Checkpoint"
            )
    if not listed:
        raise LwmmError("no model given")
    return listed


@contextmanager
def eval_mode(models: nn.Module | Sequence[nn.Module]) -> Iterator[None]:
    """The models in eval mode for the block, each module back in its own mode after. In
    training mode BatchNorm normalises by the batch and updates its running statistics: a
    model scored mid-training was changed by the scoring, and left in eval mode after it.
    Only the modules in training mode are switched (a model in eval mode costs one look at
    its ~300 modules, 0.26 ms on the 2-core CPU; ``model.eval()`` took 0.9 ms)."""
    training = [m for model in model_list(models) for m in model.modules() if m.training]
    for m in training:
        m.training = False
    try:
        yield
    finally:
        for m in training:
            m.training = True


def predict(models: nn.Module | Sequence[nn.Module], images: Tensor) -> Tensor:
    """trainId predictions (N, H, W) of a model, or of the ensemble of several (in eval
    mode, see :func:`eval_mode`)."""
    models = model_list(models)
    with eval_mode(models):
        return _predict(models, images)


def _predict(models: list[nn.Module], images: Tensor) -> Tensor:
    """:func:`predict` of models in eval mode already."""
    with torch.no_grad():
        if len(models) == 1:
            return classify(models[0], normalize(images))
        return top_class(class_probabilities(models, images))


def classify(model: nn.Module, x: Tensor) -> Tensor:
    """trainIds of a model's predictions on normalised inputs ``x``."""
    return int_constant(model_classes(model), x.device)[top_class(forward(model, x))]


def confusion(prediction: Tensor, label: Tensor, classes: Sequence[int]) -> Tensor:
    """Confusion counts (19 x 19, rows = label, cols = prediction) over ``classes``' pixels,
    on the labels' device (a GPU evaluation sums them there and syncs once).

    Every pixel is counted at label 0..255 times 19 plus the prediction, by one ``index_add_``,
    then the rows of ``classes`` are kept: no boolean selection of the valid pixels (which costs
    eight times the count on a CPU and a sync on a GPU) and no ``bincount`` (which on a GPU
    reads its input's range back to the host first).
    """
    n = len(L.CLASSES)
    index = (label.long() * n + prediction).flatten()
    ones = int_constant((1,), label.device).expand(index.shape[0])
    counts = torch.zeros(256 * n, dtype=torch.int64, device=label.device).index_add_(0, index, ones)
    scored = int_constant(tuple(int(c in classes) for c in range(n)), label.device, (n, 1))
    return counts[: n * n].reshape(n, n) * scored


@lru_cache(maxsize=64)
def int_constant(
    values: tuple[int, ...], device: torch.device, shape: tuple[int, ...] = (-1,)
) -> Tensor:
    """A small int64 tensor on ``device``, made once: a copy to a GPU on every call would wait
    for the work queued before it (a model's class ids, the rows a confusion keeps)."""
    return torch.tensor(values, dtype=torch.int64).reshape(shape).to(device)


@dataclass
class Scores:
    """mIoU (0-100) and per-class IoU (None: the class occurs in neither labels nor predictions)."""

    miou: float
    per_class_iou: dict[str, float | None]
    domain: str
    images: int
    classes: tuple[int, ...]
    seconds: float = 0.0
    models: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "miou": None if math.isnan(self.miou) else round(self.miou, 4),
            "per_class_iou": {
                k: None if v is None else round(v, 4) for k, v in self.per_class_iou.items()
            },
            "domain": self.domain,
            "images": self.images,
            "classes": len(self.classes),
            "models": self.models,
            "seconds": round(self.seconds, 3),
            **self.extra,
        }


def scores_from_confusion(conf: Tensor, classes: Sequence[int], domain: str, images: int) -> Scores:
    """IoU per class from an accumulated confusion matrix, mean over classes that occur (read
    on the CPU: one copy from a GPU, not one sync per class; the per-class arithmetic in
    Python floats, not a few tiny tensor operations per class)."""
    conf = conf.cpu().double()
    tp = conf.diag()
    tps, unions = tp.tolist(), (conf.sum(0) + conf.sum(1) - tp).tolist()
    per_class, values = {}, []
    for c in classes:
        if unions[c] > 0:
            iou = tps[c] / unions[c] * 100
            per_class[L.CLASSES[c]] = iou
            values.append(iou)
        else:
            per_class[L.CLASSES[c]] = None
    miou = sum(values) / len(values) if values else float("nan")
    return Scores(miou, per_class, domain, images, tuple(classes))


def evaluate(
    models: nn.Module | Sequence[nn.Module],
    dataset: Dataset,
    domain: str = "",
    batch_size: int = 16,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> Scores:
    """Score a model (or the softmax ensemble of several) on ``dataset``.

    The classes scored are the model's (or, for an ensemble, those of any member). On a CPU
    the freed batches' memory is kept for the next (:func:`~lwmm_lab.heap.keep_freed_memory`).
    ``progress`` shows a bar over the images when the pass takes more than a second.
    """
    models, batch_size = model_list(models), check_count("batch_size", batch_size)
    device = resolve_device(device) if device else next(models[0].parameters()).device
    if device.type == "cpu":
        keep_freed_memory()
    classes = tuple(sorted(set().union(*(model_classes(m) for m in models))))
    conf = torch.zeros(len(L.CLASSES), len(L.CLASSES), dtype=torch.int64, device=device)
    started, count = time.perf_counter(), 0
    domain = domain or getattr(dataset, "domain", "")
    bar = f"eval {domain}" if progress else None
    with eval_mode(models):
        for images, labels, *_ in batches(dataset, batch_size, bar):
            images, labels = images.to(device), labels.to(device)
            conf += confusion(_predict(models, images), labels, classes)
            count += images.shape[0]
    scores = scores_from_confusion(conf, classes, domain, count)
    scores.seconds = time.perf_counter() - started
    scores.models = len(models)
    return scores


def val_set(
    domain: str,
    images: int = 100,
    resolution: tuple[int, int] = (96, 192),
    seed: int = 0,
    device: str | torch.device = "cpu",
    instances: bool = False,
) -> TensorDataset:
    """The first ``images`` of a val split held in memory on ``device``, at ``resolution``:
    a synthetic domain's (rendered on first use; ``seed`` picks other scenes), or one of a
    dataset on disk, ``cityscapes:PATH`` (its val split), ``gta5:PATH`` or ``synthia:PATH``
    (all of their images are one split), which has all its images when it has fewer. Images
    and labels, and with ``instances`` the instance ids (what panoptic scores need). A sweep on
    the GPU keeps its val sets there. The settings are checked, and made the cache's keys, here:
    a resolution given as a list was unhashable (a TypeError). Sets are kept in memory up to
    :data:`VAL_CACHE_BYTES` per device; a dataset on disk is read again when its files change
    (the cache's key holds their digest)."""
    size, count, where = (
        check_image_size(resolution),
        check_count("images", images),
        resolve_device(device),
    )
    files = data_key(domain, count, instances=bool(instances))
    return _val_set(domain, count, size, seed, str(where), bool(instances), files)


#: Bytes of val sets kept in memory between calls, on each device. The set asked for last is
#: kept whatever its size, and so is any set still held elsewhere (a lab's previews, the sets
#: a sweep scores): letting go of it would free nothing. 100 zoo images at 96 x 192 take
#: 37 MB; 100 Cityscapes images at their full 1024 x 2048, 4.2 GB (float images, int64
#: labels), which a count of sets could not bound: sixteen of those were kept before.
VAL_CACHE_BYTES = 2 << 30
_val_sets: OrderedDict[tuple[Any, ...], TensorDataset] = OrderedDict()
_held_val_sets: weakref.WeakValueDictionary[tuple[Any, ...], TensorDataset] = (
    weakref.WeakValueDictionary()
)
_val_sets_lock = threading.Lock()


def _val_set(
    domain: str,
    images: int,
    resolution: tuple[int, int],
    seed: int,
    device: str,
    instances: bool,
    files: str,
) -> TensorDataset:
    """:func:`val_set`'s cache: least recently used sets leave first, once a device's sets
    pass :data:`VAL_CACHE_BYTES`; one that left but is still held elsewhere is found again.
    A set on an accelerator is copied from the CPU's."""
    key = (domain, images, resolution, seed, device, instances, files)
    with _val_sets_lock:
        data = _val_sets.get(key, _held_val_sets.get(key))
    if data is not None:
        _keep(key, data)
        return data
    if device != "cpu":
        tensors = _val_set(domain, images, resolution, seed, "cpu", instances, files).tensors
        data = TensorDataset(*(t.to(device) for t in tensors))
    else:
        dataset = open_dataset(domain, "val", resolution, images, seed, instances)
        data = TensorDataset(*read_samples(dataset, images, dataset_label(domain)))
    _keep(key, data)
    return data


def _keep(key: tuple[Any, ...], data: TensorDataset) -> None:
    """Make ``data`` the newest set of the cache, and let go of the oldest ones on its
    device (``key[4]``) past :data:`VAL_CACHE_BYTES`."""
    with _val_sets_lock:
        _val_sets[key] = _held_val_sets[key] = data
        _val_sets.move_to_end(key)
        kept = [k for k in _val_sets if k[4] == key[4]]  # oldest first; this one last
        size = {k: sum(t.nbytes for t in _val_sets[k].tensors) for k in kept}
        total = sum(size.values())
        for k in kept[:-1]:
            if total <= VAL_CACHE_BYTES:
                break
            total -= size[k]
            del _val_sets[k]


def evaluate_checkpoints(
    paths: Sequence[str | os.PathLike],
    domain: str = "real",
    split: str = "val",
    ensemble: bool = False,
    images: int | None = None,
    size: tuple[int, int] | None = None,
    device: str | torch.device = "auto",
    submodel: str | None = None,
) -> list[Scores]:
    """Score checkpoint files on ``domain`` (a synthetic domain or ``cityscapes:PATH`` ...).

    One :class:`Scores` per checkpoint, or a single one for the ensemble of all of them.
    Synthetic domains are rendered at ``size``, else at the resolution a zoo checkpoint was
    trained at (128 x 256 for others); real datasets keep their size unless ``size`` is given.
    """
    paths = path_list(paths)
    models, dataset = open_checkpoints(paths, domain, split, images, size, device, submodel)
    if ensemble:
        scores = evaluate(models, dataset, domain, progress=True)
        require_labels(scores.miou, domain, split, scores.images)
        scores.extra["checkpoints"] = [str(p) for p in paths]
        return [scores]
    results = []
    for path, model in zip(paths, models, strict=True):
        scores = evaluate(model, dataset, domain, progress=True)
        require_labels(scores.miou, domain, split, scores.images)
        scores.extra["checkpoint"] = str(path)
        results.append(scores)
    return results


def require_labels(miou: float, domain: str, split: str, images: int) -> None:
    """Refuse scores with no IoU (``miou`` NaN): no pixel was labelled with a scored class,
    as in Cityscapes' test split, which ships labels that are all void."""
    if math.isnan(miou):
        hint = " (Cityscapes' test labels are all void: score on val)" if split == "test" else ""
        raise LwmmError(
            f"{domain} ({split}): no pixel of the {images} images is labelled with one of the "
            f"model's classes, so there is nothing to score{hint}"
        )


def open_checkpoints(
    paths: Sequence[str | os.PathLike],
    domain: str = "real",
    split: str = "val",
    images: int | None = None,
    size: tuple[int, int] | None = None,
    device: str | torch.device = "auto",
    submodel: str | None = None,
    instances: bool = False,
) -> tuple[list[nn.Module], Dataset]:
    """The checkpoints' models and the dataset to score them on (see
    :func:`evaluate_checkpoints`); ``instances`` adds instance ids to every sample."""
    if images is not None:
        images = check_count("images", images)
    dev = resolve_device(device)
    checkpoints = [load_checkpoint(p, submodel) for p in path_list(paths)]
    check_submodel(checkpoints, submodel)
    models = [load_model(c, dev) for c in checkpoints]
    resolution = size
    if resolution is None and domain in DOMAINS:
        resolution = checkpoints[0].resolution
    dataset = open_dataset(domain, split, resolution, size=images, instances=instances)
    if images is not None and not isinstance(dataset, SyntheticScenes):
        dataset = Subset(dataset, range(min(images, len(dataset))))
    return models, dataset


def _out_channels(model: nn.Module) -> int:
    head = getattr(model, "segmentation_head", None)
    convs = [m for m in (head or model).modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise LwmmError("cannot tell the model's number of classes (no segmentation_head conv)")
    return convs[-1].out_channels
