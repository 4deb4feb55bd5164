"""Merging methods compared on the zoo (the paper's Tables 2-4).

- :func:`add_one_at_a_time`: models sorted by target mIoU, the best one the anchor, merged
  with 1, 2, ... M of them by ``isotropic``, ``fisher``, the output ensemble and ``layerwise``.
- :func:`heads_and_decoders`: models with another class set or another decoder than the
  anchor; only the shared tensors can be merged, the rest comes from the anchor. Inference
  time is measured too: a merge costs one forward pass, the ensemble one per model.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lwmm_lab.checkpoints import load_checkpoint
from lwmm_lab.datasets import open_dataset
from lwmm_lab.evaluation import evaluate, normalize, val_set
from lwmm_lab.files import sha256
from lwmm_lab.fisher import estimate_fisher, save_fisher
from lwmm_lab.model import load_model, merged_model
from lwmm_lab.pool import Pool

METHODS = ("isotropic", "fisher", "ensemble", "layerwise")


def fisher_file(
    checkpoint: str | os.PathLike,
    domain: str = "synthetic",
    images: int = 32,
    cache: str | os.PathLike = "data/cache/fisher",
) -> Path:
    """The checkpoint's diagonal Fisher on ``domain``, computed once per content and cached."""
    path = Path(cache) / f"{sha256(checkpoint)[:20]}-{domain}-{images}.safetensors"
    if not path.is_file():
        ckpt = load_checkpoint(checkpoint)
        model = load_model(ckpt, "cpu")
        resolution = tuple(ckpt.provenance.get("resolution", (128, 256)))
        data = open_dataset(domain, "train", resolution, size=images)
        save_fisher(path, estimate_fisher(model, data, images), ckpt, domain, images)
    return path


def add_one_at_a_time(
    checkpoints: Sequence[str | os.PathLike],
    domain: str = "real",
    methods: Sequence[str] = METHODS,
    images: int = 100,
    resolution: tuple[int, int] = (96, 192),
    fisher_domain: str = "synthetic",
) -> list[dict[str, Any]]:
    """One row per number of models k: the k-th model's own mIoU and each method's on k models.

    ``checkpoints`` must be in the order to add them (best first: it is the anchor).
    """
    data = val_set(domain, images, resolution)
    paths = [str(p) for p in checkpoints]
    fishers = [fisher_file(p, fisher_domain) for p in paths] if "fisher" in methods else None
    models = [load_model(p, "cpu") for p in paths]
    rows = []
    for k in range(1, len(paths) + 1):
        pool = Pool(paths[:k], device="cpu", fisher=fishers[:k] if fishers else None)
        row: dict[str, Any] = {
            "models": k,
            "added": pool.labels[-1],
            "added_miou": evaluate(models[k - 1], data, domain).miou,
        }
        for method in methods:
            if method == "ensemble":
                row[method] = evaluate(models[:k], data, domain).miou
            else:
                row[method] = evaluate(merged_model(pool, method=method), data, domain).miou
        rows.append(row)
    return rows


def heads_and_decoders(
    anchor: str | os.PathLike,
    others: Sequence[str | os.PathLike],
    domain: str = "real",
    methods: Sequence[str] = METHODS,
    images: int = 100,
    resolution: tuple[int, int] = (96, 192),
    fisher_domain: str = "synthetic",
) -> list[dict[str, Any]]:
    """The anchor, each other model alone, and each method merging all of them.

    Every row has the mIoU and the inference time per image (ms); merges run the anchor's
    architecture, the ensemble runs every model.
    """
    data = val_set(domain, images, resolution)
    paths = [str(anchor), *map(str, others)]
    models = [load_model(p, "cpu") for p in paths]
    rows = []
    for path, model in zip(paths, models, strict=True):
        rows.append(_row(Path(path).stem, "individual", [model], data, domain))
    fishers = [fisher_file(p, fisher_domain) for p in paths] if "fisher" in methods else None
    pool = Pool(paths, device="cpu", fisher=fishers)
    for method in methods:
        merged = models if method == "ensemble" else [merged_model(pool, method=method)]
        rows.append(_row(method, "merged", merged, data, domain))
    return rows


def _row(name: str, kind: str, models: list[nn.Module], data: Any, domain: str) -> dict[str, Any]:
    return {
        "name": name,
        "kind": kind,
        "miou": evaluate(models if len(models) > 1 else models[0], data, domain).miou,
        "ms_per_image": inference_ms(models, data.tensors[0][:16]),
    }


def inference_ms(models: Sequence[nn.Module], images: torch.Tensor, repeats: int = 3) -> float:
    """Median milliseconds per image of running every model (the ensemble's cost)."""
    times = []
    with torch.no_grad():
        x = normalize(images)
        for m in models:
            m(x)  # warm up
        for _ in range(repeats):
            started = time.perf_counter()
            for m in models:
                m(x)
            times.append((time.perf_counter() - started) * 1000 / len(images))
    return sorted(times)[len(times) // 2]
