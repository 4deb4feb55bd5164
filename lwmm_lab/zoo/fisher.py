"""A diagonal Fisher estimate on labelled source data, the input of the ``fisher`` merge.

For each image (one sample), the gradient of its mean pixel log-likelihood of the labels is
taken with respect to every parameter, squared, and averaged over images: the empirical
diagonal Fisher. BatchNorm runs in eval mode (fixed statistics), and BN buffers get no Fisher:
the merge combines them by its BN rule. Labels are the dataset's (source domains have them),
which is why the estimate is on source data.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from lwmm_lab._version import __version__
from lwmm_lab.analysis.evaluation import (
    eval_mode,
    forward,
    model_classes,
    model_list,
    normalize,
)
from lwmm_lab.data import labels as L
from lwmm_lab.data.batches import check_batch, check_dataset, check_sample
from lwmm_lab.engine.checkpoints import Checkpoint, save_checkpoint
from lwmm_lab.errors import check_count
from lwmm_lab.progress import progress_bar


def estimate_fisher(model: nn.Module, dataset: Dataset, images: int = 64) -> dict[str, Tensor]:
    """The mean squared per-image gradient of each parameter, over ``images`` images, in eval
    mode (see :func:`~lwmm_lab.analysis.evaluation.eval_mode`)."""
    images = check_count("images", images)
    (model,) = model_list(model)  # a path or a checkpoint is refused, saying how to load one
    source = check_dataset(dataset)
    device = next(model.parameters()).device
    to_index = torch.from_numpy(L.to_model_index(model_classes(model)).astype(np.int64)).to(device)
    params = dict(model.named_parameters())
    fisher = {name: torch.zeros_like(p) for name, p in params.items()}
    count = min(images, len(dataset))
    with eval_mode(model):
        for i in progress_bar(range(count), desc="fisher", leave=False, unit="image"):
            sample = dataset[i]
            check_sample(sample, source)
            x, y = sample[:2]
            check_batch(x[None], y[None], source)
            logits = forward(model, normalize(x[None].to(device)))
            target = to_index[y[None].to(device)]
            if not bool((target != L.IGNORE).any()):
                continue
            loss = F.cross_entropy(logits, target, ignore_index=L.IGNORE)
            grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
            for (name, _), g in zip(params.items(), grads, strict=True):
                if g is not None:
                    fisher[name] += g.detach().square()
    return {name: f / max(count, 1) for name, f in fisher.items()}


def save_fisher(
    path: str | os.PathLike, fisher: dict[str, Tensor], source: Checkpoint, domain: str, images: int
) -> Path:
    """Write a Fisher estimate as safetensors, keyed like the checkpoint's parameters."""
    provenance = {
        "lwmm_lab": __version__,
        "fisher": {"checkpoint": str(source.path), "domain": domain, "images": images},
    }
    protect = (source.path,) if source.path is not None else ()
    return save_checkpoint(path, fisher, source.spec, provenance, protect=protect)
