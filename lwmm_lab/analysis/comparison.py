"""Merging methods compared on the zoo (the paper's Tables 2-4, and the multi-target paper).

- :func:`compare`: each method on given groups of models (Table 3: kinds of strategy).
- :func:`add_one_at_a_time`: models sorted by target mIoU, the best one the anchor, merged
  with 1, 2, ... M of them by ``isotropic``, ``fisher``, the output ensemble and ``layerwise``.
- :func:`multi_target`: models adapted to different targets merged with each BN rule, and
  with BN statistics re-estimated on the targets' unlabelled images.
- :func:`heads_and_decoders`: models with another class set or another decoder than the
  anchor; only the shared tensors can be merged, the rest comes from the anchor. Inference
  time is measured too: a merge costs one forward pass, the ensemble one per model.
- :func:`semantic_into_panoptic`: semantic models merged into a panoptic anchor (Table 6),
  scored by PQ, SQ, RQ and mIoU; :func:`merge_split` says where such a merge costs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lwmm_lab.analysis.adabn import bn_variance_ratio, reestimate_bn, train_images
from lwmm_lab.analysis.discrepancy import region_of
from lwmm_lab.analysis.evaluation import (
    class_probabilities,
    eval_mode,
    evaluate,
    forward,
    normalize,
    predict,
    val_set,
)
from lwmm_lab.analysis.panoptic import evaluate_panoptic, require_panoptic
from lwmm_lab.data import labels as L
from lwmm_lab.data.datasets import check_dataset_names, open_dataset
from lwmm_lab.engine.checkpoints import load_checkpoint, peek_checkpoint, unique_labels
from lwmm_lab.engine.merge import make_plan
from lwmm_lab.engine.methods import BN_RULES
from lwmm_lab.engine.methods import METHODS as MERGE_METHODS
from lwmm_lab.engine.model import load_model, merged_model
from lwmm_lab.engine.panoptic import is_panoptic
from lwmm_lab.engine.pool import Pool, path_list
from lwmm_lab.errors import LwmmError, check_names, check_whole
from lwmm_lab.files import data_dir, sha256
from lwmm_lab.progress import Bar, progress_bar
from lwmm_lab.zoo.fisher import estimate_fisher, save_fisher

METHODS = ("isotropic", "fisher", "ensemble", "layerwise")
#: What a comparison can run: every merge method, and the output ensemble.
RUNNABLE = ("ensemble", *MERGE_METHODS)
#: What a row of :func:`add_one_at_a_time` holds beside each method's mIoU.
ADDED_FIELDS = ("models", "anchor", "best_single", "added", "added_miou")


def _scoring(total: int) -> Bar:
    """A bar over the models and merges a table scores, shown once the table has taken two
    seconds: one on the zoo's 100 images takes 5-15 s on a CPU, on a real dataset minutes."""
    return progress_bar(total=total, desc="scoring", unit="model", delay=2, leave=False)


def fisher_file(
    checkpoint: str | os.PathLike,
    domain: str = "synthetic",
    images: int = 32,
    cache: str | os.PathLike | None = None,
) -> Path:
    """The checkpoint's diagonal Fisher on ``domain``, computed once per content and cached
    (in ``cache``, by default ``data/cache/fisher``)."""
    folder = Path(cache) if cache is not None else data_dir() / "cache" / "fisher"
    path = folder / f"{sha256(checkpoint)[:20]}-{domain}-{images}.safetensors"
    if not path.is_file():
        ckpt = load_checkpoint(checkpoint)
        model = load_model(ckpt, "cpu")
        resolution = ckpt.resolution
        data = open_dataset(domain, "train", resolution, size=images)
        save_fisher(path, estimate_fisher(model, data, images), ckpt, domain, images)
    return path


def compare(
    groups: Sequence[Sequence[str | os.PathLike]],
    domain: str = "real",
    methods: Sequence[str] = METHODS,
    images: int = 100,
    resolution: tuple[int, int] = (96, 192),
    fisher_domain: str = "synthetic",
    align: bool = False,
    val_seed: int = 0,
) -> list[dict[str, Any]]:
    """Each method's mIoU on each group of checkpoints (the first of a group is the anchor).

    Rows also give the group's labels, its anchor's mIoU and its best single model's.
    ``align`` matches each group's decoders to its anchor's first (weight matching).
    """
    methods = check_names(methods, RUNNABLE, "method")
    settings = (domain, methods, images, resolution, fisher_domain, align, val_seed)
    return _compare([path_list(g, "each group") for g in groups], *settings)[0]


def _compare(
    groups: Sequence[Sequence[str | os.PathLike]],
    domain: str,
    methods: Sequence[str],
    images: int,
    resolution: tuple[int, int],
    fisher_domain: str,
    align: bool,
    val_seed: int,
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """:func:`compare`'s rows, and each checkpoint's own mIoU. Every merge with one anchor is
    written into the same module, so a comparison builds one model per checkpoint and anchor."""
    data = val_set(domain, images, resolution, val_seed)
    paths = sorted({str(p) for group in groups for p in group})
    models = {p: load_model(p, "cpu") for p in paths}
    fishers = {p: fisher_file(p, fisher_domain) for p in paths} if "fisher" in methods else {}
    merged: dict[str, nn.Module] = {}
    rows = []
    with _scoring(len(paths) + len(groups) * len(methods)) as bar:
        alone = {}
        for p in paths:
            alone[p] = evaluate(models[p], data, domain).miou
            bar.update()
        for group in groups:
            group = [str(p) for p in group]
            fisher = [fishers[p] for p in group] if fishers else None
            pool = Pool(group, device="cpu", fisher=fisher, align=0 if align else None)
            row: dict[str, Any] = {
                "models": list(pool.labels),
                "anchor": pool.labels[0],
                "anchor_miou": alone[group[0]],
                "best_single": max(alone[p] for p in group),
            }
            for method in methods:
                run = _method_models(pool, [models[p] for p in group], method, merged)
                row[method] = evaluate(run, data, domain).miou
                bar.update()
            rows.append(row)
    return rows, alone


def _method_models(
    pool: Pool, models: list[nn.Module], method: str, kept: dict[str, nn.Module]
) -> list[nn.Module]:
    """What to run for ``method``: every model for the ensemble, else the one merged model
    (written into ``kept``'s module for the pool's anchor, built there on first use)."""
    if method == "ensemble":
        return models
    anchor = str(pool.checkpoints[0].path)
    kept[anchor] = merged_model(pool, model=kept.get(anchor), method=method)
    return [kept[anchor]]


def add_one_at_a_time(
    checkpoints: Sequence[str | os.PathLike],
    domain: str = "real",
    methods: Sequence[str] = METHODS,
    images: int = 100,
    resolution: tuple[int, int] = (96, 192),
    fisher_domain: str = "synthetic",
    align: bool = False,
    val_seed: int = 0,
) -> list[dict[str, Any]]:
    """One row per number of models k: the k-th model's own mIoU and each method's on k models.

    ``checkpoints`` must be in the order to add them (best first: it is the anchor).
    """
    paths = path_list(checkpoints)
    methods = check_names(methods, RUNNABLE, "method")
    groups = [paths[:k] for k in range(1, len(paths) + 1)]
    settings = (domain, methods, images, resolution, fisher_domain, align, val_seed)
    rows, alone = _compare(groups, *settings)
    for k, row in enumerate(rows, start=1):
        row["added"] = row["models"][-1]
        row["added_miou"] = alone[paths[k - 1]]
        row["models"] = k
    return rows


def multi_target(
    adapted: Sequence[str | os.PathLike],
    union: str | os.PathLike | None,
    domains: Sequence[str] = ("real", "foggy", "night"),
    bn_rules: Sequence[str] = ("linear", "gaussian", "gaussian-counts", "anchor"),
    images: int = 100,
    resolution: tuple[int, int] = (96, 192),
    val_seed: int = 0,
    reestimate: int = 0,
) -> list[dict[str, Any]]:
    """Models adapted to different targets, merged with each BN rule (parameters: isotropic).

    Rows: each adapted model alone, each merge, and the model trained on the union of the
    targets (the multi-target paper's data-combination baseline); mIoU on every domain and
    their mean. ``reestimate``: one more merge, its BN statistics measured on that many
    unlabelled train images of each target (AdaBN, :mod:`~lwmm_lab.analysis.adabn`): not
    data-free, so the reference for what a rule on the checkpoints' statistics could reach.
    """
    rows = []
    bn_rules = check_names(bn_rules, BN_RULES, "BN rule")
    domains = check_dataset_names(domains)
    reestimate = _image_count(reestimate)
    data = {d: val_set(d, images, resolution, val_seed) for d in domains}
    adapted = path_list(adapted, "adapted")
    bar = _scoring(len(adapted) + len(bn_rules) + (reestimate > 0) + (union is not None))

    def row(name: str, kind: str, model: nn.Module) -> dict[str, Any]:
        miou = {d: evaluate(model, data[d], d).miou for d in data}
        bar.update()
        return {"name": name, "kind": kind, **miou, "mean": sum(miou.values()) / len(miou)}

    with bar:
        pool = Pool(adapted, device="cpu")
        for label, path in zip(pool.labels, adapted, strict=True):
            rows.append(row(label, "adapted", load_model(path, "cpu")))
        for rule in bn_rules:
            merged = merged_model(pool, method="isotropic", bn=rule)
            rows.append(row(f"merge, BN {rule}", "merged", merged))
        if reestimate:
            unlabelled = train_images(domains, reestimate, resolution)
            adapted_bn = reestimate_bn(merged_model(pool, method="isotropic"), unlabelled)
            rows.append(row("merge, BN re-estimated", "merged, target images", adapted_bn))
        if union is not None:
            rows.append(row("union of targets", "baseline", load_model(union, "cpu")))
    return rows


def heads_and_decoders(
    anchor: str | os.PathLike,
    others: Sequence[str | os.PathLike],
    domain: str = "real",
    methods: Sequence[str] = METHODS,
    images: int = 100,
    resolution: tuple[int, int] = (96, 192),
    fisher_domain: str = "synthetic",
    val_seed: int = 0,
) -> list[dict[str, Any]]:
    """The anchor, each other model alone, and each method merging all of them.

    Every row has the mIoU and the inference time per image (ms); merges run the anchor's
    architecture, the ensemble runs every model.
    """
    methods = check_names(methods, RUNNABLE, "method")
    data = val_set(domain, images, resolution, val_seed)
    paths = [str(anchor), *path_list(others, "others")]
    models = [load_model(p, "cpu") for p in paths]
    fishers = [fisher_file(p, fisher_domain) for p in paths] if "fisher" in methods else None
    pool = Pool(paths, device="cpu", fisher=fishers)
    rows = []
    with _scoring(len(paths) + len(methods)) as bar:
        for label, model in zip(pool.labels, models, strict=True):  # run@step, unique
            rows.append(_row(label, "individual", [model], data, domain))
            bar.update()
        kept: dict[str, nn.Module] = {}
        for method in methods:
            run = _method_models(pool, models, method, kept)
            rows.append(_row(method, "merged", run, data, domain))
            bar.update()
    return rows


def _row(name: str, kind: str, models: list[nn.Module], data: Any, domain: str) -> dict[str, Any]:
    return {
        "name": name,
        "kind": kind,
        "miou": evaluate(models, data, domain).miou,
        "models": len(models),
        "ms_per_image": inference_ms(models, data.tensors[0][:16]),
    }


def inference_ms(models: Sequence[nn.Module], images: torch.Tensor, repeats: int = 3) -> float:
    """Median milliseconds per image of running every model (the ensemble's cost)."""
    times = []
    with torch.no_grad(), eval_mode(models):
        x = normalize(images)
        for m in models:
            forward(m, x)  # warm up
        for _ in range(repeats):
            started = time.perf_counter()
            for m in models:
                forward(m, x)
            times.append((time.perf_counter() - started) * 1000 / len(images))
    return sorted(times)[len(times) // 2]


#: The panoptic merges' methods: the paper's Table 6 method and its two baselines.
PANOPTIC_METHODS = ("isotropic", "fisher", "layerwise")


def semantic_into_panoptic(
    anchor: str | os.PathLike,
    others: Sequence[str | os.PathLike],
    domain: str = "real",
    methods: Sequence[str] = PANOPTIC_METHODS,
    images: int = 100,
    resolution: tuple[int, int] = (96, 192),
    fisher_domain: str = "synthetic",
    val_seed: int = 0,
) -> list[dict[str, Any]]:
    """The panoptic anchor alone, then each method merging it with each semantic model alone
    and with all of them (the paper's Table 6), scored on ``domain``'s val images.

    Rows: ``name``, ``method``, ``semantic`` (the merged semantic models' short names: a zoo
    run's folder, else the file's stem), ``pq``,
    ``sq``, ``rq``, ``things``, ``stuff`` (PQ over those classes) and ``miou`` (0-100).
    """
    methods = check_names(methods, MERGE_METHODS, "method")
    data = val_set(domain, images, resolution, val_seed, instances=True)
    paths = [str(anchor), *path_list(others, "others")]
    anchor_model = load_model(paths[0], "cpu")
    require_panoptic(anchor_model, paths[0])
    fishers = [fisher_file(p, fisher_domain) for p in paths] if "fisher" in methods else None
    names = _short_labels(paths)
    others_at = list(range(1, len(paths)))
    sets = [[k] for k in others_at] + ([others_at] if len(others_at) > 1 else [])
    merged = None  # every pool has the same anchor: one module takes every merge
    with _scoring(1 + len(sets) * len(methods)) as bar:
        rows = [_panoptic_row("anchor", "anchor", [], anchor_model, data)]
        bar.update()
        for which in sets:
            members = [0, *which]
            pool = Pool(_pick(paths, members), device="cpu", fisher=_pick(fishers, members))
            semantic = _pick(names, which)
            for method in methods:
                merged = merged_model(pool, model=merged, method=method)
                name = f"{method} + {' + '.join(semantic)}"
                rows.append(_panoptic_row(name, method, semantic, merged, data))
                bar.update()
    return rows


def merge_split(
    anchor: str | os.PathLike,
    others: Sequence[str | os.PathLike],
    domain: str = "real",
    images: int = 100,
    resolution: tuple[int, int] = (96, 192),
    val_seed: int = 0,
    reestimate: int = 100,
) -> dict[str, float]:
    """Where the layer-wise merge of ``anchor`` with ``others`` (the default schedule) gains
    or loses.

    ``changed`` is the share of pixels (0-1) whose class the merge changes; ``turned_wrong``
    and ``turned_right`` the shares of labelled pixels it turns from right to wrong and back;
    ``margin`` the anchor's mean top-1 minus top-2 class probability: a model unsure of its
    classes has more pixels for a small change to flip. ``decoder_share`` is the others'
    weight (0-1) in the decoder's first shared tensor (less after it; 0 where they share
    none, another decoder). ``anchor_miou``, ``miou`` and ``encoder_miou`` score the anchor,
    the merge, and the merge's encoder with the anchor's decoder and heads (``anchor_pq``,
    ``pq`` and ``encoder_pq`` too for a panoptic anchor). The encoder is what
    :func:`~lwmm_lab.analysis.discrepancy.region_of` names so: smp's ``encoder.*``, mmseg's
    ``backbone.*``.

    The BatchNorm statistics: ``variance_ratio`` and ``anchor_variance_ratio`` are the
    :func:`~lwmm_lab.analysis.adabn.bn_variance_ratio` of the merge's decoder and the anchor's
    on the val images (below 1: the layers divide by more variance than their inputs have).
    ``reestimated_miou`` (``_pq``) and ``anchor_reestimated_miou`` (``_pq``) score both with
    their statistics measured anew on the first ``reestimate`` train images of ``domain``,
    unlabelled (AdaBN; 0 leaves these out): what the merge is worth once its statistics fit
    its weights, against the anchor given the same. ``variance_reestimated_miou`` (``_pq``)
    scores the merge with only its variances measured so, its means as merged: whether the
    loss is in the variances (REPAIR's collapse) or in the means.
    """
    paths = [str(anchor), *path_list(others, "others")]
    reestimate = _image_count(reestimate)
    anchor_model = load_model(paths[0], "cpu").eval()
    panoptic = is_panoptic(anchor_model)
    data = val_set(domain, images, resolution, val_seed, instances=panoptic)
    batches = data.tensors[0].split(16)  # as evaluate's: all 100 images at once held 0.6 GB more
    with torch.no_grad():
        top = [class_probabilities([anchor_model], x).topk(2, 1).values for x in batches]
    margin = torch.cat([t[:, 0] - t[:, 1] for t in top]).mean()
    pool = Pool(paths, device="cpu")
    plan = make_plan(pool)
    shared = [e.j for e in plan.layout.entries if e.j and region_of(e.name) != "encoder"]
    share = 1 - float(plan.weights[shared[0] - 1, plan.anchor]) if shared else 0.0
    merged = merged_model(pool)
    before, after = (torch.cat([predict(m, x) for x in batches]) for m in (anchor_model, merged))
    label = data.tensors[1]
    labelled = (label != L.IGNORE).double().sum()
    split = {
        "changed": round(float((before != after).double().mean()), 4),
        "turned_wrong": round(float(((before == label) & (after != label)).sum() / labelled), 4),
        "turned_right": round(float(((before != label) & (after == label)).sum() / labelled), 4),
        "margin": round(float(margin), 4),
        "decoder_share": round(share, 4),
    }
    for prefix, model in (("anchor_", anchor_model), ("", merged)):
        ratio = bn_variance_ratio(model, data.tensors[0], "decoder")
        split[f"{prefix}variance_ratio"] = round(ratio, 4)

    def scores(model: nn.Module, prefix: str) -> dict[str, float]:
        if panoptic:
            pq = evaluate_panoptic(model, data)
            return {f"{prefix}pq": round(pq.pq, 4), f"{prefix}miou": pq.extra["miou"]}
        return {f"{prefix}miou": evaluate(model, data).miou}

    split |= scores(anchor_model, "anchor_") | scores(merged, "")
    if reestimate:
        unlabelled = train_images(domain, reestimate, resolution)
        anchor_fresh = reestimate_bn(load_model(paths[0], "cpu"), unlabelled)
        fresh = reestimate_bn(merged_model(pool), unlabelled)
        split |= scores(anchor_fresh, "anchor_reestimated_") | scores(fresh, "reestimated_")
        # A pass measures the same statistics whatever the running ones were, so the variances
        # alone are the re-estimated merge's with the merged means put back (no second pass).
        means = {k: v for k, v in merged.state_dict().items() if k.endswith(".running_mean")}
        fresh.load_state_dict(means, strict=False)
        split |= scores(fresh, "variance_reestimated_")
    rest = {k: v for k, v in anchor_model.state_dict().items() if region_of(k) != "encoder"}
    merged.load_state_dict(rest, strict=False)
    return split | scores(merged, "encoder_")


def _image_count(reestimate: int) -> int:
    """``reestimate`` as the number of unlabelled images to measure BN statistics on."""
    if check_whole("reestimate", reestimate) < 0:
        raise LwmmError(f"reestimate={reestimate}: give a number of images per target, or 0")
    return int(reestimate)


def _short_labels(paths: list[str]) -> list[str]:
    """Row names for checkpoints: a zoo run's folder (``runs/RUN/step-N``), else the file's
    stem; where two share one (two steps of one run), their ``run@step`` labels instead."""
    short = [
        Path(p).parent.name if Path(p).stem.startswith("step-") else Path(p).stem for p in paths
    ]
    return unique_labels(
        [
            s if short.count(s) == 1 else peek_checkpoint(p).label
            for s, p in zip(short, paths, strict=True)
        ]
    )


def _pick(items: list[Any] | None, which: list[int]) -> list[Any] | None:
    return None if items is None else [items[k] for k in which]


def _panoptic_row(
    name: str, method: str, semantic: list[str], model: nn.Module, data: Any
) -> dict[str, Any]:
    scores = evaluate_panoptic(model, data)
    return {
        "name": name,
        "method": method,
        "semantic": semantic,
        **{k: round(getattr(scores, k), 4) for k in ("pq", "sq", "rq")},
        "things": round(scores.things["pq"], 4),
        "stuff": round(scores.stuff["pq"], 4),
        "miou": scores.extra["miou"],
    }
