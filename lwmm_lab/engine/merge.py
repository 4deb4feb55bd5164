"""The merge engine: a config and a pool give a plan; running the plan gives merged weights.

A :class:`MergePlan` is the dry run: every entry of the anchor with its kind, depth j, the
weight each model gets and where its value comes from. :meth:`MergePlan.run` executes it,
straight into an existing model's tensors (the fast path for widgets) or into a new state dict.

The run has no per-tensor Python loop for the weighted-sum methods: models with equal weights
at every depth are averaged once (and kept), and the merge is a chain of multi-tensor
operations over every shared tensor at once, ``_foreach_copy_`` of the first group's mean and
one ``_foreach_lerp_`` per further group, with a per-tensor weight each, written in place into
the targets; on a GPU (:data:`FLAT_SUM`) the lerps run over whole rows of the stack instead,
each column's weight gathered by its depth row. A target laid out like the stack
(:func:`lay_out`: what :func:`~lwmm_lab.engine.model.merge_target` builds) takes those rows
as they are, its BN statistics one indexed copy and its other entries one copy per dtype;
any other target gets multi-tensor copies. All BatchNorm layers are merged together, as one
weighted sum over their statistics gathered from the stack once. Task
arithmetic is the same weighted sum moved towards the base. Fisher and TIES run over blocks
of consecutive columns of the stack (sized per device by :data:`BLOCK_COLUMNS`; on a GPU the
zoo's whole model is one block), each column weighted by its tensor's depth row: one call per
block, not per tensor. Where the index structures this needs come from (:class:`Routes`) is
worked out once per layout.
"""

from __future__ import annotations

import html
import itertools
import json
import os
import shlex
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor, nn

from lwmm_lab._version import __version__
from lwmm_lab.engine.checkpoints import check_compatible, save_checkpoint
from lwmm_lab.engine.methods import BN_RULES, METHODS, SCHEDULES, BlockContext, Method
from lwmm_lab.engine.pool import (
    Layout,
    Pool,
    as_row,
    is_bn_stat,
    lies_as_row,
    module_of,
    row_view,
)
from lwmm_lab.errors import LwmmError, check_finite, check_whole
from lwmm_lab.files import sha256


@dataclass(frozen=True)
class MergeConfig:
    """Everything that defines one merge besides the pool.

    ``anchor`` is an index 0..M-1 (or a label or input path). ``start`` is the depth index
    where the layer-wise decay starts (1..Np); ``start_frac`` gives it as a fraction of depth
    instead (0 -> 1, 1 -> Np). ``alpha`` is the anchor's share before the decay (default
    1/M, the paper's Eq. 1; the others share 1 - alpha). ``schedule`` overrides the method's
    default schedule; ``density`` and ``scale`` are the TIES / task-arithmetic knobs.
    """

    method: str = "layerwise"
    anchor: int | str = 0
    start: int | None = None
    start_frac: float | None = None
    alpha: float | None = None
    bn: str = "linear"
    weights: tuple[float, ...] | None = None
    granularity: str = "tensor"
    schedule: str | None = None
    density: float = 0.2
    scale: float = 1.0

    def replace(self, **changes: Any) -> MergeConfig:
        return replace(self, **changes)


@dataclass(frozen=True)
class MergePlan:
    """A resolved merge: the schedule ``weights`` (Np, M) and ``bn_table`` (K, M), the weights
    of the K BatchNorm layers (in the order of :attr:`Routes.bn_modules`).

    ``config`` is resolved too: the anchor is an index, and ``start`` / ``alpha`` are filled
    in when the schedule uses them (None otherwise).
    """

    pool: Pool
    config: MergeConfig
    schedule: str
    layout: Layout
    weights: Tensor
    bn_table: Tensor
    summed_counts: frozenset[str]

    @property
    def anchor(self) -> int:
        return int(self.config.anchor)

    @property
    def routes(self) -> Routes:
        return routes(self.pool, self.layout)

    @property
    def bn_weights(self) -> dict[str, Tensor]:
        """Each BN layer's per-model weights (a row of :attr:`bn_table`), by module name."""
        return dict(zip(self.routes.bn_modules, self.bn_table, strict=True))

    def rows(self) -> list[dict[str, Any]]:
        """The dry run as a table: one dict per entry of the anchor, in depth order."""
        rows, bn_weights = [], self.bn_weights
        for e in self.layout.entries:
            weights, source = None, "anchor"
            if e.kind == "shared" and is_bn_stat(e.name):
                weights, source = bn_weights[module_of(e.name)], f"bn:{self.config.bn}"
            elif e.kind == "shared":
                weights, source = self.weights[e.j - 1], self.config.method
            elif e.name in self.summed_counts:
                source = "sum over models"
            rows.append(
                {
                    "name": e.name,
                    "kind": e.kind,
                    "j": e.j,
                    "shape": list(e.shape),
                    "weights": None if weights is None else [float(v) for v in weights],
                    "source": source,
                }
            )
        return rows

    def to_json(self) -> str:
        return json.dumps(self.rows(), indent=1)

    def notes(self) -> list[str]:
        """Lines a reader should see above the table (e.g. an unknown depth order)."""
        notes = []
        alignment = self.pool.alignment
        if alignment is not None:
            moved = ", ".join(
                f"{label} {m}"
                for label, m in zip(self.pool.labels, alignment.moved, strict=True)
                if label != self.pool.labels[alignment.anchor]
            )
            notes.append(
                f"aligned to {self.pool.labels[alignment.anchor]} by weight matching "
                f"({alignment.channels} decoder channels in {len(alignment.groups)} groups; "
                f"channels moved: {moved})"
            )
        if not self.layout.order_known:
            notes.append(
                "depth order unknown: the anchor gives neither a stored key order nor a model "
                "spec, so j follows sorted key names"
            )
        return notes

    def format(self) -> str:
        """The plan as a text table, with a header that says what is merged and how."""
        labels = self.pool.labels
        c = self.config
        knobs = ", ".join(
            f"{k}={v}"
            for k, v in (("start", c.start), ("alpha", c.alpha), ("weights", c.weights))
            if v is not None
        )
        lines = [
            f"models: {', '.join(f'[{i}] {name}' for i, name in enumerate(labels))}",
            f"anchor: [{self.anchor}] {labels[self.anchor]}   method: {c.method}   "
            f"schedule: {self.schedule}{f' ({knobs})' if knobs else ''}   bn: {c.bn}   "
            f"granularity: {c.granularity}   Np={self.layout.n_depth}",
            *(f"note: {n}" for n in self.notes()),
            "",
            f"{'j':>5}  {'name':<48} {'kind':<11} {'shape':<16} {'weights':<24} source",
        ]
        for r in self.rows():
            j = "" if r["j"] is None else str(r["j"])
            shape = "x".join(map(str, r["shape"])) or "scalar"
            weights = "-" if r["weights"] is None else " ".join(f"{w:.3f}" for w in r["weights"])
            lines.append(
                f"{j:>5}  {r['name']:<48} {r['kind']:<11} {shape:<16} {weights:<24} {r['source']}"
            )
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        head = "".join(f"<p>{html.escape(n)}</p>" for n in self.notes())
        cells = "".join(
            "<tr>"
            + "".join(
                f"<td>{html.escape(str(v if v is not None else ''))}</td>"
                for v in (r["j"], r["name"], r["kind"], r["shape"], r["weights"], r["source"])
            )
            + "</tr>"
            for r in self.rows()
        )
        return (
            f"{head}<table><tr><th>j</th><th>name</th><th>kind</th><th>shape</th>"
            f"<th>weights ({', '.join(map(html.escape, self.pool.labels))})</th>"
            f"<th>source</th></tr>{cells}</table>"
        )

    def provenance(self) -> dict[str, Any]:
        """What to record in the merged file: inputs with sha256, method, schedule, BN rule."""
        pool, c = self.pool, self.config
        record = {
            "lwmm_lab": __version__,
            "method": c.method,
            "schedule": self.schedule,
            "anchor": {"index": self.anchor, "label": pool.labels[self.anchor]},
            "inputs": [
                _file_record(ck.path, label)
                for ck, label in zip(pool.checkpoints, pool.labels, strict=True)
            ],
            "bn": c.bn,
            "granularity": c.granularity,
            "n_depth": self.layout.n_depth,
            **{k: v for k, v in (("start", c.start), ("alpha", c.alpha)) if v is not None},
        }
        if c.weights is not None:
            record["weights"] = list(c.weights)
        if "base" in METHODS[c.method].needs:
            record.update(base=_file_record(pool.base_path), scale=c.scale)
            if c.method == "ties":
                record["density"] = c.density
        if "fisher" in METHODS[c.method].needs:
            record["fisher"] = [_file_record(p) for p in pool.fisher_paths]
        if pool.alignment is not None:
            record["alignment"] = pool.alignment.record(pool.labels)
        return record

    def run(self, into: nn.Module | MutableMapping[str, Tensor] | None = None) -> dict[str, Tensor]:
        """Execute the plan; write into ``into`` (a model or state dict) when given.

        Returns the merged state dict (the target's own tensors when ``into`` is given).
        """
        targets, joined = self._targets(into)
        pool, method = self.pool, METHODS[self.config.method]
        with torch.no_grad():
            # Small host-to-device copies go first: later, each would wait for the queued kernels.
            bn_table = self.bn_table.to(pool.device, pool.flat.dtype)
            if method.linear:
                self._weighted_sum(targets, joined.shared, rebase=method.rebased)
            else:
                self._combine_blocks(method, targets, joined.shared)
            self._merge_bn(targets, bn_table, joined.shared)
            self._copy_rest(targets, joined.copied)
        return dict(targets)

    def _copy_rest(self, targets: Mapping[str, Tensor], joined: tuple[Tensor | None, ...]) -> None:
        """The entries no method merges: the anchor's own, or for a BN rule that sums them,
        the counts summed over the models; one copy per dtype group (:attr:`Routes.copied`),
        a plain one where the target's tensors are joined, else a multi-tensor one."""
        r, summed = self.routes, bool(self.summed_counts)
        values = r.kept(f"copied, counts summed: {summed}", lambda: self._rest_values(summed))
        for k, (names, view) in enumerate(zip(r.copied, joined, strict=True)):
            if view is None:
                _copy_all([targets[n] for n in names], values[k])
            else:
                joined_values = r.kept(
                    f"copied {k} joined, counts summed: {summed}",
                    lambda k=k: torch.cat([as_row(v) for v in values[k]]),
                )
                view.copy_(joined_values)

    def _rest_values(self, summed: bool) -> list[list[Tensor]]:
        """What :meth:`_copy_rest` writes, per dtype group of :attr:`Routes.copied`."""
        pool, r = self.pool, self.routes
        anchor = pool.checkpoints[self.anchor].tensors
        sums = _summed_counts(pool, r.counted) if summed else []
        counts = dict(zip(r.counted, sums, strict=True)) if summed else {}
        return [[counts.get(n, anchor[n]) for n in names] for names in r.copied]

    def _weighted_sum(
        self, targets: Mapping[str, Tensor], joined: Tensor | None = None, rebase: bool = False
    ) -> None:
        """Every shared tensor's weighted sum over the models, in place into ``targets`` (or,
        on the whole-row path, into ``joined``, the (P,) view of a laid-out target); with
        ``rebase``, moved towards the base: ``scale * sum + (1 - scale) * base``.

        Models with equal weights at every depth form a group, whose mean row is computed once
        (and kept by the pool); with a_g the group's share at a depth, the merge is the running
        weighted mean: the first group's mean, then ``lerp(out, mean_g, a_g / (a_1 + ... +
        a_g))`` for each further group. Each lerp reads one row, so a layer-wise re-merge reads
        two rows (the anchor and the others' mean) whatever M is. Where :data:`FLAT_SUM` says
        so, the lerps run over whole rows with each column's weight gathered by its depth row
        (a few kernels in all); else per tensor, as multi-tensor operations.
        """
        pool, r = self.pool, self.routes
        if not r.weights:
            return
        # The (Np, groups) arithmetic is a few dozen numbers: numpy, not a kernel per step.
        weights = self.weights.numpy()
        groups = _equal_weight_groups(weights)
        share = np.stack([weights[:, g].sum(1) for g in groups], 1)
        reached = share.cumsum(1)
        step = np.where(reached > 0, share / np.maximum(reached, 1e-300), 1.0)
        total = reached[:, -1]
        rescale = bool(np.abs(total - 1.0).max() > 1e-12)  # rows that do not sum to 1
        means = [pool.model_mean(group) for group in groups]
        # Whole rows where launches cost more than the weights' gather (a GPU), or where the
        # target is one laid-out row and a single group needs no weights at all.
        whole_rows = (
            FLAT_SUM.get(pool.device.type, False) if len(groups) > 1 else joined is not None
        )
        if whole_rows:
            if joined is None:
                work, parts = r.kept("sum", lambda: _row_with_parts(pool, r))
            else:
                work, parts = joined, None
            if len(groups) > 1 or rescale:
                rows = r.kept("column rows", lambda: _column_rows(pool, self.layout))
                table = np.concatenate([step[:, 1:], total[:, None]], 1)
                table = torch.from_numpy(table).to(pool.device, pool.flat.dtype)

            def by_column(k: int) -> Tensor:
                """Column ``k`` of the (Np, groups) table, spread over the P columns by depth."""
                return table[:, k].index_select(0, rows)

            if len(groups) == 1:
                work.copy_(means[0])
            else:
                torch.lerp(means[0], means[1], by_column(0), out=work)
            for g in range(2, len(groups)):
                work.lerp_(means[g], by_column(g - 1))
            if rescale:
                work.mul_(by_column(-1))
            if rebase:
                work.mul_(self.config.scale).add_(pool.base, alpha=1.0 - self.config.scale)
            if parts is not None:
                _copy_all([targets[name] for name in r.weights], parts)
            return
        outs = [targets[name] for name in r.weights]
        direct = all(o.dtype == pool.flat.dtype and o.device == pool.device for o in outs)
        dtype, device = pool.flat.dtype, pool.device
        work = outs if direct else [torch.empty(o.shape, dtype=dtype, device=device) for o in outs]
        at = r.weight_rows.numpy()
        steps = step[at].T.tolist()
        for k, parts in enumerate(r.parts(means)):
            if k == 0:
                _copy_all(work, parts)
            else:
                torch._foreach_lerp_(work, parts, steps[k])
        if rescale:  # a schedule whose rows do not sum to 1
            torch._foreach_mul_(work, total[at].tolist())
        if rebase:
            scale = self.config.scale
            torch._foreach_mul_(work, scale)
            base = [row_view(pool.base[c], s) for c, s in zip(r.weight_cols, r.shapes, strict=True)]
            torch._foreach_add_(work, base, alpha=1.0 - scale)
        if not direct:
            _copy_all(outs, work)

    def _merge_bn(
        self, targets: Mapping[str, Tensor], table: Tensor, joined: Tensor | None = None
    ) -> None:
        """Every BN layer's running statistics at once, by the BN rule: the weighted mean of
        the means, and of the variances (plus, for the Gaussian rules, the weighted spread of the
        means around the merged mean: the moment-matched mixture), as one weighted sum over all
        the gathered statistics. ``table``: the plan's ``bn_table`` on the pool's device;
        ``joined``: the target's (P,) view, written with one indexed copy."""
        pool, rule, r = self.pool, BN_RULES[self.config.bn], self.routes
        if not r.stats:
            return
        # The models' statistics, gathered from the stack once (the stack does not change).
        stats = r.kept("bn columns", lambda: pool.flat[:, r.stat_index])
        merged, parts = r.kept("bn merged", lambda: _buffer_with_parts(pool, r.stats))
        w = table[r.stat_module].t()
        torch.sum(stats * w, 0, out=merged)
        n = r.n_means
        if rule.gaussian and n:
            paired, at, paired_means = r.kept("bn paired means", lambda: _paired_means(r, stats))
            spread = ((paired_means - merged[at]).square() * w[:, n:]).sum(0)
            merged[n:] += torch.where(paired, spread, 0.0)
        if joined is None:
            _copy_all([targets[name] for name in r.stats], parts)
        else:
            joined.index_copy_(0, r.stat_index, merged)

    def _combine_blocks(
        self, method: Method, targets: Mapping[str, Tensor], joined: Tensor | None = None
    ) -> None:
        """A non-linear method, one call per block of columns with per-column weights, each
        block's result written straight into ``joined`` (a laid-out target) when given."""
        pool, c = self.pool, self.config
        weights = self.weights.to(pool.device, pool.flat.dtype).t()
        for block in self.routes.blocks:
            cols = block.columns
            ctx = BlockContext(
                sizes=block.sizes,
                base=pool.base[cols] if "base" in method.needs else None,
                fisher=pool.fisher[:, cols] if "fisher" in method.needs else None,
                density=c.density,
                scale=c.scale,
            )
            w = weights[:, block.rows]
            if len(block.sizes) > 1:
                w = w.repeat_interleave(block.repeats, dim=1)
            if joined is not None:
                method.combine(pool.flat[:, cols], w, joined[cols], ctx)
                continue
            out = torch.empty(cols.stop - cols.start, dtype=pool.flat.dtype, device=pool.device)
            method.combine(pool.flat[:, cols], w, out, ctx)
            parts = out.split(block.sizes)
            _copy_all(
                [targets[block.names[k]] for k in block.written],
                [row_view(parts[k], targets[block.names[k]].shape) for k in block.written],
            )

    def _targets(
        self, into: nn.Module | MutableMapping[str, Tensor] | None
    ) -> tuple[Mapping[str, Tensor], JoinedViews]:
        """Where the merged values go (a new state dict, or the given model's own tensors), and
        the target's tensors joined into flat views where :func:`lay_out` placed them so."""
        r = self.routes
        anchor_tensors = self.pool.checkpoints[self.anchor].tensors
        if into is None:
            device = self.pool.device
            targets = {
                e.name: torch.empty(e.shape, dtype=anchor_tensors[e.name].dtype, device=device)
                for e in self.layout.entries
            }
            return targets, JoinedViews(None, (None,) * len(r.copied))
        targets = into.state_dict() if isinstance(into, nn.Module) else into
        # A slider writes into the same tensors on every change: they are checked once (the
        # last few targets are remembered, so two taking turns are not checked again). They
        # are known by where their memory is, not by their Python objects: a tensor given other
        # memory (``set_``) stays the same object, and a new object may reuse a freed one's
        # id. What is remembered holds no tensor, so a target let go is freed.
        seen = tuple(map(Tensor.data_ptr, targets.values()))
        checked: dict[tuple[int, ...], Joined] = r.kept("checked targets", dict)
        if seen not in checked:
            expected = {e.name: e.shape for e in self.layout.entries}
            hint = "; build it from the anchor's spec"
            check_compatible(expected, targets, "the target model", hint)
            pool = self.pool
            shared = _joined([targets[n] for n in pool.columns])
            if shared is not None and (
                shared.dtype != pool.flat.dtype or shared.device != pool.device
            ):
                shared = None
            copied = [_joined([targets[n] for n in names]) for names in r.copied]
            while len(checked) >= 4:
                del checked[next(iter(checked))]
            checked[seen] = Joined(
                tuple(
                    None if view is None else (names[0], view.numel())
                    for view, names in zip(
                        (shared, *copied), (tuple(pool.columns), *r.copied), strict=True
                    )
                )
            )
        return targets, checked[seen].views(targets)


@dataclass(frozen=True)
class Joined:
    """Where a merge target's tensors lie end to end in one buffer (as :func:`lay_out` places
    them): for the pool's columns, then each dtype group of the copied entries, the name of the
    group's first tensor and the group's length, or None where its tensors do not lie so."""

    runs: tuple[tuple[str, int] | None, ...]

    def views(self, targets: Mapping[str, Tensor]) -> JoinedViews:
        """The flat views of ``targets`` over those runs."""
        views = [
            None
            if run is None
            else targets[run[0]].as_strided((run[1],), (1,), targets[run[0]].storage_offset())
            for run in self.runs
        ]
        return JoinedViews(views[0], tuple(views[1:]))


@dataclass(frozen=True)
class JoinedViews:
    """A target's flat views: ``shared`` (P,) in the pool's column order, and one per dtype
    group of the copied entries (None where the target's tensors do not lie end to end)."""

    shared: Tensor | None
    copied: tuple[Tensor | None, ...]


Target = TypeVar("Target", nn.Module, MutableMapping[str, Tensor])


def lay_out(target: Target, pool: Pool, anchor: int = 0) -> Target:
    """Place the tensors of ``target`` (a model or a state dict) end to end in flat buffers,
    keeping their values: the ones the pool stacks in its column order, the rest (the anchor's
    own, the integer counts) one buffer per dtype in the anchor's order. Returns ``target``.
    Tensors on the ``meta`` device (a model built without memory) get their memory this way,
    and no values.

    A merge into a laid-out target writes whole rows: one kernel per step instead of a
    multi-tensor copy into every tensor (launches, not bandwidth, bound a GPU re-merge of a
    small model). A model's tensors stay ordinary parameters and buffers (views, convolution
    weights channels last as :func:`~lwmm_lab.engine.pool.as_row` lays them; a tensor starts
    16-byte aligned when the sizes before it are multiples of four, as every smp model's
    are). A target whose tensors do not match the anchor's names, shapes and, for the stacked
    ones, the pool's dtype is left as it is (a merge checks it and says why).
    """
    layout = pool.layout(anchor)
    anchor_tensors = pool.checkpoints[layout.anchor].tensors
    state = target.state_dict(keep_vars=True) if isinstance(target, nn.Module) else target
    if any(
        name not in state or state[name].shape != anchor_tensors[name].shape
        for name in anchor_tensors
    ):
        return target
    r = routes(pool, layout)
    places = (pool.device, torch.device("meta"))
    for k, names in enumerate([tuple(pool.columns), *r.copied]):
        dtype = pool.flat.dtype if k == 0 else anchor_tensors[names[0]].dtype
        if any(state[n].dtype != dtype or state[n].device not in places for n in names):
            continue
        sizes = [state[n].numel() for n in names]
        pieces = torch.empty(sum(sizes), dtype=dtype, device=pool.device).split(sizes)
        for name, piece in zip(names, pieces, strict=True):
            old, view = state[name], row_view(piece, state[name].shape)
            if not old.is_meta:
                with torch.no_grad():
                    view.copy_(old)
            if isinstance(target, nn.Module):
                _put(target, name, view)
            else:
                target[name] = view
    return target


def _put(model: nn.Module, name: str, value: Tensor) -> None:
    """Make ``value`` the model's tensor ``name``: a parameter keeps its object (what refers to
    it still does) unless it has no memory yet (meta), a buffer is replaced."""
    owner, _, leaf = name.rpartition(".")
    module = model.get_submodule(owner)
    old = module._parameters.get(leaf)
    if old is None:
        module._buffers[leaf] = value
    elif old.is_meta:
        module._parameters[leaf] = nn.Parameter(value, old.requires_grad)
    else:
        old.data = value


def _joined(tensors: list[Tensor]) -> Tensor | None:
    """One 1-D view over ``tensors`` when they lie end to end, in this order, in one storage,
    each in its :func:`~lwmm_lab.engine.pool.as_row` order (one dtype and device); else None."""
    first = tensors[0]
    storage, start = first.untyped_storage().data_ptr(), first.storage_offset()
    offset = start
    for t in tensors:
        if (
            t.storage_offset() != offset
            or not lies_as_row(t)
            or t.dtype != first.dtype
            or t.device != first.device
            or t.untyped_storage().data_ptr() != storage
        ):
            return None
        offset += t.numel()
    return first.as_strided((offset - start,), (1,), start)


def make_plan(pool: Pool, config: MergeConfig | None = None, **changes: Any) -> MergePlan:
    """Resolve ``config`` (with ``changes`` applied) against ``pool`` into a :class:`MergePlan`.

    Every bad value raises :class:`LwmmError` naming it: an unknown method, BN rule, schedule
    or granularity; an anchor not among the inputs; alpha outside [0, 1]; a start outside
    1..Np or not whole; weights of the wrong length; a density outside (0, 1] or a scale that
    is not a finite number; a method's missing base or Fisher.
    """
    c = (config or MergeConfig()).replace(**changes)
    method = _lookup(METHODS, c.method, "method")
    rule = _lookup(BN_RULES, c.bn, "BN rule")
    anchor = pool.anchor_index(c.anchor)
    if pool.alignment is not None and anchor != pool.alignment.anchor:
        aligned_to = pool.alignment.anchor
        raise LwmmError(
            f"anchor [{anchor}] {pool.labels[anchor]} is not the model the pool was aligned to "
            f"([{aligned_to}] {pool.labels[aligned_to]}); align to the anchor you merge into"
        )
    layout = pool.layout(anchor, c.granularity)
    for need, present in (("base", pool.base), ("fisher", pool.fisher)):
        if need in method.needs and present is None:
            raise LwmmError(f"method '{c.method}' needs a {need} (Pool({need}=...), --{need})")
    if not 0.0 < check_finite("density", c.density) <= 1.0:
        raise LwmmError(f"density={c.density} is outside (0, 1]")
    check_finite("scale", c.scale)
    schedule = c.schedule or method.schedule or ("weights" if c.weights is not None else "uniform")
    _lookup(SCHEDULES, schedule, "schedule")
    n_depth, n_models = layout.n_depth, pool.n_models
    start, alpha = 1, None
    if schedule == "layerwise":
        start = _resolve_start(c.start, c.start_frac, n_depth)
        alpha = 1.0 / n_models if c.alpha is None else check_finite("alpha", c.alpha)
    weights = SCHEDULES[schedule](
        n_depth, n_models, anchor, start=start, alpha=alpha, weights=c.weights
    )
    r = routes(pool, layout)
    bn_table = rule.weights(weights[r.bn_rows], r.counts, anchor)
    summed = frozenset(r.counted) if rule.sum_counts else frozenset()
    resolved = c.replace(
        anchor=anchor,
        start=start if schedule == "layerwise" else None,
        start_frac=None,
        alpha=alpha,
        weights=tuple(c.weights) if c.weights is not None and schedule == "weights" else None,
    )
    return MergePlan(pool, resolved, schedule, layout, weights, bn_table, summed)


def merge(
    pool: Pool,
    config: MergeConfig | None = None,
    into: nn.Module | MutableMapping[str, Tensor] | None = None,
    **changes: Any,
) -> dict[str, Tensor]:
    """Merge the pool's checkpoints; see :class:`MergeConfig` for the settings.

    With ``into`` (a model built from the anchor's spec, or a state dict) the merged values are
    written into its tensors in place: no allocation, the fast path for interactive use.
    """
    return make_plan(pool, config, **changes).run(into)


def save_merge(
    pool: Pool, path: str | os.PathLike, config: MergeConfig | None = None, **changes: Any
) -> Path:
    """Merge and write a safetensors file with the anchor's spec and the merge's provenance.

    The write is atomic and refuses to overwrite any input checkpoint.
    """
    plan = make_plan(pool, config, **changes)
    inputs = [ck.path for ck in pool.checkpoints if ck.path is not None]
    extra = [p for p in (pool.base_path, *pool.fisher_paths) if p is not None]
    anchor = pool.checkpoints[plan.anchor]
    return save_checkpoint(
        path, plan.run(), anchor.spec, plan.provenance(), protect=tuple(inputs + extra)
    )


def merge_command(plan: MergePlan, output: str | os.PathLike) -> str:
    """The ``lwmm merge`` command that reproduces ``plan`` into ``output``."""
    c, pool = plan.config, plan.pool
    words = ["lwmm", "merge", *(str(ck.path) for ck in pool.checkpoints)]
    words += ["--anchor", str(plan.anchor), "--method", c.method, "--schedule", plan.schedule]
    if c.start is not None:
        words += ["--start", str(c.start), "--alpha", repr(c.alpha)]
    if c.weights is not None:
        words += ["--weights", *map(repr, c.weights)]
    words += ["--bn", c.bn, "--granularity", c.granularity]
    if pool.alignment is not None:
        words.append("--align")
    if "base" in METHODS[c.method].needs:
        words += ["--base", str(pool.base_path), "--scale", repr(c.scale)]
    if c.method == "ties":
        words += ["--density", repr(c.density)]
    if "fisher" in METHODS[c.method].needs:
        words += ["--fisher", *map(str, pool.fisher_paths)]
    return shlex.join([*words, "-o", str(output)])


#: The most columns a non-linear method sees at once, by device (a larger tensor is a block of
#: its own). On a GPU a block is big, so a merge is a few launches: the zoo's model (1.4M
#: values) is one block, an smp Unet/resnet18 (14.3M) four, and the temporaries stay a few
#: ``(M, 4M)`` arrays. On a CPU, blocks of 64K columns keep the temporaries in cache: measured
#: on the Unet/resnet18 at M = 5, Fisher takes 197 ms with them and 393 ms with 2M columns.
BLOCK_COLUMNS = {"cuda": 1 << 22, "cpu": 1 << 16}

#: Devices where a weighted sum of two groups or more (layer-wise, or any schedule whose
#: models do not all weigh the same) runs over whole rows of the stack: each column's weight
#: gathered from the plan's (Np,) weights by the column's depth row, one ``lerp`` per further
#: group, one multi-tensor copy into the model, a handful of kernels whatever the number of
#: tensors (launches, not bandwidth, bound a GPU re-merge). On a CPU the per-tensor
#: multi-tensor operations are faster: the gathered weight row costs a pass over memory there.
FLAT_SUM = {"cuda": True, "cpu": False}


@dataclass(frozen=True)
class Block:
    """Consecutive tensors of the pool's stack, merged by one call of a non-linear method.

    ``columns``: their columns in the stack; ``names`` and ``sizes`` the tensors in order;
    ``rows`` (on the pool's device) each tensor's depth row j - 1 and ``repeats`` its size, to
    spread the schedule over the columns; ``written``: which of them the method's result is
    kept for (the BatchNorm statistics are merged by the BN rule instead).
    """

    columns: slice
    names: tuple[str, ...]
    sizes: tuple[int, ...]
    rows: Tensor
    repeats: Tensor
    written: tuple[int, ...]


@dataclass(frozen=True)
class Routes:
    """Where a merge's values come from and go to, for one layout; worked out once.

    ``weights``: the shared tensors a method merges (not BN statistics), with their depth row
    (j - 1), columns and shapes. ``copied``: anchor-only and integer entries, grouped by
    dtype (see :func:`_by_dtype`). The BN layers
    (``bn_modules``, each with the depth row of its first statistic and the models' counts,
    zeros where a model lacks one; ``counted`` names the layers whose counts are all known):
    ``stats`` are their shared statistics, the ``n_means`` columns of the means before those of
    the variances, ``stat_index`` their pool columns concatenated, ``stat_module`` each
    column's layer, and ``var_mean`` each variance column's mean column among them (-1 where
    the layer's mean is not shared). ``blocks`` cut the whole stack for the non-linear methods.
    """

    weights: tuple[str, ...]
    weight_rows: Tensor
    weight_cols: tuple[slice, ...]
    shapes: tuple[torch.Size, ...]
    copied: tuple[tuple[str, ...], ...]
    bn_modules: tuple[str, ...]
    bn_rows: Tensor
    counts: Tensor
    counted: tuple[str, ...]
    stats: tuple[str, ...]
    n_means: int
    stat_index: Tensor
    stat_module: Tensor
    var_mean: Tensor
    blocks: tuple[Block, ...]
    _parts: dict[int, tuple[Tensor, list[Tensor]]] = field(default_factory=dict, compare=False)
    _kept: dict[str, Any] = field(default_factory=dict, compare=False)

    def kept(self, key: str, make: Callable[[], Any]) -> Any:
        """``make()`` the first time ``key`` is asked for, then the same object: the buffers
        and index rows a merge reuses (made only on the paths that need them)."""
        if key not in self._kept:
            self._kept[key] = make()
        return self._kept[key]

    def parts(self, rows: list[Tensor]) -> list[list[Tensor]]:
        """Each row (P,) cut into the merged tensors' shapes, as views. The views of the rows of
        the latest call are kept for the next (making 2 x 250 views costs more than merging a
        small model), and only those: the cache never holds a row the pool has let go."""
        held = {}
        for row in rows:
            cached = self._parts.get(id(row))
            if cached is None or cached[0] is not row:
                pairs = zip(self.weight_cols, self.shapes, strict=True)
                cached = (row, [row_view(row[c], s) for c, s in pairs])
            held[id(row)] = cached
        self._parts.clear()
        self._parts.update(held)
        return [held[id(row)][1] for row in rows]


def routes(pool: Pool, layout: Layout) -> Routes:
    """The :class:`Routes` of ``layout`` in ``pool`` (built on first use, then kept)."""
    key = (layout.anchor, layout.granularity)
    if key not in pool.derived:
        pool.derived[key] = _make_routes(pool, layout)
    return pool.derived[key]


def _make_routes(pool: Pool, layout: Layout) -> Routes:
    weights, rows, copied, layers, bn_rows = [], [], [], {}, []
    means, variances = [], []
    for e in layout.entries:
        if e.kind != "shared":
            copied.append(e.name)
        elif is_bn_stat(e.name):
            if module_of(e.name) not in layers:
                layers[module_of(e.name)] = len(layers)
                bn_rows.append(e.j - 1)
            (means if e.name.endswith(".running_mean") else variances).append(e.name)
        else:
            weights.append(e.name)
            rows.append(e.j - 1)
    counts, counted = [], []
    for layer in layers:
        n = _counts(pool, f"{layer}.num_batches_tracked")
        counts.append(torch.zeros(pool.n_models, dtype=torch.int64) if n is None else n)
        if n is not None:
            counted.append(f"{layer}.num_batches_tracked")

    def size(name: str) -> int:
        return pool.columns[name].stop - pool.columns[name].start

    def index(parts: list[Tensor]) -> Tensor:
        return torch.cat([torch.zeros(0, dtype=torch.int64), *parts]).to(pool.device)

    def layer_of(names: list[str]) -> Tensor:
        return index([torch.full((size(n),), layers[module_of(n)]) for n in names])

    starts = itertools.accumulate(map(size, means), initial=0)  # one more than there are means
    offsets = dict(zip(map(module_of, means), starts, strict=False))
    var_mean = [
        torch.arange(size(n)) + offsets[module_of(n)]
        if module_of(n) in offsets
        else torch.full((size(n),), -1)
        for n in variances
    ]
    anchor = pool.checkpoints[layout.anchor].tensors
    return Routes(
        weights=tuple(weights),
        weight_rows=torch.tensor(rows, dtype=torch.int64),
        weight_cols=tuple(pool.columns[n] for n in weights),
        shapes=tuple(anchor[n].shape for n in weights),
        copied=_by_dtype(tuple(copied), anchor),
        bn_modules=tuple(layers),
        bn_rows=torch.tensor(bn_rows, dtype=torch.int64),
        counts=torch.stack(counts) if counts else torch.zeros(0, pool.n_models, dtype=torch.int64),
        counted=tuple(counted),
        stats=(*means, *variances),
        n_means=sum(map(size, means)),
        stat_index=index(
            [torch.arange(pool.columns[n].start, pool.columns[n].stop) for n in means + variances]
        ),
        stat_module=layer_of(means + variances),
        var_mean=index(var_mean),
        blocks=_blocks(pool, {e.name: e.j - 1 for e in layout.entries if e.kind == "shared"}),
    )


def _blocks(pool: Pool, rows: Mapping[str, int]) -> tuple[Block, ...]:
    """The pool's columns cut at tensor boundaries into blocks of at most the device's
    :data:`BLOCK_COLUMNS`."""
    limit = BLOCK_COLUMNS.get(pool.device.type, BLOCK_COLUMNS["cpu"])
    runs: list[list[str]] = [[]]
    width = 0
    for name, cols in pool.columns.items():
        size = cols.stop - cols.start
        if runs[-1] and width + size > limit:
            runs.append([])
            width = 0
        runs[-1].append(name)
        width += size
    blocks = []
    for names in runs:
        sizes = tuple(pool.columns[n].stop - pool.columns[n].start for n in names)
        blocks.append(
            Block(
                columns=slice(pool.columns[names[0]].start, pool.columns[names[-1]].stop),
                names=tuple(names),
                sizes=sizes,
                rows=torch.tensor([rows[n] for n in names], device=pool.device),
                repeats=torch.tensor(sizes, device=pool.device),
                written=tuple(k for k, n in enumerate(names) if not is_bn_stat(n)),
            )
        )
    return tuple(blocks)


def _copy_all(targets: list[Tensor], sources: list[Tensor]) -> None:
    """``target.copy_(source)`` for every pair, as one multi-tensor copy (one kernel per few
    hundred tensors on a GPU when the tensors share a dtype: see :func:`_by_dtype`)."""
    if targets:
        torch._foreach_copy_(targets, sources)


def _by_dtype(names: tuple[str, ...], tensors: Mapping[str, Tensor]) -> tuple[tuple[str, ...], ...]:
    """``names`` grouped by their tensors' dtype: a multi-tensor copy over tensors of one dtype
    takes CUDA's fused path; a list that mixes dtypes (the anchor's float-only tensors beside
    the integer BN counts) falls back to one copy per tensor."""
    groups: dict[torch.dtype, list[str]] = {}
    for name in names:
        groups.setdefault(tensors[name].dtype, []).append(name)
    return tuple(tuple(group) for group in groups.values())


def _summed_counts(pool: Pool, names: tuple[str, ...]) -> list[Tensor]:
    """Each BN layer's ``num_batches_tracked`` summed over the models (the same for any plan)."""
    return [sum(ck.tensors[name] for ck in pool.checkpoints) for name in names]


def _row_with_parts(pool: Pool, r: Routes) -> tuple[Tensor, list[Tensor]]:
    """A ``(P,)`` work row on the pool's device and its views shaped as the merged tensors."""
    row = torch.empty(pool.flat.shape[1], dtype=pool.flat.dtype, device=pool.device)
    return row, [row_view(row[c], s) for c, s in zip(r.weight_cols, r.shapes, strict=True)]


def _buffer_with_parts(pool: Pool, names: tuple[str, ...]) -> tuple[Tensor, list[Tensor]]:
    """A buffer for the values of ``names`` (1-D statistics) end to end, and its pieces."""
    sizes = [pool.columns[n].stop - pool.columns[n].start for n in names]
    buffer = torch.empty(sum(sizes), dtype=pool.flat.dtype, device=pool.device)
    return buffer, list(buffer.split(sizes))


def _column_rows(pool: Pool, layout: Layout) -> Tensor:
    """Each column of the stack's depth row j - 1 (int32, on the pool's device)."""
    rows = {e.name: e.j - 1 for e in layout.entries if e.kind == "shared"}
    sizes = torch.tensor([c.stop - c.start for c in pool.columns.values()])
    per_tensor = torch.tensor([rows[n] for n in pool.columns], dtype=torch.int32)
    return per_tensor.repeat_interleave(sizes).to(pool.device)


def _paired_means(r: Routes, stats: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Which variance columns have a shared mean, where it lies in ``stats`` (the models' BN
    statistics, gathered, means first), and the models' means there (M, variance columns)."""
    at = r.var_mean.clamp_min(0)
    return r.var_mean >= 0, at, stats[:, at]


def _equal_weight_groups(weights: np.ndarray) -> list[tuple[int, ...]]:
    """Models whose weight is the same at every depth, grouped (a weighted sum may add them
    first): for layer-wise, the anchor alone and all the others; for isotropic, everyone.
    Groups come in the order of their first model."""
    groups: dict[bytes, tuple[int, ...]] = {}
    for i, column in enumerate(np.ascontiguousarray(weights.T)):
        groups[column.tobytes()] = (*groups.get(column.tobytes(), ()), i)
    return list(groups.values())


def _counts(pool: Pool, name: str) -> Tensor | None:
    """Each model's ``num_batches_tracked`` for one BN layer, or None when some lack it."""
    values = [ck.tensors.get(name) for ck in pool.checkpoints]
    if any(v is None or v.is_floating_point() or v.numel() != 1 for v in values):
        return None
    return torch.stack([v.reshape(()) for v in values]).to("cpu", torch.int64)


def _resolve_start(start: int | None, start_frac: float | None, n_depth: int) -> int:
    if start is not None and start_frac is not None:
        raise LwmmError("give start or start_frac, not both")
    if start_frac is not None:
        if not 0.0 <= start_frac <= 1.0:
            raise LwmmError(f"start_frac={start_frac} is outside [0, 1]")
        return 1 + round(start_frac * (n_depth - 1))
    return 1 if start is None else check_whole("start", start)


def _lookup(registry: Mapping[str, Any], name: str, what: str) -> Any:
    if name not in registry:
        raise LwmmError(f"{what} '{name}' is not one of {', '.join(registry)}")
    return registry[name]


def _file_record(path: Path | None, label: str | None = None) -> dict[str, Any]:
    record: dict[str, Any] = {"path": None if path is None else str(path), "sha256": None}
    if label is not None:
        record["label"] = label
    if path is not None:
        file = path / "model.safetensors" if path.is_dir() else path
        if file.is_file():
            record["sha256"] = sha256(file)
    return record
