"""Every way lwmm_lab combines checkpoints, registered by name in this one place.

Three registries, each entry a short function:

- ``METHODS``: how the M values of one shared tensor become one, given the per-model weights
  at that tensor's depth (``isotropic``, ``weighted``, ``layerwise``, ``fisher``,
  ``task_arithmetic``, ``ties``).
- ``SCHEDULES``: the weight each model gets at each depth j = 1..Np (``uniform``, ``weights``,
  ``layerwise``). A method has a default schedule; any schedule can drive any method, so a
  layer-wise TIES is ``method="ties", schedule="layerwise"``.
- ``BN_RULES``: how BatchNorm running statistics are merged, independently of the method.

Adding a method is one decorated function ``combine(x, w, out, ctx)``: ``x`` is the ``(M, n)``
stack of a block of consecutive tensors (the whole model when it is small), ``w`` the ``(M, n)``
weights of each column (its tensor's depth row of the schedule; every column sums to 1), and it
writes the merged ``(n,)`` values into ``out``. ``ctx.sizes`` says where the block's tensors
begin and end, for the methods whose definition is per tensor (the TIES trim).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from lwmm_lab.errors import LwmmError, check_name, check_numbers

#: Added to every Fisher value, so that where all models' Fisher is 0 the result is the
#: schedule-weighted mean instead of 0/0.
FISHER_FLOOR = 1e-12


@dataclass(frozen=True)
class BlockContext:
    """What a method may need besides a block's stack and weights: the base and Fisher values of
    the same columns, the sizes of the block's tensors (in order) and the method's knobs."""

    sizes: tuple[int, ...]
    base: Tensor | None = None
    fisher: Tensor | None = None
    density: float = 0.2
    scale: float = 1.0


Combine = Callable[[Tensor, Tensor, Tensor, BlockContext], None]


@dataclass(frozen=True)
class Method:
    """A registered merge method.

    ``schedule`` is its default schedule (None: ``weights`` when weights are given, else
    ``uniform``); ``needs`` names what the pool must hold (``base``, ``fisher``). ``linear``
    says the method is a plain weighted sum, so models with equal weights at every depth may be
    summed once and reused (what makes layer-wise re-merges read two models, not M);
    ``rebased`` that the sum is then moved towards the base, ``scale * sum + (1 - scale) *
    base`` (task arithmetic), which the engine does with two multi-tensor operations.
    """

    name: str
    combine: Combine
    schedule: str | None
    needs: tuple[str, ...]
    summary: str
    linear: bool = False
    rebased: bool = False


METHODS: dict[str, Method] = {}
#: What a method may need beside the models: the pool's base, or its Fisher estimates.
NEEDS = ("base", "fisher")


def register_method(
    name: str,
    schedule: str | None = None,
    needs: tuple[str, ...] = (),
    linear: bool = False,
    rebased: bool = False,
) -> Callable[[Combine], Combine]:
    """Register ``combine`` under ``name``; its docstring's first line is the summary.

    A name taken already is refused (a second ``ties`` would replace the first without a
    word), as is a need the engine does not provide (a misspelt one left the method without
    it, to fail inside its first merge)."""
    if name in METHODS:
        raise LwmmError(f"method '{name}' is registered already; give yours another name")
    for need in needs:
        check_name(need, NEEDS, f"method '{name}': need")

    def add(fn: Combine) -> Combine:
        summary = (fn.__doc__ or name).strip().splitlines()[0]
        METHODS[name] = Method(name, fn, schedule, needs, summary, linear, rebased)
        return fn

    return add


def weighted_sum(x: Tensor, w: Tensor, out: Tensor, ctx: BlockContext) -> None:
    """Weighted average of the models' values, column by column."""
    torch.sum(x * w, 0, out=out)


register_method("isotropic", schedule="uniform", linear=True)(weighted_sum)
register_method("weighted", schedule="weights", linear=True)(weighted_sum)
register_method("layerwise", schedule="layerwise", linear=True)(weighted_sum)


@register_method("fisher", needs=("fisher",))
def fisher(x: Tensor, w: Tensor, out: Tensor, ctx: BlockContext) -> None:
    """Fisher-weighted average: sum_i w_i F_i theta_i / sum_i w_i F_i, elementwise."""
    f = ctx.fisher.clamp_min(0).add_(FISHER_FLOOR).mul_(w)
    torch.div((f * x).sum(0), f.sum(0), out=out)


@register_method("task_arithmetic", needs=("base",), linear=True, rebased=True)
def task_arithmetic(x: Tensor, w: Tensor, out: Tensor, ctx: BlockContext) -> None:
    """base + scale * sum_i w_i (theta_i - base): the weighted mean task vector, scaled."""
    weighted_sum(x, w, out, ctx)
    out.mul_(ctx.scale).add_(ctx.base, alpha=1.0 - ctx.scale)


def ties_count(density: float, n: int) -> int:
    """How many of ``n`` entries TIES keeps: ceil(density * n) of the exact product, at least 1.

    ``density * n`` is rounded to 9 decimals first, so a floating-point product such as
    0.07 * 100 = 7.000000000000001 keeps 7, not 8. Peers differ (``benchmarks/peers.py``
    runs them): mergekit keeps floor(density * n), the same whenever the product is an
    integer; FusionBench (after the original TIES code) thresholds at the (n - floor(density *
    n))-th smallest magnitude with >=, so it keeps floor(density * n) + 1, the same as ours
    whenever the product is not an integer.
    """
    return min(n, max(1, math.ceil(round(density * n, 9))))


def trim_(
    tau: Tensor, sizes: tuple[int, ...], density: float, segmented: bool | None = None
) -> None:
    """Zero all but the ``ties_count`` largest magnitudes of each tensor of the block, in place.

    A value is kept when its magnitude reaches the tensor's threshold (the k-th largest), so
    ties at the threshold are all kept. Two ways give the same thresholds: one segmented sort
    of the whole block (what a GPU does best: two sorts, no loop over tensors) and a
    ``kthvalue`` per tensor (about ten times faster than sorting on a CPU, whose selection is
    linear). ``segmented`` picks one; None picks by device.
    """
    keep = [ties_count(density, n) for n in sizes]
    if all(k == n for k, n in zip(keep, sizes, strict=True)):
        return
    magnitude = tau.abs()
    if segmented if segmented is not None else tau.is_cuda:
        sizes_t = torch.tensor(sizes, device=tau.device)
        segment = torch.repeat_interleave(torch.arange(len(sizes), device=tau.device), sizes_t)
        order = magnitude.argsort(dim=1)
        order = order.gather(1, segment[order].argsort(dim=1, stable=True))
        ascending = magnitude.gather(1, order)
        ends = sizes_t.cumsum(0)
        at = ends - torch.tensor(keep, device=tau.device)
        tau.mul_(magnitude >= ascending[:, at][:, segment])
        return
    for part, mag, n, k in zip(
        tau.split(sizes, 1), magnitude.split(sizes, 1), sizes, keep, strict=True
    ):
        if k < n:
            part.mul_(mag >= mag.kthvalue(n - k + 1, dim=1, keepdim=True).values)


@register_method("ties", needs=("base",))
def ties(x: Tensor, w: Tensor, out: Tensor, ctx: BlockContext) -> None:
    """TIES: trim task vectors to the top density, elect signs, weighted disjoint mean."""
    tau = x - ctx.base
    trim_(tau, ctx.sizes, ctx.density)
    weighted = tau * w
    sign = weighted.sum(0).sign()
    agree = (tau.sign() == sign) & (tau != 0)
    total = (w * agree).sum(0)
    merged = (weighted * agree).sum(0) / total.clamp_min(torch.finfo(total.dtype).tiny)
    torch.add(ctx.base, merged, alpha=ctx.scale, out=out)


# ---------------------------------------------------------------------------------- schedules

Schedule = Callable[..., Tensor]
SCHEDULES: dict[str, Schedule] = {}


def register_schedule(name: str) -> Callable[[Schedule], Schedule]:
    """Register ``fn(n_depth, n_models, anchor, *, start, alpha, weights) -> (Np, M)``."""

    def add(fn: Schedule) -> Schedule:
        SCHEDULES[name] = fn
        return fn

    return add


@register_schedule("uniform")
def uniform_weights(n_depth: int, n_models: int, anchor: int = 0, **_: object) -> Tensor:
    """Every model gets 1/M at every depth."""
    return torch.full((n_depth, n_models), 1.0 / n_models, dtype=torch.float64)


@register_schedule("weights")
def user_weights(
    n_depth: int,
    n_models: int,
    anchor: int = 0,
    weights: tuple[float, ...] | None = None,
    **_: object,
) -> Tensor:
    """The user's per-model weights, normalised to sum to 1, at every depth."""
    if weights is None:
        raise LwmmError("the 'weights' schedule needs one weight per model (--weights)")
    values = check_numbers("weights", weights)
    if len(values) != n_models:
        raise LwmmError(f"{len(values)} weights given for {n_models} models")
    w = torch.tensor(values, dtype=torch.float64)
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or float(w.sum()) <= 0:
        raise LwmmError(f"weights {list(weights)} must be finite, >= 0 and not all 0")
    return (w / w.sum()).expand(n_depth, n_models).clone()


@register_schedule("layerwise")
def layerwise_weights(
    n_depth: int,
    n_models: int,
    anchor: int = 0,
    start: int = 1,
    alpha: float | None = None,
    **_: object,
) -> Tensor:
    """The LWMM schedule: uniform before ``start``, then a linear decay towards the anchor.

    With c = (1 - alpha) / (M - 1) each non-anchor model gets c for j < s and
    c * (Np - j) / (Np - s + 1) for j >= s; the anchor gets the rest. The defaults s = 1,
    alpha = 1/M give the paper's Eq. 1, H_i(j) = (Np - j) / (Np * M). M = 1 is the identity.
    """
    alpha = 1.0 / n_models if alpha is None else float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise LwmmError(f"alpha={alpha} is outside [0, 1]")
    if not 1 <= start <= n_depth:
        raise LwmmError(f"start={start} is outside 1..Np={n_depth} (the depth indices)")
    # A few hundred numbers, on every slider change: numpy, not a torch kernel per step.
    weights = np.zeros((n_depth, n_models))
    if n_models > 1:
        j = np.arange(1, n_depth + 1, dtype=np.float64)
        decay = np.where(j < start, 1.0, (n_depth - j) / (n_depth - start + 1))
        weights[:] = ((1.0 - alpha) / (n_models - 1) * decay)[:, None]
    weights[:, anchor] = 0.0
    weights[:, anchor] = 1.0 - weights.sum(1)
    return torch.from_numpy(weights)


# ----------------------------------------------------------------------------------- BN rules


@dataclass(frozen=True)
class BnRule:
    """How ``running_mean`` / ``running_var`` of the BatchNorm layers are merged.

    ``weights(schedule_w, counts, anchor)`` gives the per-model weights of every BN layer at
    once: ``schedule_w`` is (K, M), each layer's schedule row; ``counts`` (K, M) the models'
    ``num_batches_tracked`` (a row of zeros where some model lacks it). ``gaussian`` adds the
    spread of the means to the variance (the moment-matched Gaussian mixture); ``by_counts``
    marks the rule whose weights are the counts (uniform where they are unknown), and which
    makes ``num_batches_tracked`` the sum over models instead of the anchor's.
    """

    name: str
    weights: Callable[[Tensor, Tensor, int], Tensor]
    gaussian: bool
    by_counts: bool
    summary: str


def _count_weights(w: Tensor, counts: Tensor, anchor: int) -> Tensor:
    """``n_i / N`` per layer; uniform where the counts are all 0 (or unknown)."""
    n = counts.to(w.dtype)
    total = n.sum(1, keepdim=True)
    return torch.where(total > 0, n / total.clamp_min(1), 1.0 / w.shape[1])


def _anchor_weights(w: Tensor, counts: Tensor, anchor: int) -> Tensor:
    return torch.nn.functional.one_hot(torch.tensor(anchor), w.shape[1]).to(w.dtype).expand_as(w)


BN_RULES: dict[str, BnRule] = {
    rule.name: rule
    for rule in (
        BnRule("linear", lambda w, n, a: w, False, False, "the layer's weights, like parameters"),
        BnRule(
            "gaussian",
            lambda w, n, a: w,
            True,
            False,
            "moment-matched Gaussian mixture with the layer's weights",
        ),
        BnRule(
            "gaussian-counts",
            _count_weights,
            True,
            True,
            "moment-matched mixture weighted by num_batches_tracked (multi-target paper)",
        ),
        BnRule("anchor", _anchor_weights, False, False, "the anchor's statistics"),
    )
}
