"""BatchNorm statistics measured anew on unlabelled target images (AdaBN: Li et al., 2016).

A checkpoint's BN running statistics describe the domain it was trained on. Given a few
unlabelled images of the target, a merged model can have its statistics measured there
instead of merged from the checkpoints'. That needs target data, which the multi-target
paper's rules do not, so it is the reference that says what those rules leave on the table,
and on a linear path it tells a fall in the statistics from one in the weights (REPAIR's
reset, Jordan et al., ICLR 2023).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lwmm_lab.analysis.discrepancy import region_of
from lwmm_lab.analysis.evaluation import eval_mode, forward, normalize
from lwmm_lab.data.batches import check_images, read_samples
from lwmm_lab.data.datasets import check_dataset_names, dataset_label, open_dataset
from lwmm_lab.engine.panoptic import is_panoptic
from lwmm_lab.errors import LwmmError, check_count, first_line

#: What :func:`reestimate_bn` can measure anew: both running statistics, or one of them.
STATISTICS = {
    "both": ("running_mean", "running_var"),
    "mean": ("running_mean",),
    "var": ("running_var",),
}


def reestimate_bn(
    model: nn.Module,
    images: Tensor,
    batch_size: int = 50,
    statistics: str = "both",
    layers: Sequence[str] | None = None,
) -> nn.Module:
    """Give every BatchNorm layer of ``model`` the statistics of its inputs over ``images``
    (unlabelled, in [0, 1]), in place: the mean over the batches of each batch's mean and
    (unbiased) variance, as ``momentum=None`` accumulates them; exact with one batch. The
    batches are as even as they come (:func:`even_batches`). The weights stay; the model is
    left in eval mode. A panoptic model runs its instance heads too; a layer the pass never
    reaches keeps the statistics it had. ``statistics="var"`` measures only the variances
    (each layer keeps its running mean), ``"mean"`` only the means: which of the two a
    merge's loss is in. ``layers``: module-name prefixes (``"encoder"``,
    ``"decoder.blocks.4"``); only the BN layers under them are measured, the others run with
    the statistics they have: which layers' statistics a merge's loss is in.

    What ``torch.optim.swa_utils.update_bn`` computes (a test compares them), with four
    differences: only the BN layers run in training mode, so a dropout before one (DeepLabV3+'s
    ASPP) stays off and the layer measures the features inference gives it, the same on every
    call (with dropout on, the zoo's DeepLabV3+ measures a variance 1.2 times that); the inputs
    go through :func:`~lwmm_lab.analysis.evaluation.forward`, which pads sides an FPN or
    DeepLabV3+ cannot take; a layer left unreached is not left reset (zero mean, unit
    variance); and when a pass fails (out of memory, say) every layer gets its statistics and
    momentum back, so the model is as it was."""
    check_images(images, "reestimate_bn")
    if not len(images):
        raise LwmmError("reestimate_bn: no images to measure BN statistics on")
    batch_size = check_count("batch_size", batch_size)
    if statistics not in STATISTICS:
        raise LwmmError(f"statistics={statistics!r}: give {', '.join(STATISTICS)}")
    kept_anyway = set(STATISTICS["both"]) - set(STATISTICS[statistics])
    norms = list(_norm_layers(model, layers).values())
    kept = [(m.momentum, {n: getattr(m, n).clone() for n in _BUFFERS}) for m in norms]
    was_training, finished = model.training, False
    try:
        model.eval()
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        _run_over(model, images, batch_size)
        finished = True
    except ValueError as e:  # one value per channel: DeepLabV3+'s image pooling, one image
        raise LwmmError(
            f"reestimate_bn: {first_line(e)}: measure on more than {len(images)} image(s)"
        ) from e
    finally:
        for m, (momentum, values) in zip(norms, kept, strict=True):
            m.momentum = momentum
            reached = finished and m.num_batches_tracked > 0
            for name, value in values.items():
                if not reached or name in kept_anyway:
                    getattr(m, name).copy_(value)
        model.train(was_training and not finished)
    return model


def bn_variance_ratio(
    model: nn.Module, images: Tensor, region: str | None = None, batch_size: int = 16
) -> float:
    """How the variance of each BatchNorm layer's inputs over ``images`` (unlabelled, in
    [0, 1]; the model in eval mode) compares with the running variance the layer divides by:
    the geometric mean of their ratio over channels and layers, 1 where the statistics fit the
    features, below 1 where the features vary less than the layer assumes. Only the layers of
    ``region`` (encoder, decoder or head, as :func:`~lwmm_lab.analysis.discrepancy.region_of`
    names them) when given; NaN when there are none. :func:`bn_variance_ratios` gives it
    layer by layer.

    A merge of decoders trained apart computes features of less variance than either computed
    (REPAIR's variance collapse, Jordan et al., ICLR 2023), while merged running statistics
    still describe the checkpoints': this measures that mismatch. After :func:`reestimate_bn`
    on the same images in one batch it is 1 within 1/n for n values per channel (BatchNorm in
    training mode normalises by the biased variance)."""
    logs = _log_ratios(model, images, region, batch_size, "bn_variance_ratio")
    return math.exp(float(torch.stack(list(logs.values())).mean())) if logs else math.nan


def bn_variance_ratios(
    model: nn.Module, images: Tensor, region: str | None = None, batch_size: int = 16
) -> dict[str, float]:
    """:func:`bn_variance_ratio` layer by layer: for each BatchNorm layer the pass reaches (of
    ``region`` when given), by module name in the order the pass reaches them, the geometric
    mean over channels of its inputs' variance over its running variance. Where in the model
    the features vary less than the statistics assume: a merge's collapse, depth by depth."""
    logs = _log_ratios(model, images, region, batch_size, "bn_variance_ratios")
    return {name: math.exp(float(log)) for name, log in logs.items()}


def _log_ratios(
    model: nn.Module, images: Tensor, region: str | None, batch_size: int, caller: str
) -> dict[str, Tensor]:
    """Per BN layer reached, the mean over channels of the log of its inputs' unbiased
    variance over ``images`` (eval mode) over its running variance; errors name ``caller``."""
    check_images(images, caller)
    if not len(images):
        raise LwmmError(f"{caller}: no images to measure variances on")
    batch_size = check_count("batch_size", batch_size)
    norms = {
        name: m
        for name, m in _norm_layers(model).items()
        if region is None or region_of(name) == region
    }
    sums: dict[str, tuple[int, Tensor, Tensor]] = {}

    def record(name: str, x: Tensor) -> None:
        x = x.detach().double().transpose(0, 1).flatten(1)  # (channels, values)
        n, s, q = sums.get(name, (0, 0.0, 0.0))
        sums[name] = (n + x.shape[1], s + x.sum(1), q + x.square().sum(1))

    hooks = [
        m.register_forward_pre_hook(lambda _, args, name=name: record(name, args[0]))
        for name, m in norms.items()
    ]
    try:
        with eval_mode(model):
            _run_over(model, images, batch_size)
    finally:
        for hook in hooks:
            hook.remove()
    if one := next((name for name, (n, _, _) in sums.items() if n < 2), None):
        raise LwmmError(
            f"{caller}: layer '{one}' sees one value per channel over "
            f"{len(images)} image(s), which has no variance: give more images"
        )
    return {
        name: (((q - s.square() / n) / (n - 1)) / norms[name].running_var.double()).log().mean()
        for name, (n, s, q) in sums.items()
    }


def _norm_layers(
    model: nn.Module, prefixes: Sequence[str] | None = None
) -> dict[str, nn.modules.batchnorm._BatchNorm]:
    """The model's BatchNorm layers that keep running statistics, by module name; with
    ``prefixes``, those under one of them (each must hold one)."""
    norms = {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    }
    if prefixes is None:
        return norms
    if isinstance(prefixes, str):
        prefixes = [prefixes]
    if not prefixes:
        raise LwmmError("layers: no module-name prefix given (None measures every BN layer)")
    under = {p: [n for n in norms if n == p or n.startswith(f"{p}.")] for p in prefixes}
    for prefix, names in under.items():
        if not names:
            raise LwmmError(f"layers: {prefix!r} holds no BatchNorm layer of the model")
    return {n: norms[n] for names in under.values() for n in names}


def even_batches(images: Tensor, batch_size: int) -> tuple[Tensor, ...]:
    """``images`` in the fewest batches of at most ``batch_size``, their sizes differing by
    at most one, and none of a single image where there are more (with ``batch_size`` 1 or
    2, batches then hold one or two over it): 101 images in batches of 50 are 34, 34 and 33,
    not 50, 50 and 1. A BatchNorm layer in training mode weighs each batch alike, and cannot
    take a batch whose maps are one value per channel (DeepLabV3+'s image pooling of one)."""
    sections = min(math.ceil(len(images) / batch_size), max(1, len(images) // 2))
    return images.tensor_split(sections)


def _run_over(model: nn.Module, images: Tensor, batch_size: int) -> None:
    """One pass of ``images`` through ``model`` in :func:`even_batches`, without gradients,
    as the model's mode has it: a panoptic model through its instance heads too, so their
    layers see them."""
    call = model.forward_panoptic if is_panoptic(model) else None
    device = next(model.parameters()).device
    with torch.no_grad():
        for batch in even_batches(images, batch_size):
            forward(model, normalize(batch.to(device)), call)


#: A BN layer's buffers that :func:`reestimate_bn` resets and measures.
_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def reestimation_record(
    domains: Sequence[str], images: int, resolution: tuple[int, int]
) -> dict[str, Any]:
    """What a merged file's provenance says its BN statistics were measured on (the key
    ``bn_reestimated``, as ``lwmm merge --reestimate`` and the lab's *save* write it)."""
    return {"domains": list(domains), "images": images, "resolution": list(resolution)}


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
