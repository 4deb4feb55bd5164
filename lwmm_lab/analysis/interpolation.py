"""The straight line between two models in weight space, and the barrier on it.

Along θ(t) = (1 − t)·θ_a + t·θ_b the merge of the pair is scored at evenly spaced t. Two
models in one basin (fine-tuned from one source model) stay good all the way; two whose
decoders were trained apart fall in between. The *barrier* is the largest drop below the
straight line that joins the endpoints' scores (linear mode connectivity: Frankle et al.,
ICML 2020). Weight matching (Git Re-Basin) aims to remove a barrier by permuting one model's
channels first; ``align=True`` measures whether it does. The BN running statistics follow a
BN rule of :mod:`~lwmm_lab.engine.methods`: ``linear`` interpolates means and variances,
``gaussian`` adds the spread of the means (the moment-matched mixture). Or they are measured
anew at each point on unlabelled images of the target (``reestimate``: AdaBN, see
:mod:`~lwmm_lab.analysis.adabn`), which tells whether a fall is in the statistics the
checkpoints hold or in the weights.

Every point is the ``weighted`` merge of the pair, re-merged into one module in place, so a
path costs its evaluations; nothing is cached (a path of 11 points on 100 images of one domain
is a few seconds on a CPU).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from lwmm_lab.analysis.adabn import reestimate_bn, train_images
from lwmm_lab.analysis.evaluation import evaluate, val_set
from lwmm_lab.data.datasets import check_dataset_name, check_dataset_names
from lwmm_lab.engine.checkpoints import peek_checkpoint
from lwmm_lab.engine.merge import make_plan
from lwmm_lab.engine.model import merge_target
from lwmm_lab.engine.pool import Pool
from lwmm_lab.errors import LwmmError, check_count, check_image_size, check_whole
from lwmm_lab.progress import progress_bar


@dataclass(frozen=True)
class LinearPath:
    """The mIoU along the path: ``miou[domain][k]`` at ``t[k]``; t = 0 is model ``a``
    (``labels[0]``), t = 1 is model ``b``, its channels aligned to ``a``'s when ``aligned``."""

    labels: tuple[str, str]
    t: tuple[float, ...]
    miou: dict[str, tuple[float, ...]]
    bn: str = "linear"
    aligned: bool = False
    #: The domain whose train images re-estimated each point's BN statistics, if any.
    reestimated_on: str | None = None

    def barrier(self, domain: str | None = None) -> float:
        """The height of the barrier on ``domain`` (default: the first scored), in mIoU
        points: the largest drop below the straight line between the endpoints' scores,
        0 when the path never falls below it."""
        values = self.scores(domain)
        first, last = values[0], values[-1]
        drops = ((1 - t) * first + t * last - m for t, m in zip(self.t, values, strict=True))
        return max(0.0, *drops)

    def scores(self, domain: str | None = None) -> tuple[float, ...]:
        """The mIoU at each t on ``domain`` (default: the first scored); a domain the path
        was not scored on is refused by name."""
        if domain is None:
            domain = next(iter(self.miou))
        if domain not in self.miou:
            raise LwmmError(
                f"domain '{domain}' was not scored on this path (it scored {', '.join(self.miou)})"
            )
        return self.miou[domain]

    def to_json(self) -> dict[str, Any]:
        """The path and, per domain, its barrier and its lowest point."""
        lowest = {d: min(zip(v, self.t, strict=True)) for d, v in self.miou.items()}
        return asdict(self) | {
            "barrier": {d: round(self.barrier(d), 4) for d in self.miou},
            "lowest": {d: {"miou": m, "t": t} for d, (m, t) in lowest.items()},
        }


def linear_path(
    a: str | os.PathLike,
    b: str | os.PathLike,
    steps: int = 11,
    domains: Sequence[str] | str = ("real",),
    images: int = 100,
    resolution: tuple[int, int] | None = None,
    bn: str = "linear",
    align: bool = False,
    device: str = "auto",
    reestimate: str | None = None,
    progress: bool = True,
) -> LinearPath:
    """Score ``steps`` evenly spaced points of the straight line from ``a`` to ``b`` on the
    first ``images`` val images of each of ``domains`` (synthetic domains or datasets on disk,
    as in :func:`~lwmm_lab.analysis.evaluation.val_set`), at ``resolution`` (default: the one
    ``a`` records, else 128 x 256). ``align``: ``b``'s decoder channels are first matched to
    ``a``'s. ``reestimate``: a domain whose first ``images`` train images (unlabelled; a GTA5
    or SYNTHIA folder's, all one split) give each point's BN statistics anew
    (:func:`~lwmm_lab.analysis.adabn.reestimate_bn`), the endpoints' too. The two models must
    have the same tensors: a path between another class set or another decoder would be the
    anchor's head on a mix, not a path, and is refused by name. ``progress``: a bar over the
    points, shown once the path has taken two seconds.
    """
    steps = check_whole("steps", steps)
    if steps < 2:
        raise LwmmError(f"steps={steps}: give at least 2 (the two models themselves)")
    domains = check_dataset_names(domains)
    if reestimate is not None:
        reestimate = check_dataset_name(reestimate)
        if bn != "linear":  # an option that changes nothing misleads more than an error
            raise LwmmError(
                f"bn={bn!r} has no effect with reestimate: the statistics are measured anew"
            )
    images = check_count("images", images)
    if not isinstance(align, bool):
        raise LwmmError(f"align={align!r}: give True or False")
    if resolution is None:
        resolution = peek_checkpoint(a).resolution
    resolution = check_image_size(resolution)
    pool = Pool([a, b], device=device, align=0 if align else None)
    for k in (0, 1):  # each model's own tensors, its head included, are the other's too
        own, lacking = pool.unshared(k)
        if own:
            more = f" and {len(own) - 1} more" if len(own) > 1 else ""
            raise LwmmError(
                f"{lacking[0]} lacks or shapes differently '{own[0]}'{more} of "
                f"{pool.labels[k]}: a linear path joins two models of one architecture and "
                "class set"
            )
    make_plan(pool, method="weighted", weights=(1.0, 0.0), bn=bn)  # a bad BN rule, before work
    model = merge_target(pool, 0)
    sets = {d: val_set(d, images, resolution, device=pool.device) for d in domains}
    unlabelled = None if reestimate is None else train_images(reestimate, images, resolution)
    ts = [round(t, 6) for t in np.linspace(0.0, 1.0, steps).tolist()]
    miou: dict[str, list[float]] = {d: [] for d in domains}
    bar = progress_bar(ts, desc="path", unit="point", disable=not progress, delay=2, leave=False)
    for t in bar:
        make_plan(pool, method="weighted", weights=(1.0 - t, t), bn=bn).run(into=model)
        if unlabelled is not None:
            reestimate_bn(model, unlabelled)
        for domain, data in sets.items():
            miou[domain].append(evaluate(model, data, domain).miou)
    return LinearPath(
        labels=(pool.labels[0], pool.labels[1]),
        t=tuple(ts),
        miou={d: tuple(v) for d, v in miou.items()},
        bn=bn,
        aligned=align,
        reestimated_on=reestimate,
    )
