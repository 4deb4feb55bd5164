"""How far checkpoints are apart, layer by layer (the paper's Fig. 2), and where they disagree.

For a reference model and each other model, every shared tensor gets its relative L2 distance
``||theta - theta_ref|| / ||theta_ref||`` and its cosine distance, with its depth j, its kind
(conv/linear weight, bias, norm weight, norm bias, BN running_mean, BN running_var) and its
region (encoder, decoder, head). The paper counts a tensor as discrepant when
``||theta_m - theta_m+z|| >= ||theta_m|| / tau``, i.e. when the relative distance reaches
``1 / tau`` (:meth:`Discrepancy.threshold`): :meth:`Discrepancy.above` applies it.

Two data-free diagnostics suggest where the anchor should take over: a symmetric KL divergence
between the per-channel Gaussians of BN layers, and the cosine between task vectors (each model
minus the shared base) per tensor: near 1, the models moved the same way and averaging is safe;
low, they pulled apart and the anchor should keep its own.
"""

from __future__ import annotations

import os
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from lwmm_lab.engine.pool import (
    Pool,
    check_pool,
    is_bn_stat,
    left_out_note,
    module_of,
    unknown_order_note,
    unshared_note,
)
from lwmm_lab.errors import LwmmError, check_count, check_finite, check_names

KINDS = ("weight", "bias", "norm weight", "norm bias", "BN running_mean", "BN running_var")
#: The kinds that are learned by gradient descent (all but the BN running statistics).
LEARNED = KINDS[:4]
REGIONS = ("encoder", "decoder", "head")
_HEAD_PREFIXES = ("segmentation_head.", "decode_head.conv_seg", "classifier.", "head.")
_ENCODER_PREFIXES = ("encoder.", "backbone.")


def check_kinds(kinds: str | Sequence[str]) -> tuple[str, ...]:
    """``kinds`` (one kind or several) in the order of :data:`KINDS`, each checked."""
    chosen = set(check_names(kinds, KINDS, "kind of tensor"))
    return tuple(k for k in KINDS if k in chosen)


def tensor_kind(name: str, shapes: dict[str, tuple[int, ...]]) -> str:
    """The kind of a state-dict entry, from its name and the shapes of its module's entries.

    A 1-D weight is a norm layer's (BatchNorm, LayerNorm, GroupNorm); a bias is a norm bias
    when its module's weight is 1-D.
    """
    module, _, leaf = name.rpartition(".")
    if leaf in ("running_mean", "running_var"):
        return f"BN {leaf}"
    if leaf == "weight":
        return "norm weight" if len(shapes[name]) <= 1 else "weight"
    sibling = shapes.get(f"{module}.weight")
    return "norm bias" if sibling is not None and len(sibling) <= 1 else "bias"


def region_of(name: str) -> str:
    """encoder, decoder or head, from the smp (or mmseg) name prefix."""
    if name.startswith(_HEAD_PREFIXES):
        return "head"
    if name.startswith(_ENCODER_PREFIXES):
        return "encoder"
    return "decoder"


@dataclass
class Discrepancy:
    """Per-tensor distances of ``others`` to ``reference`` (labels), one row per (model, tensor).

    ``boundary`` is the first depth index outside the encoder: the backbone/head line of Fig. 2.
    ``unshared``: the reference's tensors left out, as ``lacking`` (``[i] label``) lack them
    or have them in another shape (another head, another decoder); ``left_out``: the other
    models' tensors the reference lacks, by ``[i] label``. ``order_known``: False when the
    reference's file gives no depth order, so j follows sorted key names.
    """

    reference: str
    others: list[str]
    rows: list[dict[str, Any]]
    n_depth: int
    boundary: int | None
    unshared: list[str] = field(default_factory=list)
    lacking: list[str] = field(default_factory=list)
    order_known: bool = True
    left_out: dict[str, list[str]] = field(default_factory=dict)

    def notes(self) -> list[str]:
        """Lines a reader should see beside the counts: the tensors that are not compared, and
        a depth order that is only the sorted key names."""
        notes = []
        if self.unshared:
            notes.append(
                unshared_note(self.unshared, self.lacking, "the reference's", "not compared")
            )
        if self.left_out:
            notes.append(left_out_note(self.left_out, "the reference", "not compared"))
        if not self.order_known:
            notes.append(unknown_order_note("the reference"))
        return notes

    @staticmethod
    def threshold(tau: float) -> float:
        """The paper's threshold ``1 / tau`` on the relative distance, for a finite tau > 0."""
        value = check_finite("tau", tau)
        if value <= 0:
            raise LwmmError(f"tau={tau}: give a number > 0 (discrepant: relative L2 >= 1/tau)")
        return 1.0 / value

    def of_kinds(self, kinds: Sequence[str] = KINDS) -> list[dict[str, Any]]:
        """The rows of these kinds (all of them by default)."""
        chosen = check_kinds(kinds)
        return [r for r in self.rows if r["kind"] in chosen]

    def above(self, tau: float, kinds: Sequence[str] = KINDS) -> list[dict[str, Any]]:
        """Rows (of these kinds) whose relative distance reaches ``1 / tau`` (the paper's
        threshold)."""
        cut = self.threshold(tau)
        return [r for r in self.of_kinds(kinds) if r["relative_l2"] >= cut]

    def median(self, regions: tuple[str, ...] = REGIONS, kinds: tuple[str, ...] = KINDS) -> float:
        """The median relative distance of the rows of these regions and kinds (0 if none)."""
        values = [
            r["relative_l2"] for r in self.rows if r["region"] in regions and r["kind"] in kinds
        ]
        return statistics.median(values) if values else 0.0

    def counts(
        self, tau: float, kinds: Sequence[str] = KINDS
    ) -> dict[str, dict[str, dict[str, int]]]:
        """Tensors (of these kinds) above ``1 / tau`` per other model, by kind and by region."""
        result, above, chosen = {}, self.above(tau, kinds), check_kinds(kinds)
        for other in self.others:
            hits = [r for r in above if r["model"] == other]
            result[other] = {
                "kind": {k: Counter(r["kind"] for r in hits)[k] for k in chosen},
                "region": {k: Counter(r["region"] for r in hits)[k] for k in REGIONS},
                "total": len(hits),
            }
        return result

    def to_json(self, tau: float | None = None, kinds: Sequence[str] = KINDS) -> dict[str, Any]:
        """Every row; with ``tau`` also the counts above ``1 / tau`` (of these kinds)."""
        payload: dict[str, Any] = {
            "reference": self.reference,
            "others": self.others,
            "n_depth": self.n_depth,
            "boundary": self.boundary,
            "order_known": self.order_known,
            "unshared": self.unshared,
            "left_out": self.left_out,
            "rows": self.rows,
        }
        if tau is not None:
            payload["tau"] = tau
            payload["counts"] = self.counts(tau, kinds)
        return payload


def discrepancy(pool: Pool, reference: int | str | os.PathLike = 0) -> Discrepancy:
    """Distances of every model of ``pool`` to model ``reference``, per shared tensor."""
    reference = _reference(pool, reference)
    layout = pool.layout(reference)
    shapes = {n: tuple(t.shape) for n, t in pool.checkpoints[reference].tensors.items()}
    ref = pool.flat[reference]
    rows, boundary = [], None
    for e in layout.entries:
        if e.kind != "shared":
            continue
        cols = pool.columns[e.name]
        kind, region = tensor_kind(e.name, shapes), region_of(e.name)
        if boundary is None and region != "encoder":
            boundary = e.j
        a = ref[cols].double()
        norm = float(a.norm())
        scale = norm if norm > 0 else 1.0  # an all-zero reference: the absolute distance
        for i, label in enumerate(pool.labels):
            if i == reference:
                continue
            b = pool.flat[i, cols].double()
            diff = float((b - a).norm())
            rows.append(
                {
                    "model": label,
                    "name": e.name,
                    "j": e.j,
                    "kind": kind,
                    "region": region,
                    "numel": int(a.numel()),
                    "relative_l2": diff / scale,
                    "cosine_distance": 1.0 - _cosine(a, b),
                }
            )
    others = [label for i, label in enumerate(pool.labels) if i != reference]
    unshared, lacking = pool.unshared(reference)
    return Discrepancy(
        pool.labels[reference],
        others,
        rows,
        layout.n_depth,
        boundary,
        unshared,
        lacking,
        layout.order_known,
        pool.left_out(reference),
    )


def bn_divergence(pool: Pool, reference: int | str | os.PathLike = 0) -> list[dict[str, Any]]:
    """Per BN layer and other model, the mean over channels of the symmetric KL divergence.

    Each channel's statistics are a Gaussian N(running_mean, running_var);
    ``KL(p||q) + KL(q||p) = (s_p + d^2) / (2 s_q) + (s_q + d^2) / (2 s_p) - 1`` with ``s`` the
    variances and ``d`` the difference of means.
    """
    reference = _reference(pool, reference)
    layout = pool.layout(reference)
    rows = []
    for e in layout.entries:
        if e.kind != "shared" or not e.name.endswith(".running_mean"):
            continue
        module = module_of(e.name)
        var_name = f"{module}.running_var"
        if var_name not in pool.columns:
            continue
        means, variances = (
            pool.stack(e.name).double(),
            pool.stack(var_name).double().clamp_min(1e-12),
        )
        for i, label in enumerate(pool.labels):
            if i == reference:
                continue
            d2 = (means[i] - means[reference]).square()
            sp, sq = variances[reference], variances[i]
            kl = (sp + d2) / (2 * sq) + (sq + d2) / (2 * sp) - 1
            rows.append(
                {"model": label, "module": module, "j": e.j, "symmetric_kl": float(kl.mean())}
            )
    return rows


def task_vector_cosine(pool: Pool, reference: int | str | os.PathLike = 0) -> list[dict[str, Any]]:
    """Per shared parameter tensor and other model, cos(theta_ref - base, theta_other - base).

    Needs the pool's ``base`` (the zoo's shared pre-trained model). BN statistics are left out:
    they are not learned by gradient descent.
    """
    reference = _reference(pool, reference)
    if pool.base is None:
        raise LwmmError("task vectors need the pool's base checkpoint (Pool(base=...), --base)")
    layout = pool.layout(reference)
    rows = []
    for e in layout.entries:
        if e.kind != "shared" or is_bn_stat(e.name):
            continue
        cols = pool.columns[e.name]
        tau_ref = (pool.flat[reference, cols] - pool.base[cols]).double()
        for i, label in enumerate(pool.labels):
            if i == reference:
                continue
            tau = (pool.flat[i, cols] - pool.base[cols]).double()
            rows.append({"model": label, "name": e.name, "j": e.j, "cosine": _cosine(tau_ref, tau)})
    return rows


def suggest_start(
    rows: list[dict[str, Any]], n_depth: int, threshold: float = 0.5, window: int = 9
) -> int:
    """A start layer from task-vector cosines: the first j after which agreement stays low.

    The cosines (averaged over the other models) are smoothed over ``window`` depths; the
    suggestion is the first j from which the smoothed curve stays below ``threshold``
    (``n_depth`` if it never drops). Averaging is safe where task vectors agree.
    """
    window, threshold = check_count("window", window), check_finite("threshold", threshold)
    per_j: dict[int, list[float]] = {}
    for r in rows:
        per_j.setdefault(r["j"], []).append(r["cosine"])
    js = sorted(per_j)
    if not js:
        return n_depth
    values = torch.tensor([sum(per_j[j]) / len(per_j[j]) for j in js], dtype=torch.float64)
    kernel = torch.ones(1, 1, window, dtype=torch.float64) / window
    padded = torch.nn.functional.pad(
        values[None, None], (window // 2, (window - 1) // 2), mode="replicate"
    )
    smooth = torch.nn.functional.conv1d(padded, kernel)[0, 0]
    start = n_depth
    for j, value in reversed(list(zip(js, smooth.tolist(), strict=True))):
        if value >= threshold:
            break
        start = j
    return start


def _reference(pool: Pool, reference: int | str | os.PathLike) -> int:
    """The reference's index (an index, label or path, as an anchor is given). A pool of one
    model is refused: it has nothing to compare, and its tables came out empty."""
    if check_pool(pool).n_models < 2:
        raise LwmmError(
            "a comparison needs at least two checkpoints (a reference and another); the pool "
            f"holds {pool.n_models}"
        )
    return pool.anchor_index(reference, "reference")


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    denom = float(a.norm() * b.norm())
    return float(a @ b) / denom if denom > 0 else 1.0
