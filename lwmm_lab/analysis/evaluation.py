"""Evaluation by the Cityscapes convention: one confusion matrix over the split, then IoU.

IoU per class is ``diag / (row + col - diag)`` of the confusion accumulated over every image
(255 ignored); a class absent from both predictions and labels has no IoU (``None``) and is
left out of the mean. A model trained on a subset of the classes (SYNTHIA-16) is scored on its
own classes: labels of the others are ignored. ``ensemble=True`` averages the models' softmax
outputs, the output-ensemble baseline that costs M forward passes.
"""

from __future__ import annotations

import itertools
import math
import os
import threading
import time
import warnings
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
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset, default_collate

from lwmm_lab.data import labels as L
from lwmm_lab.data.datasets import SyntheticScenes, data_key, dataset_label, open_dataset
from lwmm_lab.data.domains import DOMAINS
from lwmm_lab.engine.checkpoints import check_submodel, load_checkpoint
from lwmm_lab.engine.model import load_model
from lwmm_lab.engine.pool import path_list, resolve_device
from lwmm_lab.errors import LwmmError, check_count, check_image_size, first_line
from lwmm_lab.heap import keep_freed_memory
from lwmm_lab.progress import progress_bar

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
            return _classify(models[0], normalize(images))
        return top_class(class_probabilities(models, images))


def _classify(model: nn.Module, x: Tensor) -> Tensor:
    """trainIds of a model's predictions on normalised inputs ``x``."""
    return int_constant(model_classes(model), x.device)[top_class(forward(model, x))]


class BatchScorer:
    """Scores models on one batch held in memory, cut into parts (the lab's target and source
    previews): one forward pass, then each part's confusion, all where the batch lies. The
    inputs are normalised once, as the batch never changes while the models do.

    On a GPU the scoring of a model seen before is replayed from a CUDA graph (``graphs``):
    the lab re-merges into the same module in place, so the forward pass of ~400 kernels costs
    one launch, not ~400 from Python. A graph reads the model's memory as it is at replay; it
    is captured the second time a model (an eval-mode module whose tensors lie where they did)
    is scored, so a model scored once costs no capture, and is checked once against the eager
    pass: a forward pass that cannot be captured, or whose replay differs, is scored eagerly.
    ``graphs=None`` follows the environment: ``LWMM_CUDA_GRAPHS=0`` scores eagerly.
    """

    #: Models whose graphs are kept (each holds the activations of one pass).
    KEPT = 4

    def __init__(
        self, images: Tensor, labels: Tensor, parts: Sequence[int], graphs: bool | None = None
    ) -> None:
        if images.device.type == "cpu":
            keep_freed_memory()
        self.x, self.labels = normalize(images), labels
        ends = list(itertools.accumulate(parts))
        self.parts = [slice(end - size, end) for end, size in zip(ends, parts, strict=True)]
        if graphs is None:
            graphs = os.environ.get("LWMM_CUDA_GRAPHS", "1") != "0"
        self.graphs = graphs and self.x.is_cuda
        #: How many CUDA graphs were captured (a new one per model, or per move of its memory).
        self.captures = 0
        self._seen: OrderedDict[int, _Seen] = OrderedDict()

    def __call__(self, model: nn.Module) -> tuple[Tensor, Tensor]:
        """The model's predictions (N, H, W) and each part's confusion (parts, 19, 19)."""
        if model.training:
            with eval_mode(model):
                return self._score(model)
        if not self.graphs:
            return self._score(model)
        seen = self._seen.pop(id(model), None)
        if seen is None or seen.model() is not model or seen.memory != _memory(seen.modules):
            modules = tuple(model.modules())
            seen = _Seen(weakref.ref(model), modules, _memory(modules))
        elif seen.graph is None and seen.eager is None:
            self._capture(model, seen)
        self._seen[id(model)] = seen
        while len(self._seen) > self.KEPT:
            self._seen.popitem(last=False)
        if seen.graph is None:
            return self._score(model)
        seen.graph.replay()
        return tuple(t.clone() for t in seen.outputs)

    def _score(self, model: nn.Module) -> tuple[Tensor, Tensor]:
        classes = model_classes(model)
        with torch.no_grad():
            pred = _classify(model, self.x)
        counts = [confusion(pred[part], self.labels[part], classes) for part in self.parts]
        return pred, torch.stack(counts)

    def _capture(self, model: nn.Module, seen: _Seen) -> None:
        """Capture ``self._score(model)`` into ``seen`` (its graph and outputs), or record
        there why the model is scored eagerly. Warmed up on a side stream first (lazy
        initialisations stay out of the graph), then replayed once and compared with that
        eager pass."""
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.device(self.x.device):
            side, main = torch.cuda.Stream(), torch.cuda.current_stream()
            side.wait_stream(main)
            with torch.cuda.stream(side):
                eager = self._score(model)
            main.wait_stream(side)
            try:
                with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                    outputs = self._score(model)
                graph.replay()
            except RuntimeError as e:
                seen.eager = (
                    f"its forward pass cannot be captured in a CUDA graph ({first_line(e)})"
                )
            else:
                if all(map(torch.equal, eager, outputs)):
                    seen.graph, seen.outputs = graph, outputs
                    self.captures += 1
                    return
                seen.eager = "its CUDA graph's replay differs from the eager pass"
        warnings.warn(f"lwmm: {type(model).__name__} is scored eagerly: {seen.eager}", stacklevel=3)


@dataclass
class _Seen:
    """A model a :class:`BatchScorer` has scored: where its tensors lay, and once captured,
    its graph and the graph's outputs (or, when it cannot be graphed, why)."""

    model: weakref.ref
    modules: tuple[nn.Module, ...]
    memory: tuple[int, ...]
    graph: torch.cuda.CUDAGraph | None = None
    eager: str | None = None
    outputs: tuple[Tensor, ...] = ()


def _memory(modules: Iterable[nn.Module]) -> tuple[int, ...]:
    """Where each parameter and buffer of a model's modules lies: a graph of its forward pass
    reads those addresses, so it is valid while they stay. Read from each module's own
    tables (0.15 ms for the zoo's Unet; ``parameters()`` and ``buffers()`` take 0.8 ms)."""
    return tuple(
        t.data_ptr()
        for module in modules
        for table in (module._parameters, module._buffers)
        for t in table.values()
        if t is not None
    )


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


def read_samples(dataset: Dataset, images: int, label: str) -> tuple[Tensor, ...]:
    """The first ``images`` samples of ``dataset`` (all of them when it has fewer), stacked
    field by field (images, labels, ...), with a bar labelled ``label`` past two seconds."""
    read = progress_bar(range(min(images, len(dataset))), f"reading {label}", delay=2, leave=False)
    return tuple(torch.stack(t) for t in zip(*(dataset[i] for i in read), strict=True))


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


def _out_channels(model: nn.Module) -> int:
    head = getattr(model, "segmentation_head", None)
    convs = [m for m in (head or model).modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise LwmmError("cannot tell the model's number of classes (no segmentation_head conv)")
    return convs[-1].out_channels
