"""Panoptic segmentation: training targets, inference in the style of Panoptic-DeepLab, and PQ.

**Targets** (:func:`panoptic_targets`): for each thing instance, a Gaussian at its centre of
mass in the centre heatmap and, at its pixels, the (dy, dx) offset to that centre.

**Inference** (:func:`panoptic_predict`): centres are the local maxima of the heatmap
(max-pooling NMS) above a threshold, at most ``top_k``; every thing pixel (a thing class in the
semantic prediction) joins the centre nearest to where its offset points; an instance's class
is the majority vote of the semantic prediction over its pixels; stuff segments are the
semantic map's, one per class; segments smaller than ``min_area`` become void.

**PQ** (:func:`panoptic_stats`, :func:`panoptic_scores`): per class, predicted and ground-truth
segments of that class match when their IoU exceeds 0.5 (so at most one match each); PQ = sum
of matched IoUs / (TP + FP/2 + FN/2) = SQ x RQ. Void is left out of every IoU on both sides, and
an unmatched segment more than half void on the other side is not an error: the convention of
torchmetrics' ``PanopticQuality`` (the reference the tests compare with), a symmetric form of
the Cityscapes / COCO one. Ground-truth thing pixels without an instance id (Cityscapes'
crowd regions) are void. Means are over the classes that occur (TP + FP + FN > 0), split into
things and stuff as well.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from lwmm_lab.analysis.evaluation import (
    confusion,
    eval_mode,
    forward,
    int_constant,
    model_classes,
    normalize,
    open_checkpoints,
    require_labels,
    scores_from_confusion,
    top_class,
)
from lwmm_lab.data import labels as L
from lwmm_lab.data.batches import batches
from lwmm_lab.engine.panoptic import is_panoptic
from lwmm_lab.engine.pool import path_list
from lwmm_lab.errors import LwmmError, check_count, check_finite, check_whole
from lwmm_lab.heap import keep_freed_memory

#: What ``lwmm eval --task`` scores.
TASKS = ("semantic", "panoptic")
#: A pixel that belongs to no segment (the category of void).
VOID = L.IGNORE
#: Instance ids are below this; a segment's key is ``category * ID_RANGE + instance``.
ID_RANGE = 1 << 16
#: Centre heatmap Gaussians' sigma, in pixels at the zoo's resolution (Panoptic-DeepLab: 8 at
#: 1024 x 2048).
SIGMA = 3.0


@dataclass(frozen=True)
class PanopticConfig:
    """Post-processing knobs (Panoptic-DeepLab's, scaled to small images).

    ``min_area`` is a fraction of the image: Panoptic-DeepLab drops segments under 2048 pixels
    of a 1024 x 2048 Cityscapes image, about 18 pixels at 96 x 192.
    """

    threshold: float = 0.1
    nms_kernel: int = 7
    top_k: int = 50
    min_area: float = 2048 / (1024 * 2048)

    def __post_init__(self) -> None:
        """Refuse knobs the grouping cannot use, by name: an even NMS kernel shifted the
        pooled map by a pixel (a shape error deep inside), a NaN threshold found no centre."""
        check_finite("threshold", self.threshold)
        if check_count("nms_kernel", self.nms_kernel) % 2 == 0:
            raise LwmmError(f"nms_kernel={self.nms_kernel}: give an odd size (centred on a pixel)")
        if check_whole("top_k", self.top_k) < 0:
            raise LwmmError(f"top_k={self.top_k}: give 0 or more")
        if not 0.0 <= check_finite("min_area", self.min_area) <= 1.0:
            raise LwmmError(f"min_area={self.min_area}: give a fraction of the image, in [0, 1]")


def require_panoptic(model: nn.Module, source: str = "the model") -> None:
    """Refuse, in one line naming ``source``, a model without instance heads."""
    if not is_panoptic(model):
        raise LwmmError(
            f"{source}: a semantic model ({type(model).__name__}, no instance heads); the "
            "panoptic task needs a panoptic checkpoint (arch PanopticUnet)"
        )


def things_of(classes: Sequence[int]) -> tuple[int, ...]:
    """The thing classes (instances) among ``classes``, as trainIds."""
    return tuple(c for c in classes if c in L.THINGS)


def stuff_of(classes: Sequence[int]) -> tuple[int, ...]:
    """The stuff classes (one segment per class) among ``classes``, as trainIds."""
    return tuple(c for c in classes if c not in L.THINGS)


# ------------------------------------------------------------------------------------ targets


def panoptic_targets(
    labels: Tensor, instances: Tensor, sigma: float = SIGMA
) -> tuple[Tensor, Tensor, Tensor]:
    """Centre heatmaps (N, 1, H, W), offsets (N, 2, H, W) and the mask of instance pixels
    (N, H, W) of a batch of trainId labels and instance ids (0: none)."""
    n, h, w = labels.shape
    device = labels.device
    thing = torch.zeros(256, dtype=torch.bool, device=device)
    thing[list(L.THINGS)] = True
    mask = (instances > 0) & thing[labels]
    key = torch.where(
        mask, torch.arange(n, device=device)[:, None, None] * ID_RANGE + instances, -1
    )
    ids, inverse = torch.unique(key, return_inverse=True)
    yy, xx = torch.meshgrid(
        torch.arange(h, device=device, dtype=torch.float32),
        torch.arange(w, device=device, dtype=torch.float32),
        indexing="ij",
    )
    coords = torch.stack([yy, xx]).expand(n, 2, h, w)
    count = torch.zeros(len(ids), device=device).index_add_(
        0, inverse.flatten(), mask.flatten().float()
    )
    sums = torch.zeros(len(ids), 2, device=device)
    sums.index_add_(
        0, inverse.flatten(), coords.permute(0, 2, 3, 1).reshape(-1, 2) * mask.flatten()[:, None]
    )
    centers = sums / count.clamp_min(1)[:, None]
    offsets = (centers[inverse].permute(0, 3, 1, 2) - coords) * mask[:, None]
    valid = ids >= 0
    cy, cx = centers[valid, 0, None, None], centers[valid, 1, None, None]
    gaussians = torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
    image_of = torch.div(ids[valid], ID_RANGE, rounding_mode="floor")
    heat = torch.zeros(n, h * w, device=device).scatter_reduce_(
        0, image_of[:, None].expand(-1, h * w), gaussians.view(-1, h * w), "amax"
    )
    return heat.view(n, 1, h, w), offsets, mask


def panoptic_loss(
    center: Tensor, offset: Tensor, labels: Tensor, instances: Tensor
) -> dict[str, Tensor]:
    """Panoptic-DeepLab's instance losses: MSE on the centre heatmap (weight 200), L1 on the
    offsets at instance pixels (weight 0.01, pixels as the unit)."""
    heat, offsets, mask = panoptic_targets(labels, instances)
    center_loss = F.mse_loss(center, heat)
    pixels = mask.sum().clamp_min(1)
    offset_loss = ((offset - offsets).abs().sum(1) * mask).sum() / pixels
    return {"center": 200.0 * center_loss, "offset": 0.01 * offset_loss}


# ---------------------------------------------------------------------------------- inference


def panoptic_predict(
    model: nn.Module, images: Tensor, config: PanopticConfig | None = None
) -> tuple[Tensor, Tensor]:
    """Categories (trainIds, VOID where no segment) and instance ids (0 for stuff) (N, H, W)."""
    return _predict(model, images, config)[1:]


def _predict(
    model: nn.Module, images: Tensor, config: PanopticConfig | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """The semantic prediction (trainIds) too, from the same forward pass."""
    require_panoptic(model)
    config = config or PanopticConfig()
    classes = model_classes(model)
    with torch.no_grad(), eval_mode(model):
        logits, center, offset = forward(model, normalize(images), model.forward_panoptic)
    semantic = int_constant(classes, images.device)[top_class(logits)]
    out = [
        _group(s, c[0], o, classes, config)
        for s, c, o in zip(semantic, center, offset, strict=True)
    ]
    return semantic, torch.stack([c for c, _ in out]), torch.stack([i for _, i in out])


def _group(
    semantic: Tensor, heat: Tensor, offset: Tensor, classes: Sequence[int], config: PanopticConfig
) -> tuple[Tensor, Tensor]:
    """One image: centres, thing pixels to the nearest centre, majority classes, min area."""
    h, w = semantic.shape
    device = semantic.device
    k = config.nms_kernel
    pooled = F.max_pool2d(heat[None, None], k, stride=1, padding=k // 2)[0, 0]
    peaks = (heat == pooled) & (heat > config.threshold)
    scores = torch.where(peaks, heat, -1.0).flatten()
    n_peaks = min(int(peaks.sum()), config.top_k)
    top = scores.topk(n_peaks).indices
    centers = torch.stack([top // w, top % w], 1).float()
    thing = torch.zeros(256, dtype=torch.bool, device=device)
    thing[list(things_of(classes))] = True
    is_thing = thing[semantic]
    category = torch.where(is_thing, VOID, semantic)
    instance = torch.zeros_like(semantic)
    if n_peaks and bool(is_thing.any()):
        yy, xx = torch.meshgrid(
            torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij"
        )
        pointed = (torch.stack([yy, xx], -1).float() + offset.permute(1, 2, 0))[is_thing]
        nearest = torch.cdist(pointed, centers).argmin(1)
        votes = torch.zeros(n_peaks, 256, device=device, dtype=torch.long)
        votes.index_put_((nearest, semantic[is_thing]), torch.ones_like(nearest), accumulate=True)
        instance[is_thing] = nearest + 1
        category[is_thing] = votes.argmax(1)[nearest]
    min_area = config.min_area * h * w
    key = category.long() * ID_RANGE + instance
    _, inverse, counts = torch.unique(key, return_inverse=True, return_counts=True)
    small = counts[inverse] < min_area
    category = torch.where(small, VOID, category)
    instance = torch.where(small | (category == VOID), 0, instance)
    return category, instance


# ------------------------------------------------------------------------------------- PQ


@dataclass
class PanopticStats:
    """Per-class sums over images: IoU of matches, TP, FP, FN (index: position in classes)."""

    classes: tuple[int, ...]
    iou: Tensor
    tp: Tensor
    fp: Tensor
    fn: Tensor

    @classmethod
    def zeros(cls, classes: Sequence[int], device: torch.device | str = "cpu") -> PanopticStats:
        n = len(classes)
        z = torch.zeros(n, dtype=torch.float64, device=device)
        return cls(tuple(classes), z, z.clone(), z.clone(), z.clone())

    def add(self, other: PanopticStats) -> None:
        for name in ("iou", "tp", "fp", "fn"):
            getattr(self, name).add_(getattr(other, name))


def ground_truth(
    labels: Tensor, instances: Tensor, classes: Sequence[int]
) -> tuple[Tensor, Tensor]:
    """Panoptic ground truth (categories, instance ids) from trainId labels and instance ids:
    classes outside ``classes`` and thing pixels without an instance id are VOID."""
    keep = torch.zeros(256, dtype=torch.bool, device=labels.device)
    keep[list(classes)] = True
    thing = torch.zeros(256, dtype=torch.bool, device=labels.device)
    thing[list(things_of(classes))] = True
    crowd = thing[labels] & (instances <= 0)
    category = torch.where(keep[labels] & ~crowd, labels, VOID)
    instance = torch.where(thing[category], instances, 0)
    return category, instance


def panoptic_stats(
    pred_category: Tensor,
    pred_instance: Tensor,
    true_category: Tensor,
    true_instance: Tensor,
    classes: Sequence[int],
) -> PanopticStats:
    """PQ's sums for a batch of panoptic predictions against ground truth (both (N, H, W))."""
    stats = PanopticStats.zeros(classes, pred_category.device)
    for pc, pi, tc, ti in zip(
        pred_category, pred_instance, true_category, true_instance, strict=True
    ):
        stats.add(_image_stats(pc, pi, tc, ti, classes))
    return stats


def _image_stats(
    pc: Tensor, pi: Tensor, tc: Tensor, ti: Tensor, classes: Sequence[int]
) -> PanopticStats:
    void_key = VOID * ID_RANGE
    pkey = torch.where(pc == VOID, void_key, pc.long() * ID_RANGE + pi).flatten()
    tkey = torch.where(tc == VOID, void_key, tc.long() * ID_RANGE + ti).flatten()
    pids, p = torch.unique(pkey, return_inverse=True)
    tids, t = torch.unique(tkey, return_inverse=True)
    inter = torch.bincount(t * len(pids) + p, minlength=len(tids) * len(pids))
    inter = inter.reshape(len(tids), len(pids)).double()
    t_area, p_area = inter.sum(1), inter.sum(0)
    t_void = tids == void_key
    p_void = pids == void_key
    t_in_void_pred = inter[:, p_void].sum(1)  # each target's pixels predicted void
    p_in_void_true = inter[t_void].sum(0)  # each prediction's pixels that are void in truth
    t_cat = torch.div(tids, ID_RANGE, rounding_mode="floor")
    p_cat = torch.div(pids, ID_RANGE, rounding_mode="floor")
    union = p_area[None] - p_in_void_true[None] + t_area[:, None] - t_in_void_pred[:, None] - inter
    iou = inter / union.clamp_min(1e-12)
    same = (t_cat[:, None] == p_cat[None]) & ~t_void[:, None] & ~p_void[None]
    matched = same & (iou > 0.5)
    index = torch.full((256,), -1, dtype=torch.long, device=pc.device)
    index[list(classes)] = torch.arange(len(classes), device=pc.device)
    stats = PanopticStats.zeros(classes, pc.device)
    t_slot, p_slot = index[t_cat], index[p_cat]
    rows = matched.any(1)
    fn = ~rows & ~t_void & (t_in_void_pred / t_area.clamp_min(1) <= 0.5)
    fp = ~matched.any(0) & ~p_void & (p_in_void_true / p_area.clamp_min(1) <= 0.5)
    fp &= p_slot >= 0
    t_slot, p_slot = t_slot.clamp_min(0), p_slot.clamp_min(0)  # void adds zeros below
    stats.tp.index_add_(0, t_slot, rows.double())
    stats.iou.index_add_(0, t_slot, (iou * matched).sum(1))
    stats.fn.index_add_(0, t_slot, fn.double())
    stats.fp.index_add_(0, p_slot, fp.double())
    return stats


@dataclass
class PanopticScores:
    """PQ, SQ, RQ (0-100): means over the classes that occur, over things, over stuff; per class."""

    pq: float
    sq: float
    rq: float
    per_class: dict[str, dict[str, float]]
    things: dict[str, float]
    stuff: dict[str, float]
    images: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "pq": round(self.pq, 4),
            "sq": round(self.sq, 4),
            "rq": round(self.rq, 4),
            "things": {k: round(v, 4) for k, v in self.things.items()},
            "stuff": {k: round(v, 4) for k, v in self.stuff.items()},
            "per_class": {
                name: {k: round(v, 4) for k, v in values.items()}
                for name, values in self.per_class.items()
            },
            "images": self.images,
            **self.extra,
        }


def panoptic_scores(stats: PanopticStats, images: int = 0) -> PanopticScores:
    """PQ, SQ and RQ from accumulated sums (torchmetrics' formulas, in percent)."""
    tp, fp, fn = stats.tp, stats.fp, stats.fn
    sq = torch.where(tp > 0, stats.iou / tp.clamp_min(1), 0.0)
    denominator = tp + 0.5 * fp + 0.5 * fn
    rq = torch.where(denominator > 0, tp / denominator.clamp_min(1e-12), 0.0)
    pq = sq * rq
    occurs = denominator > 0

    def mean(values: Tensor, subset: Sequence[int]) -> float:
        pick = torch.tensor([c in subset for c in stats.classes], device=values.device) & occurs
        return float(values[pick].mean()) * 100 if bool(pick.any()) else 0.0

    def means(subset: Sequence[int]) -> dict[str, float]:
        return {"pq": mean(pq, subset), "sq": mean(sq, subset), "rq": mean(rq, subset)}

    everything = means(stats.classes)
    per_class = {
        L.CLASSES[c]: {"pq": float(pq[k]) * 100, "sq": float(sq[k]) * 100, "rq": float(rq[k]) * 100}
        for k, c in enumerate(stats.classes)
        if bool(occurs[k])
    }
    return PanopticScores(
        everything["pq"],
        everything["sq"],
        everything["rq"],
        per_class,
        means(things_of(stats.classes)),
        means(stuff_of(stats.classes)),
        images,
    )


# --------------------------------------------------------------------------------- evaluation


def evaluate_panoptic(
    model: nn.Module,
    dataset: Dataset,
    batch_size: int = 16,
    config: PanopticConfig | None = None,
    progress: bool = False,
) -> PanopticScores:
    """PQ, SQ, RQ of a panoptic model on ``dataset`` (samples: image, label, instance ids), and
    its semantic mIoU (``extra["miou"]``) from the same forward passes. ``progress`` shows a
    bar over the images when the pass takes more than a second."""
    require_panoptic(model)
    device = next(model.parameters()).device
    if device.type == "cpu":
        keep_freed_memory()
    classes = model_classes(model)
    stats = PanopticStats.zeros(classes, device)
    conf = torch.zeros(len(L.CLASSES), len(L.CLASSES), dtype=torch.int64, device=device)
    started, count = time.perf_counter(), 0
    for batch in batches(dataset, batch_size, "panoptic eval" if progress else None):
        if len(batch) < 3:
            raise LwmmError(
                f"{getattr(dataset, 'domain', 'the dataset')}: its labels have no instance ids, "
                "which a panoptic evaluation needs"
            )
        images, labels, instances = (t.to(device) for t in batch[:3])
        batch_stats, batch_conf, _ = _score_batch(model, images, labels, instances, config)
        stats.add(batch_stats)
        conf += batch_conf
        count += images.shape[0]
    scores = _scores(stats, conf, count)
    scores.extra["seconds"] = round(time.perf_counter() - started, 3)
    return scores


def panoptic_outputs(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    instances: Tensor,
    config: PanopticConfig | None = None,
) -> tuple[PanopticScores, Tensor, Tensor]:
    """One batch held in memory (a preview): its scores as :func:`evaluate_panoptic` gives
    them, and the predictions scored, categories and instance ids (N, H, W)."""
    require_panoptic(model)
    stats, conf, (category, instance) = _score_batch(model, images, labels, instances, config)
    return _scores(stats, conf, len(images)), category, instance


def _score_batch(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    instances: Tensor,
    config: PanopticConfig | None,
) -> tuple[PanopticStats, Tensor, tuple[Tensor, Tensor]]:
    """A batch's PQ sums, semantic confusion and panoptic predictions (one forward pass)."""
    classes = model_classes(model)
    semantic, category, instance = _predict(model, images, config)
    truth = ground_truth(labels, instances, classes)
    stats = panoptic_stats(category, instance, *truth, classes)
    return stats, confusion(semantic, labels, classes), (category, instance)


def _scores(stats: PanopticStats, conf: Tensor, images: int) -> PanopticScores:
    scores = panoptic_scores(stats, images)
    classes = stats.classes
    scores.extra["miou"] = round(scores_from_confusion(conf, classes, "", images).miou, 4)
    return scores


def evaluate_panoptic_checkpoints(
    paths: Sequence[str | os.PathLike],
    domain: str = "real",
    split: str = "val",
    images: int | None = None,
    size: tuple[int, int] | None = None,
    device: str | torch.device = "auto",
) -> list[PanopticScores]:
    """:func:`evaluate_panoptic` for checkpoint files (datasets as in ``evaluate_checkpoints``).

    Every checkpoint must be panoptic: a semantic one is refused by name, before any scoring.
    """
    paths = path_list(paths)
    models, dataset = open_checkpoints(paths, domain, split, images, size, device, instances=True)
    for path, model in zip(paths, models, strict=True):
        require_panoptic(model, str(path))
    results = []
    for path, model in zip(paths, models, strict=True):
        scores = evaluate_panoptic(model, dataset, progress=True)
        require_labels(scores.extra["miou"], domain, split, scores.images)
        scores.extra.update(checkpoint=str(path), domain=domain)
        results.append(scores)
    return results
