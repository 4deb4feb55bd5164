"""The merge engine: a config and a pool give a plan; running the plan gives merged weights.

A :class:`MergePlan` is the dry run: every entry of the anchor with its kind, depth j, the
weight each model gets and where its value comes from. :meth:`MergePlan.run` executes it,
straight into an existing model's tensors (the fast path for widgets) or into a new state dict.

The run has no per-tensor Python loop for the weighted-sum methods: models with equal weights
at every depth are averaged once (and kept), and the merge is a chain of multi-tensor
operations over every shared tensor at once, ``_foreach_copy_`` of the first group's mean and
one ``_foreach_lerp_`` per further group, with a per-tensor weight each, written in place into
the targets; on a GPU (:data:`FLAT_SUM`) the lerps run over whole rows of the stack instead,
each column's weight looked up by its depth row (one fused kernel per lerp,
:mod:`lwmm_lab.engine.fused`). A target laid out like the stack
(:mod:`lwmm_lab.engine.target`: what :func:`~lwmm_lab.engine.model.merge_target` builds)
takes those rows as they are, its BN statistics one indexed copy and its other entries one
copy per dtype; any other target gets multi-tensor copies. All BatchNorm layers are merged
together, as one weighted sum over their statistics gathered from the stack once. Task
arithmetic is the same weighted sum moved towards the base. Fisher and TIES run over blocks of
consecutive columns of the stack, each column weighted by its tensor's depth row: one call per
block, not per tensor. The index structures all this needs (:mod:`lwmm_lab.engine.routes`)
are worked out once per layout. On a GPU a weighted sum into a laid-out target, run a second
time with the same kernels, is replayed from a CUDA graph (:mod:`lwmm_lab.engine.graphs`):
what a slider changes is a few hundred numbers copied into the graph's inputs.
"""

from __future__ import annotations

import html
import json
import os
import shlex
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lwmm_lab._version import __version__
from lwmm_lab.engine.checkpoints import file_record, save_checkpoint
from lwmm_lab.engine.fused import fused_enabled, lerp_by_row
from lwmm_lab.engine.graphs import GraphedRuns, graphs_enabled
from lwmm_lab.engine.methods import BN_RULES, METHODS, SCHEDULES, BlockContext, Method
from lwmm_lab.engine.pool import (
    Layout,
    Pool,
    as_row,
    check_pool,
    first_names,
    is_bn_stat,
    left_out_note,
    module_of,
    row_view,
    unknown_order_note,
    unshared_note,
)
from lwmm_lab.engine.routes import Routes, routes
from lwmm_lab.engine.target import JoinedViews, joined_views
from lwmm_lab.errors import LwmmError, check_finite, check_name, check_whole, unknown_name


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
        """This config with ``changes``; a name that is not a setting is refused, with the
        setting it most resembles (``alpah`` -> ``alpha``)."""
        if not changes.keys() <= _SETTINGS:  # a set test: a plan is made on every slider move
            name = next(n for n in changes if n not in _SETTINGS)
            names = [f.name for f in fields(self)]
            raise unknown_name(name, names, "a merge setting", "settings")
        return replace(self, **changes)


_SETTINGS = frozenset(f.name for f in fields(MergeConfig))


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
        if self.pool.n_models == 1:
            notes.append("one model: the merge is a copy of it")
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
        own, lacking = self.pool.unshared(self.anchor)
        if own:
            notes.append(unshared_note(own, lacking, "the anchor's", "copied from it, not merged"))
        if left_out := self.pool.left_out(self.anchor):
            notes.append(left_out_note(left_out, "the anchor", "left out of the merge"))
        if BN_RULES[self.config.bn].by_counts and (uncounted := self._uncounted()):
            notes.append(uncounted)
        if not self.layout.order_known:
            notes.append(unknown_order_note("the anchor"))
        return notes

    def _uncounted(self) -> str:
        """A note on the BN layers a rule by counts weights uniformly (their counts unknown
        or all 0), naming the models that lack counts; empty when there are none."""
        r = self.routes
        unknown = (r.counts.sum(1) == 0).tolist()
        layers = [m for m, u in zip(r.bn_modules, unknown, strict=True) if u]
        if not layers:
            return ""
        lacking = self.pool.lacking([f"{m}.num_batches_tracked" for m in layers])
        verb = "lack" if len(lacking) > 1 else "lacks"
        why = f"{', '.join(lacking)} {verb} them" if lacking else "they are all 0"
        return (
            f"{len(layers)} of the {len(r.bn_modules)} BN layers have no num_batches_tracked to "
            f"weight by ({why}), so {self.config.bn} weights them uniformly: "
            f"{first_names(layers)}"
        )

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
        """What to record in the merged file: inputs with sha256, method, schedule, BN rule,
        and the resolution the anchor records (what ``lwmm eval`` and the lab read it at)."""
        pool, c = self.pool, self.config
        record = {
            "lwmm_lab": __version__,
            "method": c.method,
            "schedule": self.schedule,
            "anchor": {"index": self.anchor, "label": pool.labels[self.anchor]},
            "inputs": [
                file_record(ck.path, label, ck.submodel)
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
            record.update(base=file_record(pool.base_path), scale=c.scale)
            if c.method == "ties":
                record["density"] = c.density
        if "fisher" in METHODS[c.method].needs:
            record["fisher"] = [file_record(p) for p in pool.fisher_paths]
        if pool.alignment is not None:
            record["alignment"] = pool.alignment.record(pool.labels)
        resolution = pool.checkpoints[self.anchor].recorded_resolution
        if resolution is not None:  # the merge runs the anchor's model, at its size
            record["resolution"] = list(resolution)
        return record

    def run(self, into: nn.Module | MutableMapping[str, Tensor] | None = None) -> dict[str, Tensor]:
        """Execute the plan; write into ``into`` (a model or state dict) when given.

        Returns the merged state dict: the target's own tensors when ``into`` is given, else
        new tensors in the anchor's dtypes as stored (a float16 anchor gives float16 values,
        merged in the stack's float32).
        """
        targets, joined = self._targets(into)
        method = METHODS[self.config.method]
        terms = self._sum_terms(joined.shared) if method.linear else None
        # The plan's small tables go to the device first: later, each would wait for the
        # queued kernels.
        tables = [self.bn_table]
        if terms is not None and terms.table is not None:
            tables.append(terms.table)

        def execute(on_device: list[Tensor]) -> None:
            if method.linear:
                table = on_device[1] if len(on_device) > 1 else None
                self._weighted_sum(targets, joined.shared, method.rebased, terms, table)
            else:
                self._combine_blocks(method, targets, joined.shared)
            self._merge_bn(targets, on_device[0], joined.shared)
            self._copy_rest(targets, joined.copied)

        with torch.no_grad():
            graphed = self._graphed(joined, terms)
            if graphed is not None:
                key, written = graphed
                runs = self.routes.kept(
                    "graphed runs", lambda: GraphedRuns(self.pool.device, self.pool.flat.dtype)
                )
                if runs.replay(key, tables, execute, written):
                    return dict(targets)
            execute([t.to(self.pool.device, self.pool.flat.dtype) for t in tables])
        return dict(targets)

    def _graphed(
        self, joined: JoinedViews, terms: SumTerms | None
    ) -> tuple[tuple[Any, ...], list[Tensor]] | None:
        """Where this run may be replayed from a CUDA graph (:class:`GraphedRuns`): the key of
        its kernels and the tensors it writes; None where it runs eagerly. That is a GPU's
        weighted sum over whole rows (a slider's re-merge) into a laid-out target: every
        kernel's addresses are then fixed by the key, and what varies is the plan's tables."""
        pool, c = self.pool, self.config
        written = [joined.shared, *joined.copied]
        if (
            pool.device.type != "cuda"
            or not graphs_enabled()
            or any(view is None for view in written)
            or not METHODS[c.method].linear
            or (terms is not None and not terms.whole_rows)
        ):
            return None
        fused = fused_enabled(pool.device)
        kernels: tuple[Any, ...] = (c.method, c.scale, c.bn, bool(self.summed_counts), fused)
        if terms is not None:
            kernels += (terms.rescale, tuple(m.data_ptr() for m in terms.means))
        return (*kernels, *(view.data_ptr() for view in written)), written

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

    def _sum_terms(self, joined: Tensor | None) -> SumTerms | None:
        """The host's share of a weighted sum (see :meth:`_weighted_sum`): the groups of models
        with equal weights at every depth and their mean rows, each group's step and each
        depth's total; None where no tensor is merged. ``joined``: the target's (P,) view.

        The (Np, groups) arithmetic is a few dozen numbers: numpy, not a kernel per step.
        """
        pool = self.pool
        if not self.routes.weights:
            return None
        weights = self.weights.numpy()
        groups = _equal_weight_groups(weights)
        share = np.stack([weights[:, g].sum(1) for g in groups], 1)
        reached = share.cumsum(1)
        step = np.where(reached > 0, share / np.maximum(reached, 1e-300), 1.0)
        total = reached[:, -1]
        rescale = bool(np.abs(total - 1.0).max() > 1e-12)  # rows that do not sum to 1
        means, slot = [], 0
        for group in groups:  # each group of several models in a buffer of its own
            means.append(pool.model_mean(group, slot))
            slot += len(group) > 1
        # Whole rows where launches cost more than the weights' gather (a GPU), or where the
        # target is one laid-out row and a single group needs no weights at all.
        whole_rows = (
            FLAT_SUM.get(pool.device.type, False) if len(groups) > 1 else joined is not None
        )
        table = None
        if whole_rows and (len(groups) > 1 or rescale):
            table = torch.from_numpy(np.concatenate([step[:, 1:], total[:, None]], 1))
        return SumTerms(means, step, total, rescale, whole_rows, table)

    def _weighted_sum(
        self,
        targets: Mapping[str, Tensor],
        joined: Tensor | None,
        rebase: bool,
        terms: SumTerms | None,
        table: Tensor | None,
    ) -> None:
        """Every shared tensor's weighted sum over the models, in place into ``targets`` (or,
        on the whole-row path, into ``joined``, the (P,) view of a laid-out target); with
        ``rebase``, moved towards the base: ``scale * sum + (1 - scale) * base``.

        Models with equal weights at every depth form a group, whose mean row is computed once
        (and kept by the pool); with a_g the group's share at a depth, the merge is the running
        weighted mean: the first group's mean, then ``lerp(out, mean_g, a_g / (a_1 + ... +
        a_g))`` for each further group. Each lerp reads one row, so a layer-wise re-merge reads
        two rows (the anchor and the others' mean) whatever M is. Where :data:`FLAT_SUM` says
        so, the lerps run over whole rows with each column's weight looked up by its depth row
        in ``table`` (``terms.table`` on the device: on a GPU one fused kernel per lerp,
        :func:`~lwmm_lab.engine.fused.lerp_by_row`); else per tensor, as multi-tensor
        operations.
        """
        if terms is None:
            return
        pool, r, means = self.pool, self.routes, terms.means
        if terms.whole_rows:
            if joined is None:
                work, parts = r.kept("sum", lambda: _row_with_parts(pool, r))
            else:
                work, parts = joined, None

            # Each column's depth row, only where a weight is looked up (not for one group)
            rows = (
                None
                if table is None
                else r.kept("column rows", lambda: _column_rows(pool, self.layout))
            )
            if len(means) == 1:
                work.copy_(means[0])
            else:
                lerp_by_row(means[0], means[1], table[:, 0], rows, out=work)
            for g in range(2, len(means)):
                lerp_by_row(work, means[g], table[:, g - 1], rows, out=work)
            if terms.rescale:
                work.mul_(table[:, -1].index_select(0, rows))
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
        steps = terms.step[at].T.tolist()
        for k, parts in enumerate(r.parts(means)):
            if k == 0:
                _copy_all(work, parts)
            else:
                torch._foreach_lerp_(work, parts, steps[k])
        if terms.rescale:  # a schedule whose rows do not sum to 1
            torch._foreach_mul_(work, terms.total[at].tolist())
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
        the target's tensors joined into flat views where
        :func:`~lwmm_lab.engine.target.lay_out` placed them so."""
        r = self.routes
        anchor_tensors = self.pool.checkpoints[self.anchor].tensors
        if into is None:
            device, stored = self.pool.device, self.pool.stored_dtypes[self.anchor]
            targets = {
                e.name: torch.empty(
                    e.shape, dtype=stored.get(e.name, anchor_tensors[e.name].dtype), device=device
                )
                for e in self.layout.entries
            }
            return targets, JoinedViews(None, (None,) * len(r.copied))
        if not isinstance(into, nn.Module | Mapping):
            raise LwmmError(f"into: a {type(into).__name__} is not a model or a state dict")
        targets = into.state_dict() if isinstance(into, nn.Module) else into
        return targets, joined_views(targets, self.pool, self.layout)


def make_plan(pool: Pool, config: MergeConfig | None = None, **changes: Any) -> MergePlan:
    """Resolve ``config`` (with ``changes`` applied) against ``pool`` into a :class:`MergePlan`.

    Every bad value raises :class:`LwmmError` naming it: an unknown method, BN rule, schedule
    or granularity; an anchor not among the inputs; alpha outside [0, 1]; a start outside
    1..Np or not whole; weights of the wrong length; a density outside (0, 1] or a scale that
    is not a finite number; a method's missing base or Fisher.
    """
    check_pool(pool)
    if config is not None and not isinstance(config, MergeConfig):
        raise LwmmError(
            f"config: a {type(config).__name__} is not a MergeConfig (give the settings as "
            "keywords, make_plan(pool, alpha=0.3), or MergeConfig(**settings))"
        )
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
    summed = frozenset(r.counted) if rule.by_counts else frozenset()
    resolved = c.replace(
        anchor=anchor,
        start=start if schedule == "layerwise" else None,
        start_frac=None,
        alpha=alpha,
        weights=tuple(float(w) for w in c.weights) if schedule == "weights" else None,
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
    return write_merge(plan, plan.run(), path)


def write_merge(
    plan: MergePlan, tensors: Mapping[str, Tensor], path: str | os.PathLike, **provenance: Any
) -> Path:
    """Write ``tensors``, the plan's merge (as run, or changed after: its BN statistics
    re-estimated, say), with the anchor's spec and the plan's provenance plus ``provenance``
    (what changed it). Atomic, and never over a file the pool read."""
    pool = plan.pool
    inputs = [ck.path for ck in pool.checkpoints if ck.path is not None]
    extra = [p for p in (pool.base_path, *pool.fisher_paths) if p is not None]
    anchor = pool.checkpoints[plan.anchor]
    record = plan.provenance() | provenance
    return save_checkpoint(path, tensors, anchor.spec, record, protect=tuple(inputs + extra))


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
    # The sub-model each input was read as (a Checkpoint may have been loaded as one before
    # the pool was built); the command line takes one choice for every file.
    submodels = {ck.submodel for ck in pool.checkpoints} - {None, "model"}
    if len(submodels) > 1:
        raise LwmmError(
            f"the inputs were read as different sub-models ({', '.join(sorted(submodels))}): "
            "one lwmm merge command cannot say so"
        )
    if submodels:
        words += ["--submodel", submodels.pop()]
    if "base" in METHODS[c.method].needs:
        words += ["--base", str(pool.base_path), "--scale", repr(c.scale)]
    if c.method == "ties":
        words += ["--density", repr(c.density)]
    if "fisher" in METHODS[c.method].needs:
        words += ["--fisher", *map(str, pool.fisher_paths)]
    return shlex.join([*words, "-o", str(output)])


@dataclass(frozen=True)
class SumTerms:
    """A weighted sum as worked out on the host (:meth:`MergePlan._sum_terms`): the groups'
    mean rows, each group's step (Np, groups) and each depth's total (Np,), whether rows are
    rescaled (a schedule whose rows do not sum to 1), whether the sum runs over whole rows,
    and there the (Np, groups) table its kernels gather from (the steps after the first, then
    the total; None where no weight is needed)."""

    means: list[Tensor]
    step: np.ndarray
    total: np.ndarray
    rescale: bool
    whole_rows: bool
    table: Tensor | None


#: Devices where a weighted sum of two groups or more (layer-wise, or any schedule whose
#: models do not all weigh the same) runs over whole rows of the stack: one ``lerp`` per
#: further group, each column's weight the plan's at the column's depth row
#: (:func:`~lwmm_lab.engine.fused.lerp_by_row`), one multi-tensor copy into the model, a
#: handful of kernels whatever the number of tensors (launches, not bandwidth, bound a GPU
#: re-merge). On a CPU the per-tensor multi-tensor operations are faster: a gathered weight
#: row costs a pass over memory there.
FLAT_SUM = {"cuda": True, "cpu": False}


def _copy_all(targets: list[Tensor], sources: list[Tensor]) -> None:
    """``target.copy_(source)`` for every pair, as one multi-tensor copy (one kernel per few
    hundred tensors on a GPU when the tensors share a dtype: see :func:`_by_dtype`)."""
    if targets:
        torch._foreach_copy_(targets, sources)


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
    for i, key in enumerate(map(bytes, np.ascontiguousarray(weights.T))):
        groups[key] = (*groups.get(key, ()), i)
    return list(groups.values())


def _resolve_start(start: int | None, start_frac: float | None, n_depth: int) -> int:
    if start is not None and start_frac is not None:
        raise LwmmError("give start or start_frac, not both")
    if start_frac is not None:
        if not 0.0 <= check_finite("start_frac", start_frac) <= 1.0:
            raise LwmmError(f"start_frac={start_frac} is outside [0, 1]")
        return 1 + round(float(start_frac) * (n_depth - 1))
    try:
        return 1 if start is None else check_whole("start", start)
    except LwmmError as e:
        raise LwmmError(f"{e} (a depth index 1..Np; give start_frac for a fraction)") from None


def _lookup(registry: Mapping[str, Any], name: str, what: str) -> Any:
    return registry[check_name(name, registry, what)]
