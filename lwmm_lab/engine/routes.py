"""Where a merge's values come from and go to, for one layout of a pool: worked out once.

:class:`Routes` holds the index structures a run needs (the shared tensors with their depth
rows and columns, the BatchNorm statistics gathered by layer, the entries copied per dtype, the
blocks the non-linear methods run over); :func:`routes` builds them on first use and keeps them
in the pool.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from lwmm_lab.engine.pool import Layout, Pool, is_bn_stat, module_of, row_view

#: The most columns a non-linear method sees at once, by device (a larger tensor is a block of
#: its own). On a GPU a block is big, so a merge is a few launches: the zoo's model (1.4M
#: values) is one block, an smp Unet/resnet18 (14.3M) four, and the temporaries stay a few
#: ``(M, 4M)`` arrays. On a CPU, blocks of 64K columns keep the temporaries in cache: measured
#: on the Unet/resnet18 at M = 5, Fisher takes 197 ms with them and 393 ms with 2M columns.
BLOCK_COLUMNS = {"cuda": 1 << 22, "cpu": 1 << 16}


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
    ``stats`` are their shared statistics, the means first (``n_means`` columns), then the
    variances; ``stat_index`` their pool columns concatenated, ``stat_module`` each column's
    layer, and ``var_mean`` each variance column's mean column among them (-1 where the
    layer's mean is not shared). ``blocks`` cut the whole stack for the non-linear methods.
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

    def kept(self, key: str, make: Callable[[], Any] | None = None) -> Any:
        """``make()`` the first time ``key`` is asked for, then the same object: the buffers
        and index rows a merge reuses (made only on the paths that need them). Without
        ``make``, what is kept under ``key`` or None."""
        if make is None:
            return self._kept.get(key)
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


def _by_dtype(names: tuple[str, ...], tensors: Mapping[str, Tensor]) -> tuple[tuple[str, ...], ...]:
    """``names`` grouped by their tensors' dtype: a multi-tensor copy over tensors of one dtype
    takes CUDA's fused path; a list that mixes dtypes (the anchor's float-only tensors beside
    the integer BN counts) falls back to one copy per tensor."""
    groups: dict[torch.dtype, list[str]] = {}
    for name in names:
        groups.setdefault(tensors[name].dtype, []).append(name)
    return tuple(tuple(group) for group in groups.values())


def _counts(pool: Pool, name: str) -> Tensor | None:
    """Each model's ``num_batches_tracked`` for one BN layer, or None when some lack it."""
    values = [ck.tensors.get(name) for ck in pool.checkpoints]
    if any(v is None or v.is_floating_point() or v.numel() != 1 for v in values):
        return None
    return torch.stack([v.reshape(()) for v in values]).to("cpu", torch.int64)
