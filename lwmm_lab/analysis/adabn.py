"""BatchNorm statistics measured anew on unlabelled target images (AdaBN: Li et al., 2016).

A checkpoint's BN running statistics describe the domain it was trained on. Given a few
unlabelled images of the target, a merged model can have its statistics measured there
instead of merged from the checkpoints'. That needs target data, which the multi-target
paper's rules do not, so it is the reference that says what those rules leave on the table,
and on a linear path it tells a fall in the statistics from one in the weights (REPAIR's
reset, Jordan et al., ICLR 2023).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lwmm_lab.analysis.evaluation import check_images, forward, normalize, read_samples
from lwmm_lab.data.datasets import check_dataset_names, dataset_label, open_dataset
from lwmm_lab.errors import LwmmError, check_count


def reestimate_bn(model: nn.Module, images: Tensor, batch_size: int = 50) -> nn.Module:
    """Give every BatchNorm layer of ``model`` the statistics of its inputs over ``images``
    (unlabelled, in [0, 1]), in place: the mean over the batches of each batch's mean and
    (unbiased) variance, as ``momentum=None`` accumulates them; exact with one batch. The
    weights stay; the model is left in eval mode.

    What ``torch.optim.swa_utils.update_bn`` computes (a test compares them), with two
    differences: the inputs go through :func:`~lwmm_lab.analysis.evaluation.forward`, which
    pads sides an FPN or DeepLabV3+ cannot take, and the layers' momentum is restored even
    when a pass fails (out of memory, say), so a model is never left averaging for ever."""
    check_images(images, "reestimate_bn")
    if not len(images):
        raise LwmmError("reestimate_bn: no images to measure BN statistics on")
    batch_size = check_count("batch_size", batch_size)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    device = next(model.parameters()).device
    try:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
        model.train()
        with torch.no_grad():
            for batch in images.split(batch_size):
                forward(model, normalize(batch.to(device)))
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        model.eval()
    return model


def train_images(domains: str | Sequence[str], images: int, resolution: tuple[int, int]) -> Tensor:
    """The first ``images`` images of each domain's train split, without their labels (a GTA5
    or SYNTHIA folder has one split: its first images). Several domains are interleaved, one
    image of each in turn, so every batch of :func:`reestimate_bn` mixes them: batches of one
    domain each would average the domains' variances and miss the spread of their means (what
    the multi-target paper's Gaussian rule adds back)."""
    domains = check_dataset_names(domains)
    each = []
    for d in domains:
        dataset = open_dataset(d, "train", resolution, images)
        each.append(read_samples(dataset, images, f"{dataset_label(d)} train images")[0])
    turns = sorted((i, k) for k, t in enumerate(each) for i in range(len(t)))
    return torch.stack([each[k][i] for i, k in turns])
